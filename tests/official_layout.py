"""Tiny synthetic checkpoints in NeuroPictor's released key layout, and independent forwards of the official
modules' semantics (written from the official code's structure, in float64 with torch.nn.functional only).

Nothing here imports the converter: the layouts are spelled out key by key.
"""

import numpy as np
import torch
import torch.nn.functional as F


def mae_sincos(dim, gh, gw):
    """MAE's 2-D sin-cos table with a zero CLS row: grid = meshgrid(w, h), first half from the first plane."""
    grid = np.stack(np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32)), 0)

    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], 1)

    emb = np.concatenate([one(dim // 2, grid[0]), one(dim // 2, grid[1])], 1)
    return torch.from_numpy(np.concatenate([np.zeros((1, dim)), emb], 0)).float()[None]


class Gen:
    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, *shape, scale=0.1, offset=0.0):
        return offset + scale * torch.randn(*shape, generator=self.g)


def _vit_blocks(g, s, prefix, width, depth):
    for i in range(depth):
        b = f"{prefix}{i}."
        s[b + "norm1.weight"], s[b + "norm1.bias"] = g(width, offset=1.0), g(width)
        s[b + "attn.qkv.weight"], s[b + "attn.qkv.bias"] = g(3 * width, width, scale=0.2), g(3 * width)
        s[b + "attn.proj.weight"], s[b + "attn.proj.bias"] = g(width, width, scale=0.2), g(width)
        s[b + "norm2.weight"], s[b + "norm2.bias"] = g(width, offset=1.0), g(width)
        s[b + "mlp.fc1.weight"], s[b + "mlp.fc1.bias"] = g(4 * width, width, scale=0.2), g(4 * width)
        s[b + "mlp.fc2.weight"], s[b + "mlp.fc2.bias"] = g(width, 4 * width, scale=0.2), g(width)


def encoder_keys(g, prefix, width, depth, patch, grid, decoder_width=None, decoder_depth=0):
    """``fmri_encoder.transformer.*`` / ``transformer.*``: Neural_fMRI2fMRI's fMRI_Autoencoder."""
    s = {prefix + "patch_embed.proj.weight": g(width, 1, patch, patch, scale=0.3),
         prefix + "patch_embed.proj.bias": g(width), prefix + "cls_token": g(1, 1, width),
         prefix + "pos_embed": mae_sincos(width, grid, grid)}
    _vit_blocks(g, s, prefix + "blocks.", width, depth)
    s[prefix + "norm.weight"], s[prefix + "norm.bias"] = g(width, offset=1.0), g(width)
    s[prefix + "pred.weight"], s[prefix + "pred.bias"] = g(2 * width, width, scale=0.2), g(2 * width)
    dw = decoder_width or width
    s[prefix + "mask_token"] = g(1, 1, dw)
    if decoder_depth:
        s[prefix + "decoder_embed.weight"], s[prefix + "decoder_embed.bias"] = g(dw, 2 * width, scale=0.2), g(dw)
        s[prefix + "decoder_pos_embed"] = mae_sincos(dw, grid, grid)
        _vit_blocks(g, s, prefix + "decoder_blocks.", dw, decoder_depth)
        s[prefix + "decoder_norm.weight"], s[prefix + "decoder_norm.bias"] = g(dw, offset=1.0), g(dw)
        s[prefix + "decoder_pred.weight"] = g(patch * patch, dw, scale=0.2)
        s[prefix + "decoder_pred.bias"] = g(patch * patch)
    return s


def semantic_keys(g, n_tokens, width, text_len, text_dim):
    """``cond_stage.*``: FMRIToSemanticModel (channel_mapper, dim_mapper, norm, extra_clip, extra_clip_out)."""
    half = n_tokens // 2
    s = {}
    for p in ("cond_stage.channel_mapper.", "cond_stage.extra_clip."):
        s[p + "0.weight"], s[p + "0.bias"] = g(half, n_tokens, 1, scale=0.2), g(half)
        s[p + "1.weight"], s[p + "1.bias"] = g(text_len, half, 1, scale=0.2), g(text_len)
    s["cond_stage.dim_mapper.weight"], s["cond_stage.dim_mapper.bias"] = g(text_dim, width, scale=0.2), g(text_dim)
    s["cond_stage.norm.weight"], s["cond_stage.norm.bias"] = g(text_dim, offset=1.0), g(text_dim)
    s["cond_stage.extra_clip.2.weight"], s["cond_stage.extra_clip.2.bias"] = g(text_dim, width, scale=0.2), g(text_dim)
    s["cond_stage.extra_clip.3.weight"], s["cond_stage.extra_clip.3.bias"] = g(text_dim, offset=1.0), g(text_dim)
    s["cond_stage.extra_clip_out.weight"], s["cond_stage.extra_clip_out.bias"] = g(text_len, text_len, 3), g(text_len)
    return s


def hint_keys(g, n_tokens, width, channels, size):
    """``control_model.fmri_mapper.*``: FMRIToControlModel."""
    p = "control_model.fmri_mapper."
    return {p + "channel_mapper.0.weight": g(2 * n_tokens, n_tokens, 1, scale=0.2),
            p + "channel_mapper.0.bias": g(2 * n_tokens),
            p + "channel_mapper.1.weight": g(channels, 2 * n_tokens, 1, scale=0.2), p + "channel_mapper.1.bias": g(channels),
            p + "dim_mapper.0.weight": g(size * size, width, scale=0.2), p + "dim_mapper.0.bias": g(size * size),
            p + "out.weight": g(channels, channels, 3, scale=0.2), p + "out.bias": g(channels)}


def _res(g, s, p, cin, cout, temb):
    s[p + "in_layers.0.weight"], s[p + "in_layers.0.bias"] = g(cin, offset=1.0), g(cin)
    s[p + "in_layers.2.weight"], s[p + "in_layers.2.bias"] = g(cout, cin, 3, 3), g(cout)
    s[p + "emb_layers.1.weight"], s[p + "emb_layers.1.bias"] = g(cout, temb), g(cout)
    s[p + "out_layers.0.weight"], s[p + "out_layers.0.bias"] = g(cout, offset=1.0), g(cout)
    s[p + "out_layers.3.weight"], s[p + "out_layers.3.bias"] = g(cout, cout, 3, 3), g(cout)
    if cin != cout:
        s[p + "skip_connection.weight"], s[p + "skip_connection.bias"] = g(cout, cin, 1, 1), g(cout)


def _spatial(g, s, p, ch, ctx, linear):
    s[p + "norm.weight"], s[p + "norm.bias"] = g(ch, offset=1.0), g(ch)
    proj = (ch, ch) if linear else (ch, ch, 1, 1)
    s[p + "proj_in.weight"], s[p + "proj_in.bias"] = g(*proj), g(ch)
    t = p + "transformer_blocks.0."
    for a, kv in (("attn1.", ch), ("attn2.", ctx)):
        s[t + a + "to_q.weight"] = g(ch, ch)
        s[t + a + "to_k.weight"], s[t + a + "to_v.weight"] = g(ch, kv), g(ch, kv)
        s[t + a + "to_out.0.weight"], s[t + a + "to_out.0.bias"] = g(ch, ch), g(ch)
    s[t + "ff.net.0.proj.weight"], s[t + "ff.net.0.proj.bias"] = g(8 * ch, ch), g(8 * ch)
    s[t + "ff.net.2.weight"], s[t + "ff.net.2.bias"] = g(ch, 4 * ch), g(ch)
    for n in ("norm1.", "norm2.", "norm3."):
        s[t + n + "weight"], s[t + n + "bias"] = g(ch, offset=1.0), g(ch)
    s[p + "proj_out.weight"], s[p + "proj_out.bias"] = g(*proj), g(ch)


def ldm_controlnet_keys(g, unet_config, hint_channels=3):
    """``control_model.*`` of an ldm ControlNet (cldm) shaped like a diffusers UNet config, with the image-hint
    stack ``input_hint_block`` the released model builds but never calls."""
    c = unet_config
    chans, lpb, ctx = list(c["block_out_channels"]), c["layers_per_block"], c["cross_attention_dim"]
    linear = bool(c.get("use_linear_projection"))
    attn = [t.startswith("CrossAttn") for t in c["down_block_types"]]
    c0, temb = chans[0], 4 * chans[0]
    s = {"time_embed.0.weight": g(temb, c0), "time_embed.0.bias": g(temb), "time_embed.2.weight": g(temb, temb),
         "time_embed.2.bias": g(temb), "input_blocks.0.0.weight": g(c0, c["in_channels"], 3, 3),
         "input_blocks.0.0.bias": g(c0), "zero_convs.0.0.weight": g(c0, c0, 1, 1), "zero_convs.0.0.bias": g(c0)}
    idx, ch = 1, c0
    for level, cout in enumerate(chans):
        for _ in range(lpb):
            _res(g, s, f"input_blocks.{idx}.0.", ch, cout, temb)
            if attn[level]:
                _spatial(g, s, f"input_blocks.{idx}.1.", cout, ctx, linear)
            ch = cout
            s[f"zero_convs.{idx}.0.weight"], s[f"zero_convs.{idx}.0.bias"] = g(ch, ch, 1, 1), g(ch)
            idx += 1
        if level != len(chans) - 1:
            s[f"input_blocks.{idx}.0.op.weight"], s[f"input_blocks.{idx}.0.op.bias"] = g(ch, ch, 3, 3), g(ch)
            s[f"zero_convs.{idx}.0.weight"], s[f"zero_convs.{idx}.0.bias"] = g(ch, ch, 1, 1), g(ch)
            idx += 1
    _res(g, s, "middle_block.0.", ch, ch, temb)
    _spatial(g, s, "middle_block.1.", ch, ctx, linear)
    _res(g, s, "middle_block.2.", ch, ch, temb)
    s["middle_block_out.0.weight"], s["middle_block_out.0.bias"] = g(ch, ch, 1, 1), g(ch)
    hint = [(16, hint_channels), (16, 16), (32, 16), (32, 32), (96, 32), (96, 96), (256, 96), (c0, 256)]
    for k, (o, i) in enumerate(hint):
        s[f"input_hint_block.{2 * k}.weight"], s[f"input_hint_block.{2 * k}.bias"] = g(o, i, 3, 3), g(o)
    return {"control_model." + k: v for k, v in s.items()}


def junk_keys(g):
    """One key of each frozen or unused part the released fMRI-to-image checkpoint also holds."""
    return {"first_stage_model.encoder.conv_in.weight":
            g(8, 3, 3, 3), "cond_stage_model.model.token_embedding.weight": g(10, 8), "betas": g(1000),
            "alphas_cumprod": g(1000), "alphas_cumprod_prev": g(1000), "posterior_mean_coef1": g(1000),
            "scale_factor": torch.tensor(0.18215), "logvar": g(1000), "loss_fn_alex.net.slice1.0.weight":
            g(4, 3, 3, 3), "eff_model.features.0.0.weight": g(4, 3, 3, 3),
            "inception_model.Conv2d_1a_3x3.conv.weight": g(4, 3, 3, 3)}


# --- independent forwards (float64) -----------------------------------------------------------------------------

def _ln(x, s, p, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], s[p + "weight"], s[p + "bias"], eps)


def _lin(x, s, p):
    return F.linear(x, s[p + "weight"], s[p + "bias"])


def _conv1(x, s, p, pad=0):
    return F.conv1d(x, s[p + "weight"], s[p + "bias"], padding=pad)


def _vit_block(x, s, p, heads):
    n, t, w = x.shape
    qkv = _lin(_ln(x, s, p + "norm1."), s, p + "attn.qkv.").reshape(n, t, 3, heads, w // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    att = torch.softmax(q @ k.transpose(-2, -1) * (w // heads) ** -0.5, -1)
    x = x + _lin((att @ v).transpose(1, 2).reshape(n, t, w), s, p + "attn.proj.")
    h = _lin(F.gelu(_lin(_ln(x, s, p + "norm2."), s, p + "mlp.fc1.")), s, p + "mlp.fc2.")
    return x + h


def _d(state):
    return {k: v.double() for k, v in state.items()}


def official_tokens(state, prefix, maps, heads):
    """fMRI_Autoencoder.forward_encoder_wo_pred: (n, 1, H, W) maps → (n, 1 + P, W) tokens."""
    s, maps = _d(state), maps.double()
    w = s[prefix + "patch_embed.proj.weight"]
    x = F.conv2d(maps[:, None], w, s[prefix + "patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    pos = s[prefix + "pos_embed"]
    x = x + pos[:, 1:]
    cls = (s[prefix + "cls_token"] + pos[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], 1)
    depth = len({k[len(prefix + "blocks."):].split(".")[0] for k in s if k.startswith(prefix + "blocks.")})
    for i in range(depth):
        x = _vit_block(x, s, f"{prefix}blocks.{i}.", heads)
    return _ln(x, s, prefix + "norm.")


def official_reconstruction(state, prefix, maps, heads, patch):
    """fMRI_Autoencoder.forward's reconstruction: CLS → pred → decoder → unpatchify to (n, H, W)."""
    s = _d(state)
    x = official_tokens(state, prefix, maps, heads)
    z = _lin(_lin(x[:, :1], s, prefix + "pred."), s, prefix + "decoder_embed.")
    n, t = x.shape[0], x.shape[1] - 1
    z = torch.cat([z, s[prefix + "mask_token"].expand(n, t, -1)], 1) + s[prefix + "decoder_pos_embed"]
    depth = len({k.split("decoder_blocks.")[1].split(".")[0] for k in s if "decoder_blocks." in k})
    for i in range(depth):
        z = _vit_block(z, s, f"{prefix}decoder_blocks.{i}.", heads)
    out = _lin(_ln(z, s, prefix + "decoder_norm."), s, prefix + "decoder_pred.")[:, 1:]
    g = int(round(t ** 0.5))
    out = out.reshape(n, g, g, patch, patch, 1)
    return torch.einsum("nhwpqc->nchpwq", out).reshape(n, g * patch, g * patch)


def official_semantic(state, tokens):
    """FMRIToSemanticModel.forward: tokens → (out, clip_txt)."""
    s, x = _d(state), tokens.double()
    clip_txt = _ln(_lin(_conv1(_conv1(x, s, "cond_stage.channel_mapper.0."), s, "cond_stage.channel_mapper.1."), s,
                        "cond_stage.dim_mapper."), s, "cond_stage.norm.")
    e = _conv1(_conv1(x, s, "cond_stage.extra_clip.0."), s, "cond_stage.extra_clip.1.")
    e = _ln(_lin(e, s, "cond_stage.extra_clip.2."), s, "cond_stage.extra_clip.3.")
    return clip_txt + _conv1(e, s, "cond_stage.extra_clip_out.", pad=1), clip_txt


def official_hint(state, tokens, channels, size):
    """FMRIToControlModel.forward: tokens → (n, C, size, size)."""
    s, p = _d(state), "control_model.fmri_mapper."
    x = _conv1(_conv1(tokens.double(), s, p + "channel_mapper.0."), s, p + "channel_mapper.1.")
    x = F.silu(_lin(x, s, p + "dim_mapper.0."))
    return _conv1(x, s, p + "out.", pad=1).reshape(-1, channels, size, size)


def ldm_unet_keys(g, unet_config):
    """``model.diffusion_model.*`` of an ldm UNet (openaimodel) shaped like a diffusers UNet config."""
    c = unet_config
    chans, lpb, ctx = list(c["block_out_channels"]), c["layers_per_block"], c["cross_attention_dim"]
    linear = bool(c.get("use_linear_projection"))
    attn = [t.startswith("CrossAttn") for t in c["down_block_types"]]
    c0, temb = chans[0], 4 * chans[0]
    s = {"time_embed.0.weight": g(temb, c0), "time_embed.0.bias": g(temb), "time_embed.2.weight": g(temb, temb),
         "time_embed.2.bias": g(temb), "input_blocks.0.0.weight": g(c0, c["in_channels"], 3, 3),
         "input_blocks.0.0.bias": g(c0)}
    skips, idx, ch = [c0], 1, c0
    for level, cout in enumerate(chans):
        for _ in range(lpb):
            _res(g, s, f"input_blocks.{idx}.0.", ch, cout, temb)
            if attn[level]:
                _spatial(g, s, f"input_blocks.{idx}.1.", cout, ctx, linear)
            ch = cout
            skips.append(ch)
            idx += 1
        if level != len(chans) - 1:
            s[f"input_blocks.{idx}.0.op.weight"], s[f"input_blocks.{idx}.0.op.bias"] = g(ch, ch, 3, 3), g(ch)
            skips.append(ch)
            idx += 1
    _res(g, s, "middle_block.0.", ch, ch, temb)
    _spatial(g, s, "middle_block.1.", ch, ctx, linear)
    _res(g, s, "middle_block.2.", ch, ch, temb)
    idx = 0
    for level in reversed(range(len(chans))):
        cout = chans[level]
        for i in range(lpb + 1):
            _res(g, s, f"output_blocks.{idx}.0.", ch + skips.pop(), cout, temb)
            ch, n = cout, 1
            if attn[level]:
                _spatial(g, s, f"output_blocks.{idx}.1.", ch, ctx, linear)
                n = 2
            if level and i == lpb:
                s[f"output_blocks.{idx}.{n}.conv.weight"], s[f"output_blocks.{idx}.{n}.conv.bias"] = g(ch, ch, 3, 3), g(ch)
            idx += 1
    s["out.0.weight"], s["out.0.bias"] = g(ch, offset=1.0), g(ch)
    s["out.2.weight"], s["out.2.bias"] = g(c["out_channels"], ch, 3, 3), g(c["out_channels"])
    return {"model.diffusion_model." + k: v for k, v in s.items()}
