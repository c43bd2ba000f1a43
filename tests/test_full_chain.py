"""The full profile end to end at tiny size: notebooks 01-08 with ``profile=full`` through ONE run config, on a
raw NSD tree (NSD-mini, smoke size, read as real NSD: ``simulate: false``) and tiny random weights in the real
on-disk formats, loaded as float16 frozen weights. Every stage runs its full-profile code path (weights from the
paths the foundation stage checked and recorded, each stage loading only the components it uses); the sizes are
the smoke profile's, so this checks plumbing, not quality (``check_results=False``)."""

import json

import pytest
import yaml

from neurorecon import paths, runner
from neurorecon.artifacts import STAGE_NOTEBOOKS, is_complete, read_metrics
from neurorecon.config import STAGE_CONFIGS, config_class, load_config
from neurorecon.foundation.load import PATHS_FILE
from neurorecon.seeds import _seed_config, aggregate, markdown, seed_home, summarise
from neurorecon.simulate import simulate
from tiny_weights import write_weights


#: Keys a run config must not copy from the smoke profile (they locate data or choose the code path).
_PROFILE_KEYS = {"nsd_root", "simulate", "manifest", "coco_root", "flatmap", "device", "dtype", "sd_path",
                 "unclip_path", "clip_h_model", "clip_h_checkpoint", "clip_h_config", "clip_l_model",
                 "clip_l_checkpoint", "clip_l_config", "llm_path", "lm_path"}


def tiny_full_run_config(tmp_path, nsd_root, weight_paths, dtype="float16"):
    """A run config for the full profile with the smoke profile's sizes in every stage section."""
    sections = {}
    for section in STAGE_CONFIGS:
        smoke = load_config(config_class(section), "smoke").to_dict()
        sections[section] = {k: v for k, v in smoke.items() if k != "profile" and k not in _PROFILE_KEYS}
    sections["data"].update(manifest=str(paths.repo_root() / "data_manifests" / "smoke.yaml"))
    sections["foundation"].update(weight_paths)
    sections["language"].update(concept_source="annotated")  # a random tiny LM extracts no concept to locate
    run = dict(shared=dict(nsd_root=str(nsd_root), device="cpu", dtype=dtype), **sections)
    out = tmp_path / "tiny_full_run.yaml"
    out.write_text(yaml.safe_dump(json.loads(json.dumps(run))))  # tuples -> lists
    return out


@pytest.mark.slow
def test_full_profile_chain_through_one_run_config(tmp_path, capsys):
    nsd = simulate(tmp_path / "nsd", profile="smoke", seed=0, progress=False)
    weights = write_weights(tmp_path / "weights")
    run = tiny_full_run_config(tmp_path, nsd, weights)
    assert runner.reproduce("full", config_file=run, check_results=False) == 0, capsys.readouterr().out
    for stage in STAGE_NOTEBOOKS:
        assert is_complete(stage, "full"), stage
    folder = paths.stage_dir("foundation", "full")
    recorded = json.loads((folder / PATHS_FILE).read_text())
    assert recorded["sd_path"] == weights["sd_path"] and recorded["llm_path"] == weights["llm_path"]
    assert yaml.safe_load((folder / "config.yaml").read_text())["dtype"] == "float16"
    refine = read_metrics(paths.stage_dir("refine", "full"))
    assert {"refined", "refined_mask", "pretrain_only"} <= set(refine.method)
    lang = read_metrics(paths.stage_dir("language", "full"))
    located = lang[(lang.method == "gradcam") & (lang.subject == "all") & (lang.metric == "n_cases")].value
    assert located.iloc[0] > 0  # Grad-CAM maps and the ablation ran on the annotated concepts
    rec = read_metrics(paths.stage_dir("reconstruction", "full"))
    assert rec.value.notna().any()
    out = capsys.readouterr().out
    assert "[done] 08_paper_figures.ipynb" in out
    # make seeds' tables, here over this one chain: every headline number and ordering is read from the stages
    metrics, orderings = aggregate({0: paths.home()}, "full")
    assert {"reconstruction", "language", "ceiling", "refinement"} == set(metrics.source)
    assert metrics.value.notna().all()
    assert {"refined", "refined_mask", "refined_last"} <= set(metrics[metrics.source == "refinement"].method)
    assert len(metrics[metrics.source == "ceiling"]) == 4  # the decoding ceiling: the tree is NSD-mini
    assert {"NV2L > ridge", "brain captions > nearest-neighbour captions"} <= set(orderings.claim)
    summary, holds = summarise(metrics, orderings)
    assert (summary.n_seeds == 1).all() and (summary["mean"] == summary["min"]).all()
    assert set(holds.k_of_n) <= {"0 of 1", "1 of 1"}
    md = markdown(summary, holds, [0])
    assert md.count("\n| ") == len(summary) + len(holds) + 1 and "mean over seeds 0" in md


def test_seed_run_config_sets_the_simulator_seed_on_top_of_the_users(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("shared:\n  device: cpu\ndata:\n  betas_format: nifti\n")
    run = yaml.safe_load(_seed_config(seed_home("demo", 3, tmp_path), 3, user).read_text())
    assert run == {"shared": {"device": "cpu"}, "data": {"betas_format": "nifti", "sim_seed": 3}}
    assert seed_home("demo", 3, tmp_path) == tmp_path / "seed3"
