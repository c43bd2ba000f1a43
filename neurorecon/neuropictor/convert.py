"""Key mapping from NeuroPictor's released checkpoints (the official PyTorch-Lightning code) to our modules.

Two released files are read:

- a fMRI-to-image checkpoint (``ckpt/NSD/finetune_single_sub/subNN/epoch_015.pth``, ``pretrain_multi_sub/...``):
  the whole Lightning model's ``state_dict``. Kept: ``fmri_encoder.transformer.*`` (the calibrated encoder,
  trained with the rest), ``cond_stage.*`` (the semantic head ``channel_mapper``/``dim_mapper``/``norm`` and its
  parallel branch ``extra_clip``/``extra_clip_out``), ``control_model.*`` (the ControlNet in the ldm layout,
  converted by diffusers' own ldm→diffusers ControlNet conversion) and ``control_model.fmri_mapper.*`` (the fMRI
  hint mapper). Named and skipped: :data:`SKIPPED` (frozen UNet/VAE/text tower, noise-schedule buffers, the
  metric networks, the ControlNet's never-called image-hint stack, the autoencoder's unused bottleneck).
- the UK Biobank autoencoder (``ckpt/fMRI2fMRI_UKB/checkpoint_120000.pth``): ``{"model": state_dict, ...}`` with
  ``transformer.*`` keys (or ``module.transformer.*`` from DDP), encoder and decoder; its YAML
  (``fMRI_AutoEncoder.yaml``) gives the head count, which no tensor shape reveals.

Every mapping is strict: each kept key must land in exactly one target parameter or buffer, each target must be
filled, shapes must agree; :class:`CheckpointMismatchError` lists everything that does not fit at once. Files are
read with ``torch.load(weights_only=True)``; one that needs full unpickling is refused unless ``allow_pickle``.
"""

import math
import pickle
import re
from pathlib import Path

import torch

from ..errors import DataError, NeuroreconError

__all__ = ["SKIPPED", "CheckpointMismatchError", "UnsafeCheckpointError", "load_checkpoint", "official_state",
           "classify_keys", "encoder_shape", "encoder_state", "autoencoder_state", "conditioner_state",
           "hint_mapper_state", "controlnet_state", "fill_strict", "read_encoder_yaml"]

#: (key prefix, what it is) of every released key we do not import.
SKIPPED = (
    ("model.diffusion_model.", "the frozen SD 2.1 UNet (the foundation's own UNet is used)"),
    ("first_stage_model.", "the frozen VAE (the foundation's)"),
    ("cond_stage_model.", "the frozen OpenCLIP ViT-H/14 text tower (the foundation's)"),
    ("model_ema.", "an EMA copy of the UNet (off in the released recipe)"),
    ("loss_fn_alex.", "LPIPS metric network of validation"),
    ("eff_model.", "EfficientNet-B1 metric network of validation"),
    ("inception_model.", "Inception-v3 metric network of validation"),
    ("control_model.input_hint_block.", "the ControlNet's image-hint conv stack: built but never called "
                                        "(the fMRI hint mapper replaces it)"),
    ("fmri_encoder.transformer.pred.", "the autoencoder's CLS bottleneck (unused downstream)"),
    ("fmri_encoder.transformer.mask_token", "the autoencoder decoder's mask token (unused downstream)"),
    ("fmri_encoder.transformer.decoder_", "the autoencoder's decoder (unused downstream)"),
)
#: Noise-schedule buffers of ldm's DDPM (recomputed by the foundation's scheduler).
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "lvlb_weights", "scale_factor")

ENCODER = "fmri_encoder.transformer."
COND = "cond_stage."
CONTROL = "control_model."
HINT = "control_model.fmri_mapper."


class CheckpointMismatchError(NeuroreconError):
    """A released checkpoint does not fit the target modules (lists every key and shape that does not fit)."""

    def __init__(self, source, problems):
        self.problems = list(problems)
        super().__init__(f"{source}: does not fit ({len(self.problems)} problem(s)):\n  " + "\n  ".join(self.problems))


class UnsafeCheckpointError(NeuroreconError):
    """A checkpoint holds more than tensors and containers, and full unpickling was not allowed."""


def load_checkpoint(path, allow_pickle=False):
    """Read a ``.pth`` with ``torch.load(weights_only=True)`` (tensors, numbers, strings and containers only).

    Parameters
    ----------
    path : str or Path
    allow_pickle : bool
        Unpickle the file fully if the safe load refuses it. A pickle can run arbitrary code: only for files
        you trust (the CLI's ``--trust-pickle``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "a PyTorch checkpoint (.pth)", "no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not allow_pickle:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UnsafeCheckpointError(
                f"{path}: holds more than tensors, so torch.load(weights_only=True) refuses it ({first}). "
                "Unpickling it fully can run arbitrary code; if you trust the file, re-run with --trust-pickle "
                "(Python: allow_pickle=True).") from err
    except Exception as err:  # noqa: BLE001  (zip/pickle/format errors of every kind)
        raise DataError(path, "a PyTorch checkpoint readable by torch.load", f"{type(err).__name__}: {err}") from err
    return torch.load(path, map_location="cpu", weights_only=False)


def official_state(obj, path):
    """The tensor ``state_dict`` inside a loaded checkpoint (bare, ``state_dict`` or ``model`` entry), with a
    DDP ``module.`` prefix removed."""
    if isinstance(obj, dict) and not any(torch.is_tensor(v) for v in obj.values()):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise DataError(path, "a state_dict of tensors (bare, or under 'state_dict' or 'model')",
                        f"a {type(obj).__name__}" + (f" with keys {sorted(obj)[:8]}" if isinstance(obj, dict) else ""))
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def classify_keys(state):
    """Split a released fMRI-to-image state into ``(kept, skipped, unknown)``: kept keys start with one of the
    imported prefixes, skipped ones are named in :data:`SKIPPED`/:data:`SCHEDULE_BUFFERS` (``{key: reason}``),
    unknown ones are neither (an error for the importer)."""
    kept, skipped, unknown = [], {}, []
    for key in state:
        reason = next((why for prefix, why in SKIPPED if key.startswith(prefix)), None)
        if reason is None and key in SCHEDULE_BUFFERS:
            reason = "a noise-schedule buffer (the foundation's scheduler recomputes it)"
        if reason is not None:
            skipped[key] = reason
        elif key.startswith((ENCODER, COND, CONTROL)):
            kept.append(key)
        else:
            unknown.append(key)
    return kept, skipped, unknown


def read_encoder_yaml(path):
    """Shape of the UK Biobank autoencoder from its YAML (``Data.patch_size``, ``Data.image_size``,
    ``Model.embed_dim``, ``Model.num_heads``, ``Model.encoder_depth``, ...) as a flat dict."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "the encoder's YAML (fMRI_AutoEncoder.yaml)", "no such file")
    try:
        cfg = yaml.safe_load(path.read_text())
        data, model = cfg["Data"], cfg["Model"]
        size = data["image_size"]
        out = dict(patch=int(data["patch_size"]), map_size=size if isinstance(size, int) else list(size),
                   width=int(model["embed_dim"]), heads=int(model["num_heads"]), depth=int(model["encoder_depth"]),
                   in_chans=int(model.get("in_chans", 1)))
        for ours, theirs in (("decoder_width", "decoder_embed_dim"), ("decoder_depth", "decoder_depth")):
            if theirs in model:
                out[ours] = int(model[theirs])
        return out
    except (KeyError, TypeError, ValueError, AttributeError, yaml.YAMLError) as err:
        raise DataError(path, "a YAML with Data.patch_size, Data.image_size, Model.embed_dim, Model.num_heads, "
                              "Model.encoder_depth", f"{type(err).__name__}: {err}") from err


def _count(state, prefix):
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in state for m in [pat.match(k)] if m})


def encoder_shape(state, prefix, heads=None, yaml_shape=None, source="checkpoint"):
    """Our :class:`~neurorecon.encoding.FMRIEncoder` arguments from the released tensors' shapes (``heads`` from
    the argument or the YAML: shapes do not reveal it); disagreements with the YAML are errors."""
    need = [prefix + k for k in ("patch_embed.proj.weight", "cls_token", "pos_embed", "norm.weight",
                                 "blocks.0.mlp.fc1.weight")]
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointMismatchError(source, [f"missing encoder key {k}" for k in missing])
    w = state[prefix + "patch_embed.proj.weight"]
    width, in_chans, patch = w.shape[0], w.shape[1], w.shape[-1]
    n = state[prefix + "pos_embed"].shape[1] - 1
    grid = math.isqrt(n)
    problems = []
    if in_chans != 1:
        problems.append(f"{prefix}patch_embed.proj.weight: {in_chans} input channels, flat maps have 1")
    if grid * grid != n:
        problems.append(f"{prefix}pos_embed: {n} patches is not a square grid")
    shape = dict(map_size=grid * patch, patch=int(patch), width=int(width), depth=_count(state, prefix + "blocks."),
                 mlp_ratio=state[prefix + "blocks.0.mlp.fc1.weight"].shape[0] / width)
    yaml_shape = yaml_shape or {}
    if heads is None:
        heads = yaml_shape.get("heads")
    if heads is None:
        problems.append("the number of attention heads: give the encoder's YAML (--encoder-config "
                        "fMRI_AutoEncoder.yaml) or --encoder-heads")
    elif width % int(heads):
        problems.append(f"{heads} heads do not divide the width {width}")
    for key in ("patch", "width", "depth"):
        if key in yaml_shape and yaml_shape[key] != shape[key]:
            problems.append(f"the YAML says {key} {yaml_shape[key]}, the checkpoint has {shape[key]}")
    size = yaml_shape.get("map_size")
    if size is not None and list(size if isinstance(size, list) else [size, size]) != [shape["map_size"]] * 2:
        problems.append(f"the YAML says image_size {size}, the checkpoint has {shape['map_size']} (square)")
    if problems:
        raise CheckpointMismatchError(source, problems)
    shape["heads"] = int(heads)
    return shape


def _rename(state, mapping, used):
    """``{target: tensor}`` for ``mapping`` = [(source prefix, target prefix)], marking the sources used."""
    out = {}
    for key, value in state.items():
        for src, dst in mapping:
            if key == src or (src.endswith(".") and key.startswith(src)):
                out[dst + key[len(src):]] = value
                used.add(key)
                break
    return out


def encoder_state(state, prefix, used, target_prefix=""):
    """Encoder tensors (patch embedding, CLS, positions, blocks, final norm) renamed to our encoder's keys."""
    t = target_prefix
    return _rename(state, [(prefix + "patch_embed.proj.", t + "patch_embed."), (prefix + "cls_token", t + "cls_token"),
                           (prefix + "pos_embed", t + "pos_embed"), (prefix + "blocks.", t + "blocks."),
                           (prefix + "norm.", t + "norm.")], used)


def autoencoder_state(state, prefix, used):
    """The whole UK Biobank autoencoder renamed to our :class:`~neurorecon.encoding.FMRIAutoencoder`
    (``pred`` → ``bottleneck.0``, ``decoder_embed`` → ``bottleneck.2``, decoder blocks, norm, predictor)."""
    out = encoder_state(state, prefix, used, "encoder.")
    out.update(_rename(state, [(prefix + "pred.", "bottleneck.0."), (prefix + "decoder_embed.", "bottleneck.2."),
                               (prefix + "mask_token", "mask_token"), (prefix + "decoder_pos_embed", "dec_pos"),
                               (prefix + "decoder_blocks.", "dec_blocks."), (prefix + "decoder_norm.", "dec_norm."),
                               (prefix + "decoder_pred.", "dec_pred.")], used))
    return out


def conditioner_state(state, used):
    """``fmri_encoder.transformer.*`` and ``cond_stage.*`` renamed to our :class:`FMRIConditioner` (with its
    parallel branch: the released semantic model always has one)."""
    out = encoder_state(state, ENCODER, used, "encoder.")
    c = COND
    out.update(_rename(state, [(c + "channel_mapper.0.", "semantic.tokens.0."), (c + "channel_mapper.1.",
                                                                                  "semantic.tokens.1."),
                               (c + "dim_mapper.", "semantic.proj."), (c + "norm.", "semantic.norm."),
                               (c + "extra_clip.0.", "residual_head.tokens.0."),
                               (c + "extra_clip.1.", "residual_head.tokens.1."),
                               (c + "extra_clip.2.", "residual_head.proj."),
                               (c + "extra_clip.3.", "residual_head.norm."),
                               (c + "extra_clip_out.", "residual_conv.")], used))
    return out


def hint_mapper_state(state, used):
    """``control_model.fmri_mapper.*`` renamed to our :class:`FMRIHintMapper` inside the ControlNet."""
    h, t = HINT, "controlnet_cond_embedding."
    return _rename(state, [(h + "channel_mapper.0.", t + "tokens.0."), (h + "channel_mapper.1.", t + "tokens.1."),
                           (h + "dim_mapper.0.", t + "proj."), (h + "out.", t + "zero_conv.")], used)


def controlnet_state(state, config, used):
    """The ControlNet body (``control_model.*`` without the hint stacks) through diffusers' ldm→diffusers
    ControlNet conversion; ``config`` is the target ControlNet's config (``layers_per_block`` is read)."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    body = {k[len(CONTROL):]: v for k, v in state.items() if k.startswith(CONTROL) and not k.startswith(HINT)
            and not k.startswith(CONTROL + "input_hint_block.")}
    if "time_embed.0.weight" not in body:
        raise CheckpointMismatchError("control_model", ["no control_model.time_embed.0.weight: not a ControlNet"])
    converted = convert_controlnet_checkpoint(body, dict(config))
    converted = {k: v for k, v in converted.items() if v is not None and not k.startswith("controlnet_cond_embedding")}
    taken = {id(v) for v in converted.values()}
    used.update(CONTROL + k for k, v in body.items() if id(v) in taken)
    return converted


def fill_strict(model, state, what):
    """Problems (list of str) of loading ``state`` into ``model``: targets not filled, keys not taken, shape
    disagreements. Loads it (cast to the model's dtypes) only when there are none."""
    target = model.state_dict()
    problems = [f"{what}: {k} {tuple(target[k].shape)} is not filled by the checkpoint" for k in sorted(target)
                if k not in state]
    problems += [f"{what}: {k} has no place in our model" for k in sorted(state) if k not in target]
    problems += [f"{what}: {k}: checkpoint {tuple(state[k].shape)}, model {tuple(target[k].shape)}"
                 for k in sorted(set(state) & set(target)) if tuple(state[k].shape) != tuple(target[k].shape)]
    if not problems:
        model.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()}, strict=True)
    return problems
