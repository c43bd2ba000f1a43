"""The dry run's pieces at tiny size: weights in the real formats pass the loader's checks, the real-size configs
give the published parameter counts, and the run config only uses keys the stages know."""

import json

import pytest
import torch
import yaml

from neurorecon.config import load_config
from neurorecon.dryrun import run as dryrun
from neurorecon.dryrun.weights import (SD21_BASE_UNET, UNCLIP_SMALL_UNET, count_params, random_state_dict,
                                       write_weights)
from neurorecon.foundation.load import check_paths, load_from_paths


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_weights(tmp_path_factory.mktemp("weights"), size="tiny", log=lambda *_: None)


def test_tiny_weights_pass_the_loader(tiny):
    assert check_paths(tiny["paths"]) == []
    fm = load_from_paths(tiny["paths"], "full", "cpu", "bfloat16")
    assert fm.unet.dtype == torch.bfloat16 and fm.unclip_unet.config.class_embed_type == "projection"
    emb = fm.image_embeds(torch.rand(2, 3, 40, 40))  # float images into the bf16 open_clip image tower
    assert emb.shape == (2, 48) and torch.isfinite(emb).all()
    assert len(fm.lm_tokenizer) >= 1024  # the written vocabulary (+ pad and <image> the loader adds)
    with open(f"{tiny['paths']['unclip_path']}/scheduler/scheduler_config.json") as fh:
        assert json.load(fh)["prediction_type"] == "v_prediction"  # Stable unCLIP small's own schedule


def test_written_again_only_when_settings_change(tiny, tmp_path):
    assert write_weights(tmp_path / "w", size="tiny", log=lambda *_: None)["params"] == tiny["params"]


def test_real_unet_configs_have_the_published_sizes():
    from diffusers import UNet2DConditionModel

    for cfg, expected in ((SD21_BASE_UNET, 865_910_724), (UNCLIP_SMALL_UNET, 869_517_764)):
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
        assert sum(p.numel() for p in unet.parameters()) == expected


def test_random_values_are_scaled_by_fan_in():
    lin = torch.nn.Linear(400, 3)
    state = random_state_dict(torch.nn.Sequential(lin, torch.nn.LayerNorm(3)), torch.float16)
    assert count_params(state) == 400 * 3 + 3 + 6
    assert abs(state["0.weight"].float().std().item() - 0.05) < 0.01
    assert state["1.weight"].eq(1).all() and state["0.bias"].eq(0).all()


def test_run_config_sections_are_valid_stage_configs(tiny, tmp_path):
    run_yaml = dryrun.write_run_config(tmp_path / "run.yaml", tiny["paths"], tmp_path / "nsd")
    files = dryrun.per_stage_files(run_yaml, tmp_path / "stages")
    for stage, path in files.items():
        cfg = load_config(dryrun._stage_class(stage), "full", path=path)
        assert cfg.profile == "full"
    data = load_config(dryrun._stage_class("data"), "full", path=files["data"])
    assert data.nsd_root == str(tmp_path / "nsd") and data.max_sessions == 1 and data.max_trials == 32


def test_clip_image_embeds_with_open_clips_own_low_precision():
    """open_clip's precision='bf16' (the built-in-name path of the full profile) keeps positional_embedding, the
    model's first parameter, in fp32: images and text must be cast to the blocks' dtype."""
    import open_clip
    from open_clip.factory import _MODEL_CONFIGS

    from neurorecon.foundation.clip import clip_image_embeds, clip_text_tokens
    from neurorecon.foundation.tiny import clip_model_config

    _MODEL_CONFIGS["dryrun-test-clip"] = clip_model_config(image_size=32, context_length=77, width=32, layers=2)
    try:
        model = open_clip.create_model("dryrun-test-clip", precision="bf16")
    finally:
        del _MODEL_CONFIGS["dryrun-test-clip"]
    assert next(model.parameters()).dtype == torch.float32 and model.visual.conv1.weight.dtype == torch.bfloat16
    assert torch.isfinite(clip_image_embeds(model, torch.rand(2, 3, 32, 32))).all()
    tokens = clip_text_tokens(model, open_clip.tokenizer.SimpleTokenizer(context_length=77), ["a cat", "a dog"])
    assert tokens.shape == (2, 77, 32) and torch.isfinite(tokens.float()).all()


def test_data_loading_probes_run_every_stages_loader(smoke_data_home, home_set_to):
    import subprocess
    import sys

    from neurorecon.data.stage import store_path
    from neurorecon.dryrun.loading import LOADERS, loading_code, parse_loading

    with home_set_to(smoke_data_home):
        folder = store_path("smoke")
    for stage in LOADERS:
        proc = subprocess.run([sys.executable, "-c", loading_code(folder, stage)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        rec = parse_loading(proc.stdout.splitlines())
        assert rec["trials"] > 0 and rec["peak_gb"] >= 0 and rec["held_gb"] > -0.05, (stage, rec)


def test_setup_steps_rerun_a_kept_preparation_only_when_its_store_is_gone(tmp_path):
    steps = dryrun._setup_steps(tmp_path, tmp_path / "nsd")
    labels = [label for label, *_ in steps]
    assert len(labels) == 1 + 2 * (1 + 4) and sum(label.startswith("load data") for label in labels) == 8
    prepared = {label for label in labels if not label.startswith("load data")}
    run = [s[0] for s in dryrun._steps_to_run(steps, prepared)]
    assert run == labels[1:]  # the stores are not on disk: both preparations rerun, the foundation load does not
    (tmp_path / "prepare-1").mkdir()
    (tmp_path / "prepare-1" / "store.json").write_text("{}")
    run = [s[0] for s in dryrun._steps_to_run(steps, prepared)]
    assert "prepare 1 session(s) x 4 subjects" not in run and "prepare 2 session(s) x 4 subjects" in run
    assert dryrun._steps_to_run(steps, set(labels)) == []


def test_probe_rows_keep_the_last_run_and_split_loops_of_one_name(tmp_path):
    recs = [dict(pid=1, desc="ViT3D", step=0), dict(pid=1, desc="ViT3D", step=1)]  # a failed earlier run
    recs += [dict(pid=2, desc="ViT3D", step=s) for s in (0, 1)] + [dict(pid=2, desc="ViT3D", step=s) for s in (0, 1)]
    recs += [dict(pid=2, desc="LLaVA stage 1", step=0), dict(pid=2, desc="LLaVA stage 2", step=0)]
    (tmp_path / "probe-06.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    loops = dryrun._probe_rows(tmp_path, "06")
    assert [(lp[0]["desc"], len(lp)) for lp in loops] == [("ViT3D", 2), ("ViT3D #2", 2), ("LLaVA stage 1", 1),
                                                         ("LLaVA stage 2", 1)]
    assert all(r["pid"] == 2 for lp in loops for r in lp)


@pytest.mark.parametrize("stage, desc, key", [("pretrain", "pretrain", "pretrain"),
                                              ("pretrain", "pretrain (CFG mask)", "pretrain-mask"),
                                              ("refine", "refine (CFG mask)", "refine-mask"),
                                              ("refine", "refine (last)", "refine"),
                                              ("language", "ViT3D #2", "vit3d"),
                                              ("language", "LLaVA stage 1", "stage1"),
                                              ("language", "LLaVA stage 2", "stage2"),
                                              ("encoding", "fMRI autoencoder", "encoding"),
                                              ("reconstruction", "anything", None)])
def test_each_training_loop_finds_its_papers_recipe(stage, desc, key):
    assert dryrun._recipe(stage, desc)[0] == key


def test_metric_network_files_load_as_the_evaluation_reads_them(tiny, tmp_path):
    """make dryrun also writes the evaluation's metric networks at real size (random, in their published formats),
    so notebook 07 scores every MindEye metric; they load strictly and give finite features."""
    from neurorecon.dryrun.weights import write_metric_weights
    from neurorecon.evaluation.networks import build_network

    paths = write_metric_weights(tmp_path / "metrics", log=lambda *_: None)
    assert set(paths) == {"alexnet", "inception", "efficientnet", "swav"}
    x = torch.rand(1, 3, 64, 64)
    for key, path in paths.items():
        net = build_network(key, path)
        feats = net.forward(torch.nn.functional.interpolate(x, size=(net.size, net.size)))
        assert feats and all(torch.isfinite(v).all() for v in feats.values()), key
    assert write_metric_weights(tmp_path / "metrics", log=lambda *_: None) == paths  # kept, not rewritten
    doc = yaml.safe_load(dryrun.write_run_config(tmp_path / "run.yaml", tiny["paths"], tmp_path / "nsd",
                                                 metric_paths=paths).read_text())
    assert doc["evaluation"]["clip"] == tiny["paths"]["clip_l_checkpoint"] and doc["evaluation"]["swav"] == paths["swav"]
    files = dryrun.per_stage_files(tmp_path / "run.yaml", tmp_path / "stages")
    ev = load_config(dryrun._stage_class("evaluation"), "full", path=files["evaluation"])
    assert ev.alexnet == paths["alexnet"] and ev.clip_model == tiny["paths"]["clip_l_model"]
