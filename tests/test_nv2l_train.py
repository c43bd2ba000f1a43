"""The language stage's command-line entry (``python -m neurorecon.nv2l.train``), in one process and in two
gloo processes (what ``accelerate launch`` starts on GPUs): LoRA stage 2, the main process writes the stage."""

import json
import os
import subprocess
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from neurorecon.nv2l import report as R
from neurorecon.nv2l.llava import BrainLlava
from neurorecon.nv2l.train import main

pytest.importorskip("peft")
QUICK = ["--profile", "smoke", "--foundation", "tiny", "--no-progress", "--set", "enc_steps=3", "--set",
         "stage1_steps=2", "--set", "stage2_steps=2", "--set", "eval_subjects=[1]", "--set", "lora_r=4", "--set",
         "gradient_checkpointing=true", "--set", "concept_random_draws=1"]


@pytest.fixture(scope="module")
def home(new_smoke_home):
    return new_smoke_home("language_home")


def _check(folder):
    assert (folder / "COMPLETE").is_file()
    assert (folder / "brain_llava" / "lm_adapter" / "adapter_model.safetensors").is_file()
    metrics = (folder / "metrics.csv").read_text()
    assert "stage2_trainable_params" in metrics and "qa_count" in metrics
    cfg = json.loads((folder / "brain_llava" / "config.json").read_text())
    assert cfg["lm"] == "lora"
    assert json.loads((folder / "export.json").read_text())["image_folder"] == "images"
    # concept localisation: the ensemble's extra ViT3D (smoke: 3^3 cubes), extraction counted, maps kept
    assert (folder / "vit3d_p3" / "config.json").is_file() and (folder / "concept_maps.npz").is_file()
    assert "concept_extraction" in metrics and "n_unextracted" in metrics
    cases = pd.read_csv(folder / "concept_ablation.csv")
    assert {"instruction", "answer", "extracted", "drop_located", "drop_random"} <= set(cases.columns)
    assert R.extraction_table(cases).loc["all", "cases"] == len(cases)
    assert R.ablation_table(cases).loc["all", "cases"] == cases.drop_located.notna().sum()
    assert len(R.concept_encoders(folder)) == 2


def test_entry_runs_the_stage_in_one_process(home, home_set_to, capsys):
    with home_set_to(home):
        assert main(QUICK + ["--force"]) == 0
    out = capsys.readouterr().out
    folder = Path(out.strip().splitlines()[-1].split(": ", 1)[1])
    _check(folder)
    with pytest.raises(Exception, match="base LM folder"):  # the tiny LM has no folder to reload it from
        BrainLlava.from_pretrained(folder / "brain_llava")
    # notebook 06's loader releases the foundation's LM before the saved LLaVA brings its own (one copy, not two)
    fm = SimpleNamespace(lm=torch.nn.Linear(2, 2), device="cpu", extras={})
    held = weakref.ref(fm.lm)
    with pytest.raises(Exception, match="base LM folder"):
        R.trained_llava(folder, fm)
    assert fm.lm is None and held() is None


@pytest.mark.slow
def test_entry_under_two_processes(home, tmp_path):
    env = dict(os.environ, NEURORECON_HOME=str(home), PYTHONPATH=str(Path(__file__).parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "neurorecon.nv2l.train", *QUICK, "--force", "--set", "ckpt_every=1"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("stage language (smoke)") == 1  # only the main process writes and reports
    _check(home / "artifacts" / "smoke" / "language")
    assert not list((home / "artifacts" / "smoke").glob(".language.rank*"))  # the other rank's scratch is gone
