"""Import NeuroPictor's released checkpoints into our modules (``neurorecon import neuropictor``).

- :func:`import_autoencoder`: the UK Biobank autoencoder (``checkpoint_120000.pth`` + ``fMRI_AutoEncoder.yaml``)
  → :class:`~neurorecon.encoding.FMRIAutoencoder` (``bottleneck_act="none"``: the released bottleneck is two
  linear maps), the starting point of the encoding stage (``init_checkpoint`` in ``configs/encoding.yaml``).
- :func:`import_checkpoint`: a released fMRI-to-image checkpoint (``epoch_015.pth``) → :class:`FMRIConditioner`
  (encoder, semantic head and its parallel branch; ``empty_context`` from the foundation's text tower, as the
  official code computes it from its own) and :class:`FMRIControlNetModel` (ControlNet body + fMRI hint mapper)
  sized to the foundation's UNet.
- :func:`import_neuropictor`: both, written atomically into one folder that :func:`load_pipeline` reads
  (``conditioner/``, ``controlnet/``; with ``full_pipeline`` also ``vae/``, ``unet/``, ``scheduler/`` and
  ``model_index.json``: a complete :class:`NeuroPictorPipeline`), plus ``autoencoder/`` and ``encoder/`` for the
  UK Biobank file and ``import.json`` accounting for every released key.
"""

import json
from pathlib import Path

import torch

from ..artifacts import atomic_dir
from ..encoding.model import FMRIAutoencoder, sincos_2d
from ..errors import DataError
from . import convert as cv
from .controlnet import FMRIControlNetModel
from .heads import FMRIConditioner

__all__ = ["import_autoencoder", "import_checkpoint", "import_neuropictor", "compare_frozen_unet"]


def _positions_note(state, key, width, grid):
    """Whether released positions equal MAE's sin-cos (our :func:`sincos_2d`); the released ones are kept."""
    pe = state.get(key)
    if pe is None:
        return None
    ref = sincos_2d(width, grid, grid)[None]
    return bool(pe.shape == ref.shape and torch.allclose(pe.float(), ref, atol=1e-5))


def _unused(state, keys, used, source):
    left = sorted(k for k in keys if k not in used)
    return [f"{source}: released key {k} {tuple(state[k].shape)} is not taken by any target" for k in left]


def compare_frozen_unet(state, unet, rtol=None, atol=1e-5):
    """Whether the checkpoint's frozen UNet (``model.diffusion_model.*``, through diffusers' ldm→diffusers UNet
    conversion) is the foundation's ``unet``, to the rounding of fp16 weight files or of the foundation's dtype
    (``rtol`` default: the larger of 2e-3 and twice its epsilon, 1.6e-2 for bfloat16): the released model was
    trained around it.

    Returns
    -------
    dict
        ``compared`` (bool), ``equal`` (bool or None), ``reason`` or ``max_abs_diff`` and up to 10 ``differing``
        keys.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    ldm = {k: v for k, v in state.items() if k.startswith("model.diffusion_model.")}
    if not ldm:
        return dict(compared=False, equal=None, reason="the checkpoint holds no model.diffusion_model.* keys")
    target = unet.state_dict()
    try:
        conv = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    except Exception as err:  # noqa: BLE001  (a partial or foreign UNet: any key error of the conversion)
        return dict(compared=False, equal=False, reason=f"its UNet does not convert to the foundation's layout "
                                                        f"({type(err).__name__}: {err})")
    missing = [k for k in target if conv.get(k) is None or tuple(conv[k].shape) != tuple(target[k].shape)]
    if missing:
        return dict(compared=False, equal=False, reason=f"{len(missing)} of the foundation UNet's tensors have no "
                                                        f"counterpart of that shape, e.g. {missing[:3]}")
    worst, differing = 0.0, []
    if rtol is None:
        rtol = max(2e-3, 2 * max(torch.finfo(t.dtype).eps for t in target.values() if t.is_floating_point()))
    for k, t in target.items():
        a, b = conv[k].float(), t.detach().float().cpu()
        d = (a - b).abs()
        worst = max(worst, float(d.max()) if d.numel() else 0.0)
        if bool((d > atol + rtol * b.abs()).any()):
            differing.append(k)
    return dict(compared=True, equal=not differing, max_abs_diff=worst, differing=differing[:10],
                n_differing=len(differing))


def import_autoencoder(path, encoder_config=None, heads=None, allow_pickle=False):
    """The UK Biobank autoencoder as an :class:`FMRIAutoencoder`.

    Returns
    -------
    model : FMRIAutoencoder
    report : dict
        Source, shape, and whether the released positions equal MAE's sin-cos.
    """
    state = cv.official_state(cv.load_checkpoint(path, allow_pickle), path)
    if not all(k.startswith("transformer.") for k in state):
        other = sorted(k for k in state if not k.startswith("transformer."))[:8]
        raise DataError(path, "the UK Biobank autoencoder's keys (transformer.* or module.transformer.*)",
                        f"other keys, e.g. {other}")
    prefix = "transformer."
    yaml_shape = cv.read_encoder_yaml(encoder_config) if encoder_config else None
    shape = cv.encoder_shape(state, prefix, heads, yaml_shape, source=str(path))
    problems = []
    for key in ("pred.weight", "decoder_embed.weight", "decoder_blocks.0.norm1.weight"):
        if prefix + key not in state:
            problems.append(f"{path}: missing {prefix}{key} (the decoder): is this the encoder of an "
                            "fMRI-to-image checkpoint? Give that one as --ckpt")
    if problems:
        raise cv.CheckpointMismatchError(path, problems)
    dec_width = state[prefix + "decoder_embed.weight"].shape[0]
    model = FMRIAutoencoder(**shape, decoder_width=dec_width, decoder_depth=cv._count(state, prefix + "decoder_blocks."),
                            decoder_heads=shape["heads"], bottleneck_mult=state[prefix + "pred.weight"].shape[0]
                            // shape["width"], bottleneck_act="none")
    used = set()
    mapped = cv.autoencoder_state(state, prefix, used)
    problems = cv.fill_strict(model, mapped, "autoencoder") + _unused(state, state, used, str(path))
    if problems:
        raise cv.CheckpointMismatchError(path, problems)
    grid = shape["map_size"] // shape["patch"]
    report = dict(source=str(Path(path).resolve()), bytes=Path(path).stat().st_size, shape=dict(model.config),
                  n_keys=len(state), positions_equal_mae_sincos=_positions_note(state, prefix + "pos_embed",
                                                                                  shape["width"], grid))
    return model.eval(), report


def import_checkpoint(path, fm, heads=None, yaml_shape=None, allow_pickle=False, allow_other_unet=False):
    """A released fMRI-to-image checkpoint as our trainable parts, sized to the foundation ``fm``.

    The checkpoint's frozen UNet is compared with the foundation's (:func:`compare_frozen_unet`): one that differs
    or has another layout is an error unless ``allow_other_unet``; a checkpoint without one is recorded as not
    compared (``frozen_unet`` in the report).

    Returns
    -------
    conditioner : FMRIConditioner (with the parallel branch)
    controlnet : FMRIControlNetModel
    report : dict
        Every released key: imported (per component) or skipped (with the reason).
    """
    state = cv.official_state(cv.load_checkpoint(path, allow_pickle), path)
    kept, skipped, unknown = cv.classify_keys(state)
    problems = [f"unknown released key {k} {tuple(state[k].shape)} (neither imported nor a known frozen/unused "
                "part)" for k in sorted(unknown)]
    shape = cv.encoder_shape(state, cv.ENCODER, heads, yaml_shape, source=str(path))
    need = [cv.COND + "channel_mapper.0.weight", cv.COND + "channel_mapper.1.weight", cv.COND + "dim_mapper.weight"]
    if any(k not in state for k in need):
        raise cv.CheckpointMismatchError(path, problems + [f"missing {k}" for k in need if k not in state])
    mid, text_len = state[need[0]].shape[0], state[need[1]].shape[0]
    text_dim = state[need[2]].shape[0]
    if tuple(fm.text_shape) != (text_len, text_dim):
        problems.append(f"the semantic head makes ({text_len}, {text_dim}) context tokens; the foundation's text "
                        f"tokens are {tuple(fm.text_shape)}")
    used = set()
    conditioner = FMRIConditioner(**shape, text_len=text_len, text_dim=text_dim, semantic_mid=mid, residual=True)
    cond_state = cv.conditioner_state(state, used)
    empty = fm.empty_tokens(1).detach().float().cpu()
    if tuple(empty.shape[1:]) == (text_len, text_dim):
        cond_state["empty_context"] = empty
    problems += cv.fill_strict(conditioner, cond_state, "conditioner")
    controlnet = FMRIControlNetModel.from_unet_with_fmri(fm.unet, conditioner.encoder.num_tokens, shape["width"],
                                                         latent_size=fm.latent_size)
    cn_state = cv.controlnet_state(state, controlnet.config, used)
    cn_state.update(cv.hint_mapper_state(state, used))
    problems += cv.fill_strict(controlnet, cn_state, "controlnet")
    problems += _unused(state, kept, used, str(path))
    unet_check = compare_frozen_unet(state, fm.unet)
    if unet_check["equal"] is False and not allow_other_unet:
        what = unet_check.get("reason") or (f"{unet_check['n_differing']} tensors differ, e.g. "
                                            f"{unet_check['differing'][:3]}; max |diff| {unet_check['max_abs_diff']:.3g}")
        problems.append(f"its frozen UNet is not the foundation's ({what}): the released model was trained around "
                        "SD 2.1 base; point the foundation at it, or pass --allow-other-unet to import anyway")
    if problems:
        raise cv.CheckpointMismatchError(path, problems)
    grid = shape["map_size"] // shape["patch"]
    reasons = {}
    for key, why in skipped.items():
        reasons.setdefault(why, []).append(key)
    report = dict(source=str(Path(path).resolve()), bytes=Path(path).stat().st_size, n_keys=len(state),
                  imported={part: sorted(k for k in kept if k.startswith(p)) for part, p in
                            (("encoder", cv.ENCODER), ("semantic", cv.COND), ("hint_mapper", cv.HINT))},
                  skipped={why: sorted(keys) for why, keys in reasons.items()}, encoder_shape=shape,
                  positions_equal_mae_sincos=_positions_note(state, cv.ENCODER + "pos_embed", shape["width"], grid),
                  frozen_unet=unet_check)
    report["imported"]["controlnet"] = sorted(k for k in kept if k.startswith(cv.CONTROL) and not k.startswith(cv.HINT))
    report["counts"] = dict(imported={k: len(v) for k, v in report["imported"].items()},
                            skipped=sum(len(v) for v in reasons.values()), total=len(state))
    return conditioner.eval(), controlnet.eval(), report


def import_neuropictor(out, ckpt=None, encoder=None, encoder_config=None, fm=None, heads=None, allow_pickle=False,
                       full_pipeline=True, scheduler="ddim", subject=None, allow_other_unet=False):
    """Write the imported models into ``out`` (atomically; see the module docstring). Returns ``out``.

    Parameters
    ----------
    out : str or Path
    ckpt : str or Path, optional
        A released fMRI-to-image checkpoint (needs ``fm``).
    encoder, encoder_config : str or Path, optional
        The UK Biobank autoencoder and its YAML (the YAML also gives ``ckpt``'s head count).
    fm : Foundation, optional
        The foundation the pipeline runs on (its UNet sizes the ControlNet, its text tower the empty context).
    heads : int, optional
        Attention heads of the encoder when no YAML is given.
    allow_pickle : bool
        Unpickle files that hold more than tensors (only files you trust).
    full_pipeline : bool
        Also write the foundation's VAE, UNet and a scheduler: a complete ``NeuroPictorPipeline`` folder.
    subject : int, optional
        The subject a single-subject checkpoint was refined on (recorded; notebook 07 scores it on that one).
    allow_other_unet : bool
        Import even if the checkpoint's frozen UNet differs from the foundation's (recorded in ``import.json``).
    """
    from .evaluate import pipeline_from_model

    if ckpt is None and encoder is None:
        raise DataError(Path(out), "something to import", "neither a checkpoint (--ckpt) nor an encoder (--encoder)")
    if ckpt is not None and fm is None:
        raise ValueError("importing an fMRI-to-image checkpoint needs the foundation it runs on (fm=...)")
    yaml_shape = cv.read_encoder_yaml(encoder_config) if encoder_config else None
    report = {"subject": int(subject) if subject is not None else None}
    if encoder is not None:
        ae, report["encoder_file"] = import_autoencoder(encoder, encoder_config, heads, allow_pickle)
    if ckpt is not None:
        conditioner, controlnet, report["checkpoint"] = import_checkpoint(ckpt, fm, heads, yaml_shape, allow_pickle,
                                                                          allow_other_unet)
    out = Path(out)
    with atomic_dir(out) as tmp:
        if encoder is not None:
            ae.save_pretrained(tmp / "autoencoder")
            ae.encoder.save_pretrained(tmp / "encoder")
        if ckpt is not None:
            if full_pipeline:
                pipeline_from_model(fm, conditioner, controlnet, scheduler).save_pretrained(tmp)
            else:
                conditioner.save_pretrained(tmp / "conditioner")
                controlnet.save_pretrained(tmp / "controlnet")
            report["foundation"] = dict(getattr(fm, "names", {}) or {}, profile=getattr(fm, "profile", None))
        (tmp / "import.json").write_text(json.dumps(report, indent=1, default=str))
    return out
