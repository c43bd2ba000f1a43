import json

import pytest

from neurorecon.artifacts import StageWriter
from neurorecon.cli import main
from neurorecon.config import load_config
from neurorecon.data import load_prepared
from neurorecon.data.stage import DataConfig


def test_results_prints_every_stage_as_one_table(capsys):
    assert main(["results", "--profile", "smoke"]) == 0
    assert "no complete stage" in capsys.readouterr().out
    with StageWriter(load_config(DataConfig, "smoke")) as w:
        w.add_metric("prepare", 1, "train", "n_trials", 108)
        w.add_metric("split_half", 1, "test", "r_V1v", 0.5)
    assert main(["results", "--profile", "smoke", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [dict(stage="data", method="prepare", subject="1", split="train", metric="n_trials", value=108.0),
                    dict(stage="data", method="split_half", subject="1", split="test", metric="r_V1v", value=0.5)]


def test_simulate_then_prepare_from_the_command_line(tmp_path, capsys):
    assert main(["simulate", "--out", str(tmp_path / "nsd"), "--profile", "smoke", "--seed", "3", "--quiet"]) == 0
    assert main(["check-data", "--nsd-root", str(tmp_path / "nsd"), "--profile", "smoke"]) == 0
    assert main(["prepare", "--nsd-root", str(tmp_path / "nsd"), "--out", str(tmp_path / "store"),
                 "--subjects", "2", "--quiet"]) == 0
    sub = load_prepared(tmp_path / "store", 2)
    assert sub.train_betas.shape[0] == len(sub.train_image_ids) and sub.train_flat.shape[0] == len(sub.train_image_ids)
    assert sub.resting_flat is not None and sub.test_common.shape[0] == len(sub.test_image_ids)
    with pytest.raises(SystemExit):
        main(["prepare", "--nsd-root", "x", "--out", "y", "--subjects", "one"])
    assert "expected comma-separated whole numbers like 1,2,5,7, got 'one'" in capsys.readouterr().err


def test_data_stage_reuses_a_complete_stage(monkeypatch):
    from neurorecon.data import stage

    cfg = load_config(DataConfig, "smoke")
    first = stage.run_data_stage(cfg, progress=False)
    monkeypatch.setattr(stage, "prepare", lambda *a, **k: (_ for _ in ()).throw(AssertionError("reran")))
    assert stage.run_data_stage(cfg, progress=False) == first
    with pytest.raises(AssertionError, match="reran"):
        stage.run_data_stage(cfg, force=True, progress=False)
    assert load_prepared(first, 1).test_betas.shape[0] == 12
