"""NeuroPictor training through its command-line entry on the smoke profile (real model, tiny foundation):
a killed-and-resumed run ends with the weights of an uninterrupted one; two CPU processes end identical."""

import os
import subprocess
import sys

import pytest
import torch

from neurorecon.neuropictor.train import main, parse_overrides

QUICK = ["--set", "steps=6", "--set", "batch_size=4", "--set", "n_eval=2", "--set", "num_inference_steps=1",
         "--set", "eval_batch=2", "--set", "eval_subjects=[1]"]


@pytest.fixture(scope="module")
def home(smoke_data_home, home_set_to):
    with home_set_to(smoke_data_home):
        main(["--stage", "encoding", "--profile", "smoke", "--set", "steps=2", "--no-progress"])
    return smoke_data_home


def _load(folder):
    return torch.load(folder / "rank0.pt")


def test_overrides_parse_as_yaml():
    assert parse_overrides(["steps=3", "eval_subjects=[1, 2]", "lr=1e-4"]) == {
        "steps": 3, "eval_subjects": [1, 2], "lr": 1e-4}
    with pytest.raises(SystemExit):
        parse_overrides(["steps"])


def test_killed_and_resumed_pretraining_ends_with_the_same_weights(home, tmp_path, monkeypatch):
    monkeypatch.setenv("NEURORECON_HOME", str(home))
    base = ["--stage", "pretrain", "--profile", "smoke", "--foundation", "tiny", "--no-progress", "--force",
            "--set", "ckpt_every=2", *QUICK]
    main(base + ["--ckpt-dir", str(tmp_path / "a"), "--dump-weights", str(tmp_path / "full")])
    main(base + ["--ckpt-dir", str(tmp_path / "b"), "--stop-after", "3"])  # killed after step 3
    assert (tmp_path / "b/train/latest/step.json").read_text().startswith('{"step": 2')
    main(base + ["--ckpt-dir", str(tmp_path / "b"), "--dump-weights", str(tmp_path / "resumed")])
    full, resumed = _load(tmp_path / "full"), _load(tmp_path / "resumed")
    assert full.keys() == resumed.keys() and any("controlnet" in k for k in full)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    # it trained: the hint mapper's zero-initialised output conv moved
    key = next(k for k in full if k.endswith("controlnet_cond_embedding.zero_conv.weight"))
    assert torch.count_nonzero(full[key]) > 0


@pytest.mark.slow
def test_two_cpu_processes_end_identical(home, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NEURORECON_HOME": str(home)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "neurorecon.neuropictor.train", "--stage", "pretrain", "--profile", "smoke", "--foundation", "tiny",
           "--no-progress", "--force", "--ckpt-dir", str(tmp_path / "ck"), "--dump-weights", str(tmp_path / "w"),
           *QUICK, "--set", "steps=3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = torch.load(tmp_path / "w/rank0.pt"), torch.load(tmp_path / "w/rank1.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    key = next(k for k in a if k.endswith("controlnet_cond_embedding.zero_conv.weight"))
    assert torch.count_nonzero(a[key]) > 0  # it trained


def test_pretrain_mask_phase_is_saved_beside_the_model_and_scored(new_smoke_home, home_set_to):
    """The official optional pretrain_mask phase: the pretrained model continued with CFG masking, written as
    ``model_mask`` and scored as ``pretrain_mask``; the unmasked ``model`` (refinement's start) is kept."""
    import json

    from neurorecon import paths
    from neurorecon.artifacts import read_metrics

    with home_set_to(new_smoke_home("np_mask")):
        main(["--stage", "encoding", "--profile", "smoke", "--set", "steps=2", "--no-progress"])
        main(["--stage", "pretrain", "--profile", "smoke", "--foundation", "tiny", "--no-progress", *QUICK,
              "--set", "mask_steps=3", "--set", "mask_lr=1e-3"])
        folder = paths.stage_dir("pretrain", "smoke")
        losses = json.loads((folder / "losses.json").read_text())
        assert len(losses["pretrain"]) == 6 and len(losses["pretrain_mask"]) == 3
        metrics = read_metrics(folder)
    for name in ("model", "model_mask"):
        assert (folder / name / "controlnet" / "config.json").is_file()
    from neurorecon.neuropictor import FMRIConditioner

    before, after = (FMRIConditioner.from_pretrained(folder / n / "conditioner").state_dict()
                     for n in ("model", "model_mask"))
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the phase trained a copy
    methods = set(metrics.method)
    assert {"pretrain_only", "pretrain_mask", "pretrain_mask_shuffled"} <= methods
    steps = metrics[(metrics.method == "pretrain_mask") & (metrics.metric == "steps")].value
    assert steps.tolist() == [3]


def test_refinement_scores_the_official_sampling_beside_the_recipe(new_smoke_home, home_set_to):
    """``repetition_variants: [last]``: a second refinement from the same pretrained model on one trial per image
    (the official code's sampling), saved and scored as ``refined_last``; a variant equal to the recipe's own
    sampling, or unknown, is a config error."""
    from neurorecon import paths
    from neurorecon.artifacts import read_metrics
    from neurorecon.config import load_config
    from neurorecon.errors import ConfigError
    from neurorecon.neuropictor.stage import RefineConfig, run_refine_stage

    quick = [*QUICK[:-2], "--set", "mask_steps=2", "--set", "control_scales=[1.0]"]
    with home_set_to(new_smoke_home("np_variants")):
        main(["--stage", "encoding", "--profile", "smoke", "--set", "steps=2", "--no-progress"])
        main(["--stage", "pretrain", "--profile", "smoke", "--foundation", "tiny", "--no-progress", *QUICK])
        main(["--stage", "refine", "--profile", "smoke", "--foundation", "tiny", "--no-progress", *quick,
              "--set", "repetition_variants=[last]"])
        folder = paths.stage_dir("refine", "smoke")
        metrics = read_metrics(folder)
        for bad in (["average"], ["first"]):
            cfg = load_config(RefineConfig, "smoke", overrides={"repetition_variants": bad})
            with pytest.raises(ConfigError, match="repetition_variants"):
                run_refine_stage(cfg, force=True)
    assert (folder / "refined_last" / "controlnet" / "config.json").is_file()
    scored = metrics[(metrics.metric == "two_way_clip") & (metrics.split == "test")].method
    assert {"refined", "refined_mask", "refined_last", "refined_last_shuffled"} <= set(scored)
    steps = metrics[(metrics.method == "refined_last") & (metrics.metric == "steps")].value
    assert steps.tolist() == [6]
