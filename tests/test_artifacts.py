import json
import os

import pandas as pd
import pytest

from neurorecon import paths
from neurorecon.artifacts import (METRIC_COLUMNS, StageWriter, atomic_dir, collect_metrics, is_complete,
                                  read_marker, read_metrics, require_stage, stale_upstream)
from neurorecon.config import load_config
from neurorecon.data.stage import DataConfig
from neurorecon.errors import MissingStageError


def test_stage_writer_writes_config_metrics_and_marker_last():
    cfg = load_config(DataConfig, "smoke")
    with StageWriter(cfg) as w:
        (w.path / "out.txt").write_text("x")
        w.add_metric("prepare", 1, "train", "n_trials", 36)
        assert not is_complete("data", "smoke")
        assert not (w.path / "COMPLETE").exists()
    folder = paths.stage_dir("data", "smoke")
    assert is_complete("data", "smoke", cfg.digest())
    assert not is_complete("data", "smoke", "other")
    assert json.loads((folder / "COMPLETE").read_text())["digest"] == cfg.digest()
    m = read_metrics(folder)
    assert tuple(m.columns) == METRIC_COLUMNS
    assert m.iloc[0].to_dict() == dict(stage="data", method="prepare", subject="1", split="train",
                                       metric="n_trials", value=36.0)
    assert (folder / "config.yaml").read_text() == cfg.to_yaml()
    assert collect_metrics("smoke").shape == (1, 6)
    assert require_stage("data", "smoke") == folder


def _make(cls, profile="smoke"):
    cfg = load_config(cls, profile)
    with StageWriter(cfg) as w:
        w.add_metric("toy", "all", "all", "ran", 1)
    return cfg.digest()


def test_remaking_an_upstream_stage_makes_the_stages_built_on_it_stale():
    from neurorecon.foundation import FoundationConfig
    from neurorecon.neuropictor.stage import PretrainConfig, RefineConfig
    from neurorecon.nv2l.stage import LanguageConfig

    _make(DataConfig)
    foundation = _make(FoundationConfig)
    pretrain = _make(PretrainConfig)  # built without an encoding stage: it does not record one
    refine = _make(RefineConfig)
    language = _make(LanguageConfig)
    assert read_marker("pretrain", "smoke")["upstream"].keys() == {"data", "foundation"}
    assert all(is_complete(s, "smoke", d) for s, d in
               [("foundation", foundation), ("pretrain", pretrain), ("refine", refine), ("language", language)])
    _make(DataConfig)  # re-made upstream: everything downstream of it is stale until rebuilt
    _make(FoundationConfig)
    assert not is_complete("pretrain", "smoke", pretrain) and stale_upstream("pretrain", "smoke") == "data"
    assert stale_upstream("refine", "smoke") == "pretrain"  # through pretrain: recursive
    assert not is_complete("refine", "smoke", refine) and not is_complete("language", "smoke", language)
    assert is_complete("refine", "smoke")  # still readable (require_stage works), just not reused as it is
    assert is_complete("foundation", "smoke", foundation)  # the re-made foundation is built on the current data
    _make(PretrainConfig)
    assert stale_upstream("refine", "smoke") == "pretrain"  # pretrain is a new run: refine must be rebuilt
    _make(RefineConfig)
    assert is_complete("refine", "smoke", refine)


def test_failed_stage_leaves_old_version_and_no_partial():
    cfg = load_config(DataConfig, "smoke")
    with StageWriter(cfg) as w:
        (w.path / "v").write_text("1")
    with pytest.raises(RuntimeError):
        with StageWriter(cfg) as w:
            (w.path / "v").write_text("2")
            raise RuntimeError("killed mid-way")
    folder = paths.stage_dir("data", "smoke")
    assert (folder / "v").read_text() == "1"
    assert is_complete("data", "smoke")
    assert [p.name for p in folder.parent.iterdir()] == ["data"]


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "store"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with atomic_dir(target) as tmp:
        assert tmp != target and tmp.name.endswith(f"partial-{os.getpid()}")
        (tmp / "a").write_text("2")
    assert (target / "a").read_text() == "2"


def test_missing_stage_names_the_notebook():
    with pytest.raises(MissingStageError, match=r"01_data_preparation\.ipynb.*make reproduce PROFILE=demo"):
        require_stage("data", "demo")
    paths.stage_dir("data", "demo").mkdir(parents=True)
    with pytest.raises(MissingStageError, match="incomplete"):
        require_stage("data", "demo")
    assert collect_metrics("demo").empty


def test_home_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURORECON_HOME", str(tmp_path / "elsewhere"))
    assert paths.home() == (tmp_path / "elsewhere").resolve()
    assert paths.stage_dir("data", "demo") == (tmp_path / "elsewhere/artifacts/demo/data").resolve()
    monkeypatch.delenv("NEURORECON_HOME")
    assert paths.home() == paths.repo_root() / "neurorecon_home"
    assert paths.figures_dir("smoke").name == "smoke"
