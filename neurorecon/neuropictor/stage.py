"""Stages ``pretrain`` (notebook 04) and ``refine`` (notebook 05) of NeuroPictor.

``pretrain``: every subject of the profile, one sample per (subject, image) (the mean of its training trials, see
:mod:`.data`), eps-MSE only, no CFG masking. The fMRI encoder starts from stage ``encoding``; the ControlNet
from the foundation UNet; heads and hint mapper fresh.

``refine``: one subject (``subject``), starting from the pretrained model, with the zero-initialised parallel
residual branch on the semantic head and the semantic loss (0.1 × MSE to a random caption's text tokens); then
the ``_mask`` variant continues from the refined weights with 5 % of contexts replaced by the empty prompt's
(lower learning rate). Both models are evaluated on the subject's test images beside the pretrain-only model,
each also fed shuffled fMRI (a derangement of the test maps: identification must fall to chance), and the final
model is swept over the control scale.

Checkpoints live outside the atomically written stage folder (``artifacts/<profile>/<stage>.ckpt/<key>``) so a
killed run resumes; the key covers the config fields that change training (not those in ``NOT_TRAINING``) and
the upstream stages' completion markers. Training length is ``steps`` or, when that is null, ``epochs`` (the
full profile: the paper's epochs) turned into steps for the launch's number of processes and ``grad_accum``;
the stage's metrics record which, with the global batch. Validation images are sampled by every process (each
its share of the test images) and gathered on the main process.
"""

import copy
import dataclasses
import json
import time
import typing
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .. import paths
from ..artifacts import is_complete, read_metrics, require_stage
from ..config import StageConfig
from ..data import open_store
from ..data.stage import store_path
from ..devices import check_precision, module_dtype, stage_device, to_module
from ..distributed import main_writer, require_unsharded
from ..encoding import load_encoder
from ..errors import ConfigError
from ..training import checkpoint_root, fit, make_accelerator, remove_checkpoints, resolve_steps
from .data import REPETITIONS, PairBatches, cache_latents, caption_lists, training_maps
from .evaluate import (SampleSettings, evaluate_reconstructions, load_pipeline, pipeline_from_model,
                       reconstruct, save_model)
from .metrics import image_metrics
from .model import NeuroPictorModel, build_neuropictor

__all__ = ["PretrainConfig", "RefineConfig", "run_pretrain_stage", "run_refine_stage", "load_stage_foundation",
           "train_neuropictor", "stage_checkpoint_dir", "sample_settings"]


@dataclasses.dataclass
class _Common(StageConfig):
    NOT_TRAINING: typing.ClassVar[tuple] = (
        "gradient_checkpointing", "ckpt_every", "keep_checkpoints", "num_threads", "n_eval", "n_figure",
        "num_inference_steps", "guidance_scale", "control_scale", "scheduler", "eval_seed", "eval_batch",
        "shuffle_seed")

    repetitions: str = "average"
    max_grad_norm: float = 1.0
    mask_epochs: Optional[float] = None
    mask_cfg_prob: float = 0.05
    batch_size: int = 32
    grad_accum: int = 1
    epochs: Optional[float] = None
    weight_decay: float = 0.01
    seed: int = 0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    ckpt_every: int = 100
    keep_checkpoints: bool = False
    num_threads: Optional[int] = 1
    # validation sampling
    n_eval: int = 0
    n_figure: int = 8
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    control_scale: float = 1.0
    scheduler: str = "ddim"
    eval_seed: int = 42
    eval_batch: int = 50
    shuffle_seed: int = 0


@dataclasses.dataclass
class PretrainConfig(_Common):
    """Config of the multi-subject pretraining stage (``neurorecon/configs/pretrain.yaml``)."""

    STAGE = "pretrain"
    NOTEBOOK = "04_multisubject_pretraining"

    NOT_TRAINING = _Common.NOT_TRAINING + ("eval_subjects",)

    subjects: Optional[list[int]] = None
    semantic_mid: int = 32
    steps: Optional[int] = 600
    lr: float = 1.0e-3
    cfg_mask_prob: float = 0.0
    mask_steps: Optional[int] = 0
    mask_lr: float = 1.0e-5
    eval_subjects: list[int] = dataclasses.field(default_factory=lambda: [1])


@dataclasses.dataclass
class RefineConfig(_Common):
    """Config of the single-subject refinement stage (``neurorecon/configs/refine.yaml``)."""

    STAGE = "refine"
    NOTEBOOK = "05_singlesubject_refinement"

    NOT_TRAINING = _Common.NOT_TRAINING + ("control_scales",)

    ckpt_every: int = 50
    subject: int = 1
    steps: Optional[int] = 300
    lr: float = 1.0e-3
    semantic_weight: float = 0.1
    semantic_target: str = "context"
    residual_init: str = "copy"
    mask_steps: Optional[int] = 60
    mask_lr: float = 1.0e-4
    repetition_variants: list[str] = dataclasses.field(default_factory=list)
    control_scales: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])


def sample_settings(cfg):
    """The validation :class:`SampleSettings` of a stage config."""
    return SampleSettings(cfg.num_inference_steps, cfg.guidance_scale, cfg.control_scale, cfg.scheduler,
                          cfg.eval_seed, cfg.eval_batch)


#: What NeuroPictor uses of the foundation: SD 2.1 (UNet, VAE, schedule), its text encoder (semantic targets, the
#: empty prompt) and CLIP ViT-L/14 (the validation metric). Not the unCLIP model, not the LLM.
COMPONENTS = ("sd", "clip_h", "clip_l")


def load_stage_foundation(profile, device=None):
    """The frozen foundation parts NeuroPictor uses (:data:`COMPONENTS`), on ``device``, in the configured dtype."""
    from ..foundation import load_foundation

    return load_foundation(profile, device=device, components=COMPONENTS)


def stage_checkpoint_dir(cfg, upstream):
    """``artifacts/<profile>/<stage>.ckpt/<key>`` (:func:`neurorecon.training.checkpoint_root`): the key covers
    the fields that change training and the upstream stages' markers."""
    return checkpoint_root(cfg, upstream)


def _steps(cfg, acc, n, steps, epochs, name="steps"):
    """Training steps of a run of ``n`` samples and what the metrics record of them (see the module docstring)."""
    return resolve_steps(steps, epochs, n, cfg.batch_size, acc.num_processes, cfg.grad_accum, name)


def _record_steps(w, method, subject, record, result):
    """The stage's metrics of a training run's length (see the module docstring) and the step it resumed from."""
    for k, v in dict(record, resumed_from=result.resumed_from).items():
        w.add_metric(method, subject, "train", k, v)


def _setup(cfg, foundation):
    """Check the config; return the accelerator, the foundation (``foundation`` or the profile's) and the store."""
    if cfg.repetitions not in REPETITIONS:
        raise ConfigError(f"{cfg.STAGE} config: repetitions must be 'average', 'last' or 'trials', got "
                          f"{cfg.repetitions!r}")
    if getattr(cfg, "residual_init", "copy") not in ("copy", "random"):
        raise ConfigError(f"{cfg.STAGE} config: residual_init must be 'copy' or 'random', got {cfg.residual_init!r}")
    if _semantic_target(cfg) not in ("context", "final"):
        raise ConfigError(f"{cfg.STAGE} config: semantic_target must be 'context' or 'final', got "
                          f"{cfg.semantic_target!r}")
    bad = [v for v in getattr(cfg, "repetition_variants", ()) if v not in REPETITIONS or v == cfg.repetitions]
    if bad:
        raise ConfigError(f"{cfg.STAGE} config: repetition_variants {bad}: each must be one of {REPETITIONS} other "
                          f"than repetitions ({cfg.repetitions!r})")
    if cfg.max_grad_norm < 0:
        raise ConfigError(f"{cfg.STAGE} config: max_grad_norm must be >= 0 (0 = no clipping), got {cfg.max_grad_norm}")
    if cfg.scheduler not in ("ddim", "dpm++"):
        raise ConfigError(f"{cfg.STAGE} config: scheduler must be 'ddim' or 'dpm++', got {cfg.scheduler!r}")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    acc = make_accelerator(cfg.mixed_precision)
    require_unsharded(acc, cfg.STAGE)
    fm = foundation or load_stage_foundation(cfg.profile, stage_device(acc))
    check_precision(module_dtype(fm.unet), cfg.mixed_precision, f"{cfg.STAGE} config ({cfg.profile})")
    return acc, fm, open_store(store_path(cfg.profile))


def train_neuropictor(model, data, fm, *, steps, batch_size, lr, weight_decay, seed, ckpt_dir, ckpt_every,
                      mixed_precision="no", gradient_checkpointing=False, desc="NeuroPictor", progress=True,
                      accelerator=None, stop_after=None, max_grad_norm=1.0, grad_accum=1, semantic_target="context"):
    """:func:`neurorecon.training.fit` with NeuroPictor's loss (gradients clipped to ``max_grad_norm``, 0 = off).

    With a semantic weight, each sample's target is the text tokens of one of its image's captions, drawn from the
    step's generator (resume-exact): the conditioning context (``semantic_target="context"``: the text tower's
    penultimate layer) or its last layer (``"final"``, as the official code computes the target)."""
    semantic = model.semantic_weight > 0

    def loss_fn(m, batch, gen):
        caps = None
        if semantic:
            pick = torch.randint(0, 1 << 20, (len(batch["captions"]),), generator=gen).tolist()
            texts = [c[k % len(c)] for c, k in zip(batch["captions"], pick)]
            caps = fm.text_tokens(texts, final=semantic_target == "final").to(batch["latents"].device)
        return m(batch["maps"], batch["latents"], caps, gen)

    return fit(model, loss_fn, data, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
               ckpt_dir=ckpt_dir, ckpt_every=ckpt_every, mixed_precision=mixed_precision,
               gradient_checkpointing=gradient_checkpointing, desc=desc, progress=progress, accelerator=accelerator,
               stop_after=stop_after, max_grad_norm=max_grad_norm, grad_accum=grad_accum)


def _pairs(fm, store, subjects, repetitions, cache, acc, batch, captions=False):
    """The training pairs; the VAE encodes ``batch`` images at a time (the config's ``eval_batch``: at 512 px a
    batch of 64 needs over 10 GB of activations)."""
    maps, ids = training_maps(store, subjects, repetitions, cache, acc)  # memory-mapped, written once
    latent_ids = np.unique(np.concatenate(ids))
    latents = cache_latents(fm, store, latent_ids, cache, acc, batch_size=batch)
    caps = caption_lists(store, latent_ids) if captions else None
    return PairBatches(maps, ids, latent_ids, latents, caps)


def _eval_set(store, subject, n_eval):
    sub = store.subject(subject)
    n = len(sub.test_image_ids) if n_eval <= 0 else min(n_eval, len(sub.test_image_ids))
    ids = sub.test_image_ids[:n]
    gt = torch.from_numpy(store.get_images(ids)).permute(0, 3, 1, 2).float() / 255.0
    return ids, np.asarray(sub.test_flat[:n], dtype=np.float32), gt


def semantic_error(fm, conditioner, store, ids, maps, target="context"):
    """Squared error (n, L, D) between the main semantic head's output for ``maps`` (a CPU array, as the stages
    hold them) and the text tokens of each image's first caption (``target`` as in :func:`train_neuropictor`),
    on the conditioner's device."""
    with torch.no_grad():
        _, _, main = conditioner(to_module(maps, conditioner))
        texts = [store.annotations[int(i)]["captions"][0] for i in ids]
        tokens = fm.text_tokens(texts, final=target == "final").to(main.device)
    return (main.float() - tokens.float()) ** 2


def _semantic_target(cfg):
    """The semantic-loss target of a stage config (pretraining has no semantic loss: the context)."""
    return getattr(cfg, "semantic_target", "context")


def _semantic_mse(fm, conditioner, store, ids, maps, target="context"):
    """Mean squared error between the main semantic head's output and the first caption's semantic target."""
    return float(semantic_error(fm, conditioner, store, ids, maps, target).mean())


def _evaluate(fm, pipe, store, subject, cfg, method, w, saved, acc=None):
    """pretrain_only/refined/... and the shuffled control on one subject; records metrics, keeps images."""
    ids, maps, gt = _eval_set(store, subject, cfg.n_eval)
    settings = sample_settings(cfg)
    t0, c0 = time.time(), time.process_time()
    m, rec = evaluate_reconstructions(fm, pipe, maps, gt, settings, accelerator=acc)
    seconds, cpu = time.time() - t0, time.process_time() - c0
    ms, _ = evaluate_reconstructions(fm, pipe, maps, gt, settings, shuffle_seed=cfg.shuffle_seed, accelerator=acc)
    for k, v in m.items():
        w.add_metric(method, subject, "test", k, v)
    for k, v in ms.items():
        w.add_metric(f"{method}_shuffled", subject, "test", k, v)
    w.add_metric(method, subject, "test", "semantic_mse", _semantic_mse(fm, pipe.conditioner, store, ids, maps,
                                                                           _semantic_target(cfg)))
    w.add_metric(method, subject, "test", "sample_seconds", seconds)
    w.add_metric(method, subject, "test", "sample_cpu_seconds", cpu)
    w.add_metric(method, subject, "test", "n_images", len(ids))
    saved[f"{method}_subj{subject:02d}"] = rec.numpy().astype(np.float16)
    saved[f"ids_subj{subject:02d}"] = ids
    return m, ms


def run_pretrain_stage(cfg, force=False, progress=True, foundation=None, stop_after=None, ckpt_dir=None, hook=None):
    """Multi-subject pretraining (see the module docstring); returns the stage folder (None if stopped early).

    Parameters
    ----------
    foundation : Foundation, optional
        Overrides :func:`load_stage_foundation` (tests).
    stop_after : int, optional
        Stop training after that step without writing the stage (simulates a killed run).
    ckpt_dir : Path, optional
        Overrides :func:`stage_checkpoint_dir`.
    hook : callable, optional
        Called on every process with the trained model(s) before the main process writes the stage.
    """
    folder = paths.stage_dir(cfg.STAGE, cfg.profile)
    if not force and is_complete(cfg.STAGE, cfg.profile, cfg.digest()):
        return folder
    acc, fm, store = _setup(cfg, foundation)
    encoder = load_encoder(cfg.profile)
    subjects = cfg.subjects or store.subjects
    ckpt = Path(ckpt_dir) if ckpt_dir else stage_checkpoint_dir(cfg, ("data", "foundation", "encoding"))
    data = _pairs(fm, store, subjects, cfg.repetitions, ckpt / "cache", acc, cfg.eval_batch)
    model = build_neuropictor(fm, encoder, cfg.semantic_mid, seed=cfg.seed, cfg_mask_prob=cfg.cfg_mask_prob)
    steps, record = _steps(cfg, acc, len(data), cfg.steps, cfg.epochs)
    common = _training_kwargs(cfg, acc, progress)
    cpu0 = time.process_time()
    res = train_neuropictor(model, data, fm, steps=steps, lr=cfg.lr, ckpt_dir=ckpt / "train", desc="pretrain",
                            stop_after=stop_after, **common)
    cpu = time.process_time() - cpu0
    if stop_after is not None and res.steps < steps:
        return None
    masked, res_mask, mask_record = _pretrain_mask_phase(cfg, model, data, fm, ckpt, acc, common)
    if hook is not None:
        hook(model)
    main = acc.is_main_process
    with main_writer(acc, cfg) as w:  # every process samples its share of the validation images
        if main:
            save_model(model, w.path / "model")
            losses = {"pretrain": res.losses}
            if masked is not None:
                save_model(masked, w.path / "model_mask")
                losses["pretrain_mask"] = res_mask.losses
            (w.path / "losses.json").write_text(json.dumps(losses))
        w.add_metric("pretrain", "all", "train", "seconds", res.seconds)
        w.add_metric("pretrain", "all", "train", "cpu_seconds", cpu)
        w.add_metric("pretrain", "all", "train", "n_samples", len(data))
        w.add_metric("pretrain", "all", "train", "n_subjects", len(subjects))
        _record_steps(w, "pretrain", "all", record, res)
        w.add_metric("pretrain", "all", "train", "final_loss", np.mean([v for _, v in res.losses[-20:]]))
        pipe = pipeline_from_model(fm, model.conditioner, model.controlnet, cfg.scheduler)
        saved = {}
        variants = [("pretrain_only", pipe)]
        if masked is not None:
            _record_steps(w, "pretrain_mask", "all", mask_record, res_mask)
            variants.append(("pretrain_mask", pipeline_from_model(fm, masked.conditioner, masked.controlnet,
                                                                  cfg.scheduler)))
        for s in cfg.eval_subjects:
            if s in store.subjects:
                for name, p in variants:
                    _evaluate(fm, p, store, s, cfg, name, w, saved, acc)
        if main:
            np.savez_compressed(w.path / "reconstructions.npz", **saved)
            (w.path / "sampling.json").write_text(json.dumps(_sampling_record(cfg)))
    if main and not cfg.keep_checkpoints:
        remove_checkpoints(ckpt)
    acc.wait_for_everyone()
    return folder


def _training_kwargs(cfg, acc, progress):
    """The :func:`train_neuropictor` arguments every training run of a stage shares."""
    return dict(batch_size=cfg.batch_size, weight_decay=cfg.weight_decay, seed=cfg.seed, ckpt_every=cfg.ckpt_every,
                mixed_precision=cfg.mixed_precision, gradient_checkpointing=cfg.gradient_checkpointing,
                progress=progress, accelerator=acc, max_grad_norm=cfg.max_grad_norm, grad_accum=cfg.grad_accum,
                semantic_target=_semantic_target(cfg))


def _pretrain_mask_phase(cfg, model, data, fm, ckpt, acc, common):
    """The official code's optional ``pretrain_mask`` phase: the pretrained model continued with CFG masking
    (``mask_cfg_prob`` of the contexts replaced by the empty prompt's, ``mask_lr``) for ``mask_steps`` (or
    ``mask_epochs``); saved as ``model_mask`` beside ``model``, from which refinement still starts (as the official
    finetuning loads the unmasked model). Returns (model, result, step record), or Nones when it is off."""
    mask_steps, record = _steps(cfg, acc, len(data), cfg.mask_steps, cfg.mask_epochs, "mask_steps")
    if not mask_steps:
        return None, None, None
    masked = NeuroPictorModel(copy.deepcopy(model.conditioner), copy.deepcopy(model.controlnet), fm.unet,
                              fm.scheduler_config, cfg.mask_cfg_prob, 0.0)
    res = train_neuropictor(masked, data, fm, steps=mask_steps, lr=cfg.mask_lr, ckpt_dir=ckpt / "train_mask",
                            desc="pretrain (CFG mask)", **common)
    return masked, res, record


def _sampling_record(cfg):
    """What the pretrain stage's ``sampling.json`` records of how its evaluation images were sampled."""
    return dict(dataclasses.asdict(sample_settings(cfg)), n_eval=cfg.n_eval, shuffle_seed=cfg.shuffle_seed)


def _same_sampling(folder, cfg):
    path = folder / "sampling.json"
    want = _sampling_record(cfg)
    want.pop("batch_size")
    if not path.is_file():
        return False
    have = json.loads(path.read_text())
    have.pop("batch_size", None)
    return have == want


def run_refine_stage(cfg, force=False, progress=True, foundation=None, stop_after=None, ckpt_dir=None, hook=None):
    """Single-subject refinement, its CFG-mask variant, their evaluation and the control-scale sweep.

    Parameters as :func:`run_pretrain_stage` (``stop_after`` applies to the refinement run, ``hook`` receives
    the refined and the CFG-mask models).
    """
    folder = paths.stage_dir(cfg.STAGE, cfg.profile)
    if not force and is_complete(cfg.STAGE, cfg.profile, cfg.digest()):
        return folder
    acc, fm, store = _setup(cfg, foundation)
    pre = require_stage("pretrain", cfg.profile)
    ckpt = Path(ckpt_dir) if ckpt_dir else stage_checkpoint_dir(cfg, ("data", "foundation", "encoding", "pretrain"))
    data = _pairs(fm, store, [cfg.subject], cfg.repetitions, ckpt / "cache", acc, cfg.eval_batch, captions=True)
    pipe0 = load_pipeline(fm, pre / "model", cfg.scheduler)
    common = _training_kwargs(cfg, acc, progress)
    steps, record = _steps(cfg, acc, len(data), cfg.steps, cfg.epochs)
    mask_steps, mask_record = _steps(cfg, acc, len(data), cfg.mask_steps, cfg.mask_epochs, "mask_steps")
    refined = _to_refine(cfg, fm, pipe0)
    del pipe0  # loaded again after training: not held through both phases (2.7 GB of fp32 weights at real size)
    cpu0 = time.process_time()
    res = train_neuropictor(refined, data, fm, steps=steps, lr=cfg.lr, ckpt_dir=ckpt / "refined",
                            desc="refine", stop_after=stop_after, **common)
    cpu1 = time.process_time()
    if stop_after is not None and res.steps < steps:
        return None
    masked = NeuroPictorModel(copy.deepcopy(refined.conditioner), copy.deepcopy(refined.controlnet), fm.unet,
                              fm.scheduler_config, cfg.mask_cfg_prob, cfg.semantic_weight)
    res_mask = train_neuropictor(masked, data, fm, steps=mask_steps, lr=cfg.mask_lr,
                                 ckpt_dir=ckpt / "refined_mask", desc="refine (CFG mask)", **common)
    cpu2 = time.process_time()
    pipe0 = load_pipeline(fm, pre / "model", cfg.scheduler)
    variants = {mode: _refine_variant(cfg, mode, fm, store, pipe0, ckpt, acc, common) for mode in
                cfg.repetition_variants}
    if hook is not None:
        hook(refined, masked)
    main = acc.is_main_process
    with main_writer(acc, cfg) as w:  # every process samples its share of the validation images
        if main:
            save_model(refined, w.path / "refined")
            save_model(masked, w.path / "refined_mask")
            (w.path / "losses.json").write_text(json.dumps({"refined": res.losses, "refined_mask": res_mask.losses}))
        s = cfg.subject
        w.add_metric("refined", s, "train", "seconds", res.seconds)
        w.add_metric("refined_mask", s, "train", "seconds", res_mask.seconds)
        w.add_metric("refined", s, "train", "cpu_seconds", cpu1 - cpu0)
        w.add_metric("refined_mask", s, "train", "cpu_seconds", cpu2 - cpu1)
        w.add_metric("refined", s, "train", "n_samples", len(data))
        _record_steps(w, "refined", s, record, res)
        _record_steps(w, "refined_mask", s, mask_record, res_mask)
        saved = _evaluate_all(fm, store, pre, pipe0, refined, masked, cfg, w, acc)
        for mode, (model, result, rec) in variants.items():
            name = f"refined_{mode}"
            if main:
                save_model(model, w.path / name)
            _record_steps(w, name, s, rec, result)
            pipe = pipeline_from_model(fm, model.conditioner, model.controlnet, cfg.scheduler)
            _evaluate(fm, pipe, store, s, cfg, name, w, saved, acc)
        if main:
            np.savez_compressed(w.path / "reconstructions.npz", **saved)
    if main and not cfg.keep_checkpoints:
        remove_checkpoints(ckpt)
    acc.wait_for_everyone()
    return folder


def _to_refine(cfg, fm, pipe0):
    """A fresh copy of the pretrained model (``pipe0``) with the parallel semantic branch, ready to refine."""
    return NeuroPictorModel(pipe0.conditioner.with_residual(cfg.residual_init, cfg.seed),
                            copy.deepcopy(pipe0.controlnet), fm.unet, fm.scheduler_config, 0.0, cfg.semantic_weight)


def _refine_variant(cfg, mode, fm, store, pipe0, ckpt, acc, common):
    """Refinement (without the CFG-mask phase) of the same pretrained model on samples drawn as ``mode`` (e.g. the
    official code's ``last``: one trial per image) instead of ``cfg.repetitions``; returns (model, result, step
    record), scored as ``refined_<mode>`` beside the configured recipe."""
    # the same images' latents as the configured recipe
    data = _pairs(fm, store, [cfg.subject], mode, ckpt / "cache", acc, cfg.eval_batch, captions=True)
    steps, record = _steps(cfg, acc, len(data), cfg.steps, cfg.epochs)
    model = _to_refine(cfg, fm, pipe0)
    res = train_neuropictor(model, data, fm, steps=steps, lr=cfg.lr, ckpt_dir=ckpt / f"refined_{mode}",
                            desc=f"refine ({mode})", **common)
    return model, res, record


def _evaluate_all(fm, store, pre, pipe0, refined, masked, cfg, w, acc=None):
    s = cfg.subject
    saved = {}
    key = f"pretrain_only_subj{s:02d}"
    old = np.load(pre / "reconstructions.npz") if (pre / "reconstructions.npz").is_file() else {}
    if key in old and _same_sampling(pre, cfg):  # the pretrain stage already sampled these with the same settings
        ids, maps, gt = _eval_set(store, s, cfg.n_eval)
        rec = torch.from_numpy(old[key].astype(np.float32))
        for k, v in image_metrics(fm, gt, rec).items():
            w.add_metric("pretrain_only", s, "test", k, v)
        prev = read_metrics(pre)
        rows = prev[(prev.method == "pretrain_only_shuffled") & (prev.subject == str(s))]
        for _, r in rows.iterrows():
            w.add_metric("pretrain_only_shuffled", s, "test", r.metric, r.value)
        mse = _semantic_mse(fm, pipe0.conditioner, store, ids, maps, _semantic_target(cfg))
        w.add_metric("pretrain_only", s, "test", "semantic_mse", mse)
        saved[key], saved[f"ids_subj{s:02d}"] = old[key], ids
    else:
        _evaluate(fm, pipe0, store, s, cfg, "pretrain_only", w, saved, acc)
    for name, model in (("refined", refined), ("refined_mask", masked)):
        pipe = pipeline_from_model(fm, model.conditioner, model.controlnet, cfg.scheduler)
        _evaluate(fm, pipe, store, s, cfg, name, w, saved, acc)
    # control-scale sweep of the final model (refined + CFG mask: ``pipe`` of the last loop iteration)
    ids, maps, gt = _eval_set(store, s, cfg.n_eval)
    settings = sample_settings(cfg)
    for scale in cfg.control_scales:
        if float(scale) == float(cfg.control_scale):
            rec = torch.from_numpy(saved[f"refined_mask_subj{s:02d}"].astype(np.float32))
        else:
            rec = reconstruct(pipe, maps, settings, control_scale=float(scale), accelerator=acc)
        for k, v in image_metrics(fm, gt, rec).items():
            w.add_metric("control_sweep", s, "test", f"{k}@{float(scale):g}", v)
        saved[f"sweep_{float(scale):g}"] = rec[:cfg.n_figure].numpy().astype(np.float16)
    return saved
