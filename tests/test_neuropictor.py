"""NeuroPictor's model pieces and pipeline on tiny random components (the real classes, tiny widths)."""

import numpy as np
import pytest
import torch

from neurorecon.encoding import FMRIEncoder
from neurorecon.foundation import tiny_random_foundation
from neurorecon.neuropictor import (FMRIConditioner, FMRIControlNetModel, NeuroPictorPipeline, build_neuropictor,
                                    derangement, make_scheduler, pipeline_from_model, seeded_generators)


@pytest.fixture(scope="module")
def fm():
    return tiny_random_foundation(image_size=32, with_lm=False)


@pytest.fixture
def model(fm):
    torch.manual_seed(0)
    enc = FMRIEncoder(map_size=32, patch=8, width=32, depth=1, heads=2)
    return build_neuropictor(fm, enc, semantic_mid=8)


def _batch(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 32, 32, generator=g), torch.randn(n, 4, 16, 16, generator=g)


def test_controlnet_is_a_unet_copy_with_an_fmri_hint(fm, model):
    cn = model.controlnet
    assert isinstance(cn, FMRIControlNetModel)
    assert torch.equal(cn.conv_in.weight, fm.unet.conv_in.weight)
    assert torch.equal(cn.down_blocks[0].resnets[0].conv1.weight, fm.unet.down_blocks[0].resnets[0].conv1.weight)
    tokens = torch.randn(2, 17, 32)
    hint = cn.controlnet_cond_embedding(tokens)
    assert hint.shape == (2, fm.unet.config.block_out_channels[0], 16, 16)
    assert torch.count_nonzero(hint) == 0  # zero-initialised output conv
    # the hint enters after conv_in: a nonzero hint changes the ControlNet's (pre-zero-conv) features
    feats = {}
    cn.down_blocks[0].register_forward_hook(lambda m, i, o: feats.setdefault("h", []).append(o[0].clone()))
    x, ctx = torch.randn(2, 4, 16, 16), fm.text_tokens(["a", "b"])
    cn(x, 10, ctx, controlnet_cond=tokens)
    torch.nn.init.normal_(cn.controlnet_cond_embedding.zero_conv.weight, std=0.1)
    cn(x, 10, ctx, controlnet_cond=tokens)
    assert not torch.allclose(feats["h"][0], feats["h"][1])


def test_eps_loss_trains_controlnet_encoder_and_semantic_head(model):
    maps, lat = _batch()
    loss = model(maps, lat, None, torch.Generator().manual_seed(0))
    loss.backward()

    def grad(mod):
        return sum(float(p.grad.abs().sum()) for p in mod.parameters() if p.grad is not None)

    assert grad(model.conditioner.semantic) > 0 and grad(model.conditioner.encoder) > 0
    assert grad(model.controlnet.controlnet_down_blocks) > 0
    assert all(p.grad is None for p in model.unet.parameters())  # frozen
    assert not any(k.startswith("unet") for k in model.state_dict())  # checkpoints carry only the trainable parts


def test_cfg_masking_swaps_the_context_for_the_empty_prompt(fm, model):
    maps, lat = _batch()
    model.cfg_mask_prob = 1.0
    a = model(maps, lat, None, torch.Generator().manual_seed(1))
    with torch.no_grad():
        for p in model.conditioner.semantic.parameters():
            p.add_(torch.randn_like(p))
    b = model(maps, lat, None, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)  # the semantic output is never used when every sample is masked
    model.cfg_mask_prob = 0.0
    c = model(maps, lat, None, torch.Generator().manual_seed(1))
    assert not torch.equal(b, c)
    assert torch.allclose(model.conditioner.empty_context, fm.empty_tokens(1))


def test_residual_branch_starts_neutral_and_semantic_loss_is_added(fm, model):
    cond = model.conditioner
    ref = cond.with_residual()
    assert ref.config.residual and torch.count_nonzero(ref.residual_conv.weight) == 0
    tokens = torch.randn(2, 17, 32)
    ctx, main = ref.context(tokens)
    assert torch.allclose(ctx, cond.context(tokens)[0]) and torch.allclose(main, ctx)
    for p in ref.residual_head.parameters():
        assert p.requires_grad
    model.conditioner = ref
    model.semantic_weight = 0.1
    maps, lat = _batch(2)
    target = fm.text_tokens(["a red ball", "two cars"])
    total = model(maps, lat, target, torch.Generator().manual_seed(3))
    sem = model.last_losses["semantic"]
    _, _, main = ref(maps)
    assert torch.allclose(sem, torch.mean((main - target) ** 2))
    assert torch.allclose(total, model.last_losses["diffusion"] + 0.1 * sem)


def test_pipeline_runs_cfg_in_one_batch_with_the_control_in_both_halves(fm, model):
    pipe = pipeline_from_model(fm, model.conditioner, model.controlnet)
    calls = {"unet": [], "cn": []}
    pipe.unet.register_forward_hook(lambda m, a, kw, o: calls["unet"].append(kw["encoder_hidden_states"].clone()),
                                    with_kwargs=True)
    h = pipe.controlnet.register_forward_hook(
        lambda m, a, kw, o: calls["cn"].append((kw["encoder_hidden_states"].clone(), kw["controlnet_cond"].clone())),
        with_kwargs=True)
    maps, _ = _batch(2)
    out = pipe(maps, num_inference_steps=3, guidance_scale=4.0, generator=seeded_generators(0, 2)).images
    assert out.shape == (2, 3, 32, 32) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert len(calls["unet"]) == 3 and len(calls["cn"]) == 3  # one batched call per step
    ctx = calls["unet"][0]
    assert ctx.shape[0] == 4
    empty = model.conditioner.empty_context.expand(2, -1, -1)
    assert torch.allclose(ctx[:2], empty) and not torch.allclose(ctx[2:], empty)
    cn_ctx, tokens = calls["cn"][0]
    assert torch.allclose(cn_ctx, ctx) and torch.equal(tokens[:2], tokens[2:])  # fMRI control in both halves
    calls["unet"].clear()
    pipe(maps, num_inference_steps=2, guidance_scale=1.0, generator=seeded_generators(0, 2))
    assert calls["unet"][0].shape[0] == 2  # no unconditional pass without guidance
    calls["cn"].clear()
    pipe(maps, num_inference_steps=2, control_scale=0.0, generator=seeded_generators(0, 2))
    assert calls["cn"] == []  # control scale 0: the ControlNet is skipped
    h.remove()


def test_pipeline_is_seeded_and_supports_ddim_and_dpm(fm, model):
    pipe = pipeline_from_model(fm, model.conditioner, model.controlnet)
    maps, _ = _batch(2)
    for kind in ("ddim", "dpm++"):
        pipe.use_scheduler(kind)
        a = pipe(maps, num_inference_steps=3, generator=seeded_generators(5, 2)).images
        b = pipe(maps, num_inference_steps=3, generator=seeded_generators(5, 2)).images
        c = pipe(maps, num_inference_steps=3, generator=seeded_generators(6, 2)).images
        assert torch.equal(a, b) and not torch.equal(a, c)
    # a sample's noise does not depend on the batch it is drawn in
    one = pipe(maps[1:], num_inference_steps=3, generator=seeded_generators(5, 1, offset=1)).images
    assert torch.allclose(one[0], a[1], atol=1e-5)
    with pytest.raises(ValueError, match="ddim"):
        make_scheduler("euler", fm.scheduler_config)


def test_pipeline_save_and_load_round_trip(fm, model, tmp_path):
    model.conditioner = model.conditioner.with_residual()
    with torch.no_grad():  # make every component matter
        for p in model.controlnet.controlnet_cond_embedding.zero_conv.parameters():
            p.normal_(std=0.1)
        model.conditioner.residual_conv.weight.normal_(std=0.1)
    pipe = pipeline_from_model(fm, model.conditioner, model.controlnet, "dpm++")
    pipe.save_pretrained(tmp_path / "pipe")
    again = NeuroPictorPipeline.from_pretrained(tmp_path / "pipe")
    again.set_progress_bar_config(disable=True)
    assert isinstance(again.controlnet, FMRIControlNetModel) and isinstance(again.conditioner, FMRIConditioner)
    assert again.conditioner.config.residual and type(again.scheduler).__name__ == "DPMSolverMultistepScheduler"
    maps, _ = _batch(2)
    a = pipe(maps, num_inference_steps=2, generator=seeded_generators(0, 2)).images
    b = again(maps, num_inference_steps=2, generator=seeded_generators(0, 2)).images
    assert torch.allclose(a, b, atol=1e-6)
    assert again(maps, num_inference_steps=1, output_type="pil").images[0].size == (32, 32)


def test_full_profile_layout_shapes():
    """SD 2.1 base layout: 256x256 maps, patch 16 -> 257 fMRI tokens, text 77 tokens, 4x64x64 latents,
    512 px images (tiny widths)."""
    from diffusers import AutoencoderKL

    from neurorecon.foundation.tiny import sd_scheduler_config, tiny_unet

    torch.manual_seed(0)
    unet = tiny_unet(64, cross_attention_dim=32, channels=(32, 32, 32, 32), head_dim=8).eval().requires_grad_(False)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=8, latent_channels=4)
    enc = FMRIEncoder(map_size=256, patch=16, width=32, depth=1, heads=2)
    assert enc.num_tokens == 257
    cond = FMRIConditioner.from_encoder(enc, text_len=77, text_dim=32, semantic_mid=128,
                                        empty_context=torch.randn(1, 77, 32))
    cn = FMRIControlNetModel.from_unet_with_fmri(unet, 257, 32, latent_size=64)
    assert cn.controlnet_cond_embedding.tokens[0].out_channels == 514  # 257 -> 514 -> 320 (here 32) in the paper
    assert cn.controlnet_cond_embedding.proj.out_features == 64 * 64
    tokens, ctx, main = cond(torch.randn(1, 256, 256))
    assert tokens.shape == (1, 257, 32) and ctx.shape == (1, 77, 32)
    pipe = NeuroPictorPipeline(vae=vae, unet=unet, controlnet=cn, conditioner=cond,
                               scheduler=make_scheduler("ddim", sd_scheduler_config()))
    pipe.set_progress_bar_config(disable=True)
    lat = pipe(np.zeros((1, 256, 256), np.float32), num_inference_steps=1, output_type="latent").images
    assert lat.shape == (1, 4, 64, 64)
    img = pipe(np.zeros((1, 256, 256), np.float32), num_inference_steps=1).images
    assert img.shape == (1, 3, 512, 512)


def test_derangement_has_no_fixed_point():
    for n in (2, 5, 100):
        p = derangement(n, 0)
        assert sorted(p) == list(range(n)) and not np.any(p == np.arange(n))


def test_gradient_checkpointing_gives_the_same_training(fm):
    from neurorecon.training import ArrayBatches, fit

    g = np.random.default_rng(0)
    data = ArrayBatches(maps=g.normal(size=(8, 32, 32)).astype(np.float32),
                        latents=g.normal(size=(8, 4, 16, 16)).astype(np.float32))
    runs = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        m = build_neuropictor(fm, FMRIEncoder(map_size=32, patch=8, width=32, depth=1, heads=2), semantic_mid=8)
        res = fit(m, lambda mm, b, gen: mm(b["maps"], b["latents"], None, gen), data, steps=2, batch_size=4, lr=1e-3,
                  progress=False, gradient_checkpointing=ckpt)
        runs.append([v for _, v in res.losses])
        assert m.controlnet.is_gradient_checkpointing == ckpt and m.conditioner.encoder.gradient_checkpointing == ckpt
    fm.unet.disable_gradient_checkpointing()
    assert np.allclose(runs[0], runs[1], atol=1e-6)


def test_semantic_target_final_is_the_last_text_layer_as_the_official_code(fm):
    """The official semantic-loss target (its ``encode_text_final``): token + position embeddings, every layer of
    the text transformer, ``ln_final``; the conditioning context stops one layer earlier (SD 2.x)."""
    clip, tok = fm.extras["clip_text"], fm.extras["clip_tokenizer"]
    texts = ["a red ball on the grass", "two cars"]
    with torch.no_grad():
        ids = tok(texts)
        x = clip.token_embedding(ids) + clip.positional_embedding
        for block in clip.transformer.resblocks:  # batch-first open_clip blocks
            x = block(x, attn_mask=clip.attn_mask)
        official = clip.ln_final(x)
    final, context = fm.text_tokens(texts, final=True), fm.text_tokens(texts)
    assert final.shape == context.shape == official.shape
    torch.testing.assert_close(final, official.float(), rtol=1e-5, atol=1e-6)
    assert (final - context).abs().max() > 1e-3  # a different layer, not the context again


def test_refine_stage_rejects_an_unknown_semantic_target(fm):
    from neurorecon.config import load_config
    from neurorecon.errors import ConfigError
    from neurorecon.neuropictor.stage import RefineConfig, run_refine_stage

    cfg = load_config(RefineConfig, "smoke", overrides={"semantic_target": "penultimate"})
    with pytest.raises(ConfigError, match="semantic_target must be 'context' or 'final'"):
        run_refine_stage(cfg, foundation=fm)
    assert load_config(RefineConfig, "full").semantic_target == "final"  # the official target in the paper's recipe
