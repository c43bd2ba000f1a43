"""The reconstruction stage (notebook 07) and the figures stage (notebook 08) on the smoke store with the ridge
baseline and a tiny random foundation (the other methods need their training stages: notebooks 04-06)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from neurorecon.artifacts import read_marker, read_metrics
from neurorecon.config import load_config
from neurorecon.errors import MissingStageError
from neurorecon.evaluation import load_reconstructions
from neurorecon.evaluation.figures import PUBLISHED, FiguresConfig, run_figures_stage
from neurorecon.evaluation.stage import (ReconstructionConfig, derangement, load_results, run_reconstruction_stage,
                                         eval_inputs)
from neurorecon.foundation import tiny_random_foundation


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    import os

    from neurorecon.data.stage import DataConfig, run_data_stage

    home = tmp_path_factory.mktemp("eval_home")
    old = os.environ.get("NEURORECON_HOME")
    os.environ["NEURORECON_HOME"] = str(home)
    try:
        run_data_stage(load_config(DataConfig, "smoke"), progress=False)
    finally:
        if old is None:
            os.environ.pop("NEURORECON_HOME", None)
        else:
            os.environ["NEURORECON_HOME"] = old
    return home


@pytest.fixture(autouse=True)
def _env(home, monkeypatch):
    monkeypatch.setenv("NEURORECON_HOME", str(home))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _store():
    from neurorecon.data import open_store
    from neurorecon.data.stage import store_path

    return open_store(store_path("smoke"))


def test_derangement_and_single_trial_inputs():
    p = derangement(7, 0)
    assert sorted(p) == list(range(7)) and not np.any(p == np.arange(7))
    sub = _store().subject(1)
    ids, x = eval_inputs(sub, "betas", "single-trial", 5)
    trial_ids = np.asarray(sub.test_trial_image_ids)
    for k, i in enumerate(ids):
        np.testing.assert_array_equal(x[k], np.asarray(sub.test_trial_betas)[np.flatnonzero(trial_ids == i)[0]])
    ids2, avg = eval_inputs(sub, "betas", "averaged", 5)
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_allclose(avg, np.asarray(sub.test_betas)[:5])


def test_missing_method_stage_names_its_notebook():
    cfg = load_config(ReconstructionConfig, "smoke", overrides=dict(methods=["neuropictor"]))
    with pytest.raises(MissingStageError, match="05_singlesubject_refinement"):
        run_reconstruction_stage(cfg, fm=object())


@pytest.mark.slow
def test_ridge_stage_then_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURORECON_FIGURES", str(tmp_path / "figs"))
    fm = tiny_random_foundation(image_size=32, with_lm=False)
    cfg = load_config(ReconstructionConfig, "smoke", overrides=dict(
        methods=["ridge"], captions=False, subjects=[2], n_eval=4, sweep_n=3, strengths=[0.5, 1.0]))
    folder = run_reconstruction_stage(cfg, fm=fm, log=lambda m: None)
    res = load_results("smoke")
    t = res["results"]
    label, shuffled = "Ridge (Takagi & Nishimoto)", "Ridge (Takagi & Nishimoto) (shuffled fMRI)"
    assert set(t.method) == {label, shuffled} and set(t.subject) == {"2"}
    assert set(t[t.method == label].variant) == {"averaged", "single-trial"}
    clip = t[(t.metric == "demo-CLIP")].set_index(["method", "variant"]).value
    assert clip.notna().all() and clip.between(0, 1).all()
    assert t[t.metric == "CLIP"].value.isna().all() and "CLIP" in res["protocol"]["unavailable"]
    assert res["protocol"]["antialias"] is False
    rec = load_reconstructions(folder / "reconstructions" / "ridge_subj02_averaged.npz")
    assert rec["images"].shape == (4, 32, 32, 3) and rec["method"] == label and rec["subject"] == 2
    assert set(res["sweeps"].setting) == {0.5, 1.0} and set(res["sweeps"].parameter) == {"strength"}
    m = read_metrics(folder)
    assert {"test-averaged", "test-single-trial", "sweep-strength=0.5", "sweep-strength=1"} <= set(m.split)
    # complete with the same config: reused, not rerun
    marker = read_marker("reconstruction", "smoke")
    assert run_reconstruction_stage(cfg, fm=fm) == folder and read_marker("reconstruction", "smoke") == marker

    figs = run_figures_stage(load_config(FiguresConfig, "smoke"), log=lambda m: None)
    written = json.loads((figs / "figures.json").read_text())
    assert {"reconstructions_subj02", "shuffled_control", "metrics", "sweeps", "sweep_ridge"} <= set(written)
    assert all((tmp_path / "figs" / "smoke" / f"08_{k}.png").is_file() for k in written)
    table = pd.read_csv(figs / "paper_table.csv", index_col=0)
    assert table.loc[f"{label} (ours)", "PixCorr"] == pytest.approx(
        t[(t.method == label) & (t.variant == "averaged") & (t.metric == "PixCorr")].value.iloc[0])
    assert table.loc["NeuroPictor (published, real NSD)", "Alex(2)"] == 96.5 and len(table) == 2 + len(PUBLISHED)
    assert "| Ridge (Takagi & Nishimoto) (ours) |" in (figs / "paper_table.md").read_text()
