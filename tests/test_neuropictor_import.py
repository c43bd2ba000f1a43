"""Importing NeuroPictor's released checkpoints: a tiny synthetic checkpoint in the official key layout (with the
frozen/unused parts it also holds) against independent forwards of the official modules (tests/official_layout)."""

import argparse
import json

import numpy as np
import pytest
import torch
import yaml

from neurorecon.encoding import FMRIAutoencoder, FMRIEncoder, sincos_2d
from neurorecon.foundation import tiny_random_foundation
from neurorecon.neuropictor import NeuroPictorPipeline, load_pipeline
from neurorecon.neuropictor.convert import CheckpointMismatchError, UnsafeCheckpointError
from neurorecon.neuropictor.released import import_autoencoder, import_checkpoint, import_neuropictor

import official_layout as ol

MAP, PATCH, WIDTH, DEPTH, HEADS = 32, 8, 16, 2, 2
GRID = MAP // PATCH
TOKENS = GRID * GRID + 1


@pytest.fixture(scope="module")
def fm():
    return tiny_random_foundation(image_size=32, with_lm=False)


@pytest.fixture(scope="module")
def home(new_smoke_home):
    """This module's own smoke store (32x32 flat maps, as MAP), for the stage tests."""
    return new_smoke_home("import_home")


def released_state(fm, seed=0):
    """A released-layout checkpoint for ``fm``; its frozen UNet is loaded into ``fm.unet`` (the foundation is
    the UNet the released model was trained around)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    g = ol.Gen(seed)
    unet = ol.ldm_unet_keys(g, dict(fm.unet.config))
    fm.unet.load_state_dict(convert_ldm_unet_checkpoint(unet, dict(fm.unet.config)))
    text_len, text_dim = fm.text_shape
    s = ol.encoder_keys(g, "fmri_encoder.transformer.", WIDTH, DEPTH, PATCH, GRID)
    s.update(ol.semantic_keys(g, TOKENS, WIDTH, text_len, text_dim))
    s.update(ol.ldm_controlnet_keys(g, dict(fm.unet.config)))
    s.update(ol.hint_keys(g, TOKENS, WIDTH, fm.unet.config.block_out_channels[0], fm.latent_size))
    s.update(ol.junk_keys(g))
    s.update(unet)
    return s


def write_yaml(path, decoder_width=12, decoder_depth=1):
    path.write_text(yaml.safe_dump(dict(Data=dict(patch_size=PATCH, image_size=[MAP, MAP]),
                                        Model=dict(embed_dim=WIDTH, decoder_embed_dim=decoder_width, num_heads=HEADS,
                                                   drop_rate=0.1, in_chans=1, encoder_depth=DEPTH,
                                                   decoder_depth=decoder_depth))))
    return path


def test_mae_positions_in_the_official_channel_order():
    ref = ol.mae_sincos(24, 3, 5)[0]
    assert torch.allclose(sincos_2d(24, 3, 5), ref, atol=1e-6)
    # first half: the patch's column; patches of one column share it
    assert torch.allclose(ref[1 + 0 * 5 + 2, :12], ref[1 + 2 * 5 + 2, :12])
    assert not torch.allclose(ref[1 + 0 * 5 + 2, 12:], ref[1 + 2 * 5 + 2, 12:])


def test_positions_are_saved_and_restored(tmp_path):
    enc = FMRIEncoder(map_size=MAP, patch=PATCH, width=WIDTH, depth=1, heads=HEADS)
    with torch.no_grad():
        enc.pos_embed.add_(0.5)  # trained/imported positions must survive, not be recomputed
    enc.save_pretrained(tmp_path / "e")
    again = FMRIEncoder.from_pretrained(tmp_path / "e")
    assert torch.equal(again.pos_embed, enc.pos_embed)


def test_checkpoint_import_matches_the_official_forward(fm, tmp_path):
    state = released_state(fm)
    torch.save(state, tmp_path / "epoch_015.pth")
    cond, cn, report = import_checkpoint(tmp_path / "epoch_015.pth", fm, heads=HEADS)
    maps = torch.randn(3, MAP, MAP, generator=torch.Generator().manual_seed(1))
    ref_tokens = ol.official_tokens(state, "fmri_encoder.transformer.", maps, HEADS)
    ref_ctx, ref_main = ol.official_semantic(state, ref_tokens)
    with torch.no_grad():
        tokens, ctx, main = cond.double()(maps.double())
        hint = cn.controlnet_cond_embedding.double()(ref_tokens)
    channels = fm.unet.config.block_out_channels[0]
    ref_hint = ol.official_hint(state, ref_tokens, channels, fm.latent_size)
    for ours, theirs in ((tokens, ref_tokens), (ctx, ref_ctx), (main, ref_main), (hint, ref_hint)):
        assert ours.shape == theirs.shape and (ours - theirs).abs().max() < 1e-6
    assert (ctx - main).abs().max() > 1e-3  # the parallel branch matters
    # every released key accounted for: imported or skipped with a reason
    counts = report["counts"]
    assert sum(counts["imported"].values()) + counts["skipped"] == counts["total"] == len(state)
    skipped = {k for keys in report["skipped"].values() for k in keys}
    assert "control_model.input_hint_block.0.weight" in skipped and "betas" in skipped
    assert "fmri_encoder.transformer.pred.weight" in skipped and "model.diffusion_model.input_blocks.0.0.weight" in skipped
    assert report["positions_equal_mae_sincos"] is True
    assert torch.equal(cond.empty_context, fm.empty_tokens(1).float())
    assert report["frozen_unet"]["compared"] and report["frozen_unet"]["equal"]


def test_a_foundation_unet_other_than_the_released_one_is_refused(fm, tmp_path):
    state = released_state(fm)
    key = "model.diffusion_model.output_blocks.2.0.out_layers.3.weight"
    state[key] = state[key] + 0.05
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(CheckpointMismatchError, match="not the foundation's.*up_blocks.1.resnets.0.conv2.weight"
                                                      ".*--allow-other-unet"):
        import_checkpoint(tmp_path / "other.pth", fm, heads=HEADS)
    _, _, report = import_checkpoint(tmp_path / "other.pth", fm, heads=HEADS, allow_other_unet=True)
    assert report["frozen_unet"]["equal"] is False and report["frozen_unet"]["n_differing"] == 1


def test_controlnet_body_is_a_bijection_of_the_ldm_weights(fm, tmp_path):
    state = released_state(fm)
    torch.save(state, tmp_path / "c.pth")
    _, cn, _ = import_checkpoint(tmp_path / "c.pth", fm, heads=HEADS)
    sd = cn.state_dict()
    c = "control_model."
    pairs = {"conv_in.weight": "input_blocks.0.0.weight", "time_embedding.linear_1.weight": "time_embed.0.weight",
             "controlnet_down_blocks.0.weight": "zero_convs.0.0.weight",
             "controlnet_mid_block.weight": "middle_block_out.0.weight",
             "down_blocks.0.resnets.0.conv1.weight": "input_blocks.1.0.in_layers.2.weight",
             "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight":
                 "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
             "down_blocks.0.downsamplers.0.conv.weight": "input_blocks.2.0.op.weight",
             "mid_block.attentions.0.proj_in.weight": "middle_block.1.proj_in.weight",
             "mid_block.resnets.1.time_emb_proj.weight": "middle_block.2.emb_layers.1.weight"}
    for ours, theirs in pairs.items():
        assert torch.equal(sd[ours], state[c + theirs]), ours
    body = sorted((tuple(v.shape), round(float(v.double().sum()), 6)) for k, v in state.items()
                  if k.startswith(c) and not k.startswith((c + "input_hint_block", c + "fmri_mapper")))
    mine = sorted((tuple(v.shape), round(float(v.double().sum()), 6)) for k, v in sd.items()
                  if not k.startswith("controlnet_cond_embedding"))
    assert body == mine


def test_one_error_lists_everything_that_does_not_fit(fm, tmp_path):
    state = released_state(fm)
    state["mystery.weight"] = torch.zeros(2)
    del state["cond_stage.norm.bias"]
    state["control_model.fmri_mapper.out.weight"] = torch.zeros(3, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError) as err:
        import_checkpoint(tmp_path / "bad.pth", fm, heads=HEADS)
    text = str(err.value)
    assert "mystery.weight" in text and "semantic.norm.bias" in text and "zero_conv.weight" in text
    assert len(err.value.problems) == 3
    with pytest.raises(CheckpointMismatchError, match="attention heads"):
        import_checkpoint(tmp_path / "bad.pth", fm)


def test_pickled_objects_are_refused_unless_allowed(fm, tmp_path):
    state = released_state(fm)
    torch.save({"state_dict": state, "opt": argparse.Namespace(lr=1e-4)}, tmp_path / "lightning.pth")
    with pytest.raises(UnsafeCheckpointError, match="--trust-pickle"):
        import_checkpoint(tmp_path / "lightning.pth", fm, heads=HEADS)
    cond, _, _ = import_checkpoint(tmp_path / "lightning.pth", fm, heads=HEADS, allow_pickle=True)
    assert cond.config.residual


def test_uk_biobank_autoencoder_import(tmp_path):
    g = ol.Gen(3)
    state = ol.encoder_keys(g, "transformer.", WIDTH, DEPTH, PATCH, GRID, decoder_width=12, decoder_depth=1)
    torch.save({"model": {"module." + k: v for k, v in state.items()}, "iteration": 120000},
               tmp_path / "checkpoint_120000.pth")
    ae, report = import_autoencoder(tmp_path / "checkpoint_120000.pth", write_yaml(tmp_path / "ae.yaml"))
    assert isinstance(ae, FMRIAutoencoder) and ae.config.bottleneck_act == "none" and ae.config.decoder_width == 12
    maps = torch.randn(2, MAP, MAP, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        rec = ae.double()(maps.double())
        tokens = ae.encoder(maps.double())
    assert (rec - ol.official_reconstruction(state, "transformer.", maps, HEADS, PATCH)).abs().max() < 1e-6
    assert (tokens - ol.official_tokens(state, "transformer.", maps, HEADS)).abs().max() < 1e-6
    assert report["positions_equal_mae_sincos"] is True
    with pytest.raises(CheckpointMismatchError, match="YAML says depth 3"):
        bad = write_yaml(tmp_path / "bad.yaml")
        bad.write_text(bad.read_text().replace("encoder_depth: 2", "encoder_depth: 3"))
        import_autoencoder(tmp_path / "checkpoint_120000.pth", bad)


def test_import_folder_is_a_pipeline_load_pipeline_reads(fm, tmp_path):
    state = released_state(fm)
    torch.save(state, tmp_path / "epoch_015.pth")
    g = ol.Gen(4)
    ukb = ol.encoder_keys(g, "transformer.", WIDTH, DEPTH, PATCH, GRID, decoder_width=12, decoder_depth=1)
    torch.save({"model": ukb}, tmp_path / "ukb.pth")
    out = import_neuropictor(tmp_path / "imported", ckpt=tmp_path / "epoch_015.pth", encoder=tmp_path / "ukb.pth",
                             encoder_config=write_yaml(tmp_path / "ae.yaml"), fm=fm)
    info = json.loads((out / "import.json").read_text())
    assert info["checkpoint"]["counts"]["total"] == len(state) and info["encoder_file"]["n_keys"] == len(ukb)
    pipe = load_pipeline(fm, out)
    full = NeuroPictorPipeline.from_pretrained(out)
    full.set_progress_bar_config(disable=True)
    maps = np.random.default_rng(0).normal(size=(2, MAP, MAP)).astype(np.float32)
    a = pipe(maps, num_inference_steps=2, generator=[torch.Generator().manual_seed(i) for i in range(2)]).images
    b = full(maps, num_inference_steps=2, generator=[torch.Generator().manual_seed(i) for i in range(2)]).images
    assert a.shape == (2, 3, 32, 32) and torch.allclose(a, b, atol=1e-5)
    assert FMRIAutoencoder.from_pretrained(out / "autoencoder").config.bottleneck_act == "none"
    enc = FMRIEncoder.from_pretrained(out / "encoder")
    assert torch.equal(enc.pos_embed, ukb["transformer.pos_embed"])


def test_cli_import_and_its_errors(fm, tmp_path, monkeypatch, capsys):
    import neurorecon.foundation as foundation
    from neurorecon.cli import main

    state = released_state(fm)
    torch.save(state, tmp_path / "epoch_015.pth")
    calls = []
    monkeypatch.setattr(foundation, "load_foundation", lambda *a, **k: calls.append((a, k)) or fm)
    out = tmp_path / "imp"
    assert main(["import", "neuropictor", "--ckpt", str(tmp_path / "epoch_015.pth"), "--encoder-heads", str(HEADS),
                 "--out", str(out), "--fmri-parts-only"]) == 0
    assert calls[0][0] == ("full",) and calls[0][1]["components"] == ("sd", "clip_h")
    assert "skipped (named in import.json)" in capsys.readouterr().out
    assert (out / "conditioner").is_dir() and not (out / "unet").exists()
    load_pipeline(fm, out)
    state["extra.thing"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    assert main(["import", "neuropictor", "--ckpt", str(tmp_path / "bad.pth"), "--encoder-heads", "2",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "extra.thing" in err and (out / "conditioner").is_dir()  # the earlier import survives
    assert main(["import", "neuropictor", "--out", str(out)]) == 2
    assert "--ckpt" in capsys.readouterr().err


def test_encoding_stage_starts_from_the_imported_uk_biobank_model(home, monkeypatch, tmp_path):
    from neurorecon.artifacts import read_metrics
    from neurorecon.config import load_config
    from neurorecon.encoding import EncodingConfig, load_encoder, run_encoding_stage
    from neurorecon.errors import ConfigError

    monkeypatch.setenv("NEURORECON_HOME", str(home))
    g = ol.Gen(5)  # the smoke encoder's shape: 32x32 maps, patch 8, width 32, 1 block, 2 heads
    ukb = ol.encoder_keys(g, "transformer.", 32, 1, 8, 4, decoder_width=32, decoder_depth=1)
    torch.save({"model": ukb}, tmp_path / "ukb.pth")
    out = import_neuropictor(tmp_path / "ukb", encoder=tmp_path / "ukb.pth", heads=2)
    cfg = load_config(EncodingConfig, "smoke", overrides={"steps": 0, "init_checkpoint": str(out)})
    folder = run_encoding_stage(cfg, progress=False)
    enc = load_encoder("smoke")
    assert torch.equal(enc.blocks[0].attn.qkv.weight, ukb["transformer.blocks.0.attn.qkv.weight"])
    m = read_metrics(folder)
    assert m[m.metric == "from_init_checkpoint"].value.iloc[0] == 1.0 and (m.metric == "r2").any()
    bad = load_config(EncodingConfig, "smoke", overrides={"width": 64, "init_checkpoint": str(out)})
    with pytest.raises(ConfigError, match="set width: 32"):
        run_encoding_stage(bad, progress=False)


def test_notebook_07_scores_the_released_model_as_its_own_row(fm, home, monkeypatch, tmp_path):
    from neurorecon.evaluation.reconstruction import ReconstructionConfig, load_results, run_reconstruction_stage
    from neurorecon.config import load_config
    from neurorecon.errors import ConfigError

    monkeypatch.setenv("NEURORECON_HOME", str(home))
    torch.save(released_state(fm), tmp_path / "epoch_015.pth")
    out = import_neuropictor(tmp_path / "released", ckpt=tmp_path / "epoch_015.pth", fm=fm, heads=HEADS,
                             full_pipeline=False, subject=1)
    over = dict(methods=["neuropictor_released"], captions=False, subjects=[1, 2], n_eval=3, single_trial=False,
                num_inference_steps=2, sweep_n=2)
    with pytest.raises(ConfigError, match="needs released_neuropictor"):
        run_reconstruction_stage(load_config(ReconstructionConfig, "smoke", overrides=over), fm=fm)
    logs = []
    cfg = load_config(ReconstructionConfig, "smoke", overrides=dict(over, released_neuropictor=str(out)))
    run_reconstruction_stage(cfg, fm=fm, log=logs.append)
    t = load_results("smoke")["results"]
    label = "NeuroPictor (released checkpoint)"
    assert set(t.method) == {label, label + " (shuffled fMRI)"} and set(t.subject) == {"1"}
    assert t[(t.method == label) & (t.metric == "PixCorr")].value.notna().all()
    assert any("released checkpoint is subject 1's" in m for m in logs)


def test_sd21_topology_keys_convert(tmp_path):
    """SD 2.1 base's ControlNet topology (4 levels, 2 blocks each, linear projections, input_blocks 0-11, 257 fMRI
    tokens, 77 x D context, 64x64 latents) at small widths: every ldm key lands, and input_blocks.1 is not
    confused with input_blocks.10/11."""
    import types

    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                                block_out_channels=(32, 64, 128, 128), cross_attention_dim=48,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                                attention_head_dim=(2, 4, 8, 8), use_linear_projection=True, norm_num_groups=16)
    fm = types.SimpleNamespace(unet=unet, text_shape=(77, 48), latent_size=64,
                               empty_tokens=lambda n: torch.zeros(n, 77, 48))
    g = ol.Gen(7)
    state = ol.encoder_keys(g, "fmri_encoder.transformer.", 16, 1, 16, 16)
    state.update(ol.semantic_keys(g, 257, 16, 77, 48))
    state.update(ol.ldm_controlnet_keys(g, dict(unet.config)))
    state.update(ol.hint_keys(g, 257, 16, 32, 64))
    torch.save(state, tmp_path / "sd21.pth")
    cond, cn, report = import_checkpoint(tmp_path / "sd21.pth", fm, heads=2)
    assert cond.encoder.num_tokens == 257 and cond.semantic.tokens[0].out_channels == 128
    assert "control_model.input_blocks.11.0.out_layers.3.weight" in report["imported"]["controlnet"]
    sd = cn.state_dict()
    assert torch.equal(sd["controlnet_down_blocks.11.weight"], state["control_model.zero_convs.11.0.weight"])
    assert torch.equal(sd["down_blocks.3.resnets.1.conv2.weight"],
                       state["control_model.input_blocks.11.0.out_layers.3.weight"])
    assert torch.equal(sd["down_blocks.0.resnets.0.conv1.weight"],
                       state["control_model.input_blocks.1.0.in_layers.2.weight"])


@pytest.mark.slow
def test_cli_import_on_the_full_profile_foundation(tmp_path, capsys):
    """The import's full-profile path: the foundation from the full foundation stage's record (tiny weights in the
    real formats, frozen in float16), the ControlNet sized to that SD UNet, the empty context from its OpenCLIP."""
    from neurorecon.artifacts import StageWriter
    from neurorecon.cli import main
    from neurorecon.config import load_config
    from neurorecon.foundation import FoundationConfig, load_foundation
    from neurorecon.foundation.load import COMPONENTS, PATHS_FILE, configured_components
    from tiny_weights import write_weights

    paths = write_weights(tmp_path / "weights")
    cfg = load_config(FoundationConfig, "full", overrides={**paths, "dtype": "float16", "device": "cpu"})
    with StageWriter(cfg) as w:  # what notebook 02 leaves in the full profile
        keep = {k for c in configured_components(paths) for k in COMPONENTS[c][0]}
        (w.path / PATHS_FILE).write_text(json.dumps({k: v for k, v in paths.items() if k in keep}))
    fm = load_foundation("full", with_lm=False, components=("sd", "clip_h"))
    assert fm.unet.dtype == torch.float16
    state = released_state(fm)
    fm.unet.save_pretrained(f"{paths['sd_path']}/unet")  # the SD on disk is the UNet the release was trained around
    torch.save(state, tmp_path / "epoch_015.pth")
    out = tmp_path / "np_sub01"
    assert main(["import", "neuropictor", "--ckpt", str(tmp_path / "epoch_015.pth"), "--encoder-heads", str(HEADS),
                 "--subject", "1", "--out", str(out)]) == 0, capsys.readouterr().err
    assert "its frozen UNet equals the foundation's" in capsys.readouterr().out
    pipe = load_pipeline(fm, out)
    assert pipe.conditioner.dtype == torch.float32 and json.loads((out / "import.json").read_text())["subject"] == 1
    maps = np.random.default_rng(0).normal(size=(1, MAP, MAP)).astype(np.float32)
    images = pipe(maps, num_inference_steps=2, generator=[torch.Generator().manual_seed(0)]).images
    assert images.shape == (1, 3, fm.image_size, fm.image_size) and torch.isfinite(images).all()
    assert torch.equal(pipe.conditioner.empty_context.cpu(), fm.empty_tokens(1).float().cpu())


def test_paper_widths_map_and_match(tmp_path):
    """The released model's own widths (256x256 maps, patch 16 -> 257 tokens of 1024, 16 heads; 257 -> 128 -> 77
    tokens of 1024; hint 257 -> 514 -> 320 channels, 1024 -> 64x64), two blocks instead of 24."""
    from neurorecon.neuropictor import FMRIConditioner, FMRIHintMapper
    from neurorecon.neuropictor import convert as cv

    g = ol.Gen(11)
    state = ol.encoder_keys(g, "fmri_encoder.transformer.", 1024, 2, 16, 16)
    state.update(ol.semantic_keys(g, 257, 1024, 77, 1024))
    state.update(ol.hint_keys(g, 257, 1024, 320, 64))
    shape = cv.encoder_shape(state, cv.ENCODER, yaml_shape=dict(heads=16, patch=16, width=1024, depth=2,
                                                                map_size=[256, 256]))
    assert shape == dict(map_size=256, patch=16, width=1024, depth=2, mlp_ratio=4.0, heads=16)
    cond = FMRIConditioner(**shape, text_len=77, text_dim=1024, semantic_mid=128, residual=True)
    used = set()
    mapped = cv.conditioner_state(state, used)
    mapped["empty_context"] = torch.zeros(1, 77, 1024)
    assert cv.fill_strict(cond, mapped, "conditioner") == []
    hint = FMRIHintMapper(257, 1024, 320, 64)
    mapped = {k.split("controlnet_cond_embedding.")[1]: v for k, v in cv.hint_mapper_state(state, used).items()}
    assert cv.fill_strict(hint, mapped, "hint") == []
    assert used == {k for k in state if not k.endswith(("pred.weight", "pred.bias", "mask_token"))}
    maps = torch.randn(2, 256, 256, generator=torch.Generator().manual_seed(0))
    ref_tokens = ol.official_tokens(state, "fmri_encoder.transformer.", maps, 16)
    ref_ctx, _ = ol.official_semantic(state, ref_tokens)
    with torch.no_grad():
        tokens, ctx, _ = cond.double()(maps.double())
        out = hint.double()(ref_tokens)
    assert tokens.shape == (2, 257, 1024) and ctx.shape == (2, 77, 1024) and out.shape == (2, 320, 64, 64)
    assert (tokens - ref_tokens).abs().max() < 1e-6 and (ctx - ref_ctx).abs().max() < 1e-6
    assert (out - ol.official_hint(state, ref_tokens, 320, 64)).abs().max() < 1e-6


def test_unet_check_tolerates_the_foundations_rounding_only():
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from neurorecon.foundation.tiny import tiny_unet
    from neurorecon.neuropictor.released import compare_frozen_unet

    unet = tiny_unet(8, 16, (16, 32))
    state = ol.ldm_unet_keys(ol.Gen(9), dict(unet.config))

    unet.load_state_dict(convert_ldm_unet_checkpoint(state, dict(unet.config)))
    assert compare_frozen_unet(state, unet.to(torch.bfloat16))["equal"]  # bf16 rounding of the same weights
    state["model.diffusion_model.out.2.bias"] = state["model.diffusion_model.out.2.bias"] + 0.1
    check = compare_frozen_unet(state, unet)
    assert check["compared"] and check["differing"] == ["conv_out.bias"]
    assert compare_frozen_unet({"x": torch.zeros(1)}, unet)["equal"] is None
