"""Training the brain LLaVA so that it fits a real LLM: LoRA, dtypes, gradient checkpointing and accumulation.

The two NV2L stages run through :func:`neurorecon.training.fit` (one code path for one CPU process and N GPUs
under ``accelerate launch``):

- stage 1 trains the projector; the LLM is frozen;
- stage 2 trains the projector and either LoRA adapters on the LLM (``lora_r > 0``, through ``peft``; the default
  of the full profile) or every LLM weight (``lora_r: 0``, NV2L's own recipe, for those who have the memory).

Dtypes follow the project rule: frozen weights stay in the dtype they were loaded in (bfloat16 in the full
profile), every trainable parameter is float32 (the projector, the LoRA adapters, or the whole LLM when it is
fully fine-tuned) and the forward runs under the accelerator's autocast (``mixed_precision: bf16``). Memory of a
Llama-3-8B in bf16: 16 GB of frozen weights; LoRA r = 64 on every linear layer adds about 170 M fp32 parameters
(about 2.7 GB with AdamW's two moments); full fine-tuning needs 16 bytes per parameter (about 128 GB) before
activations, i.e. sharding across GPUs. Gradient checkpointing (recompute each decoder layer in the backward
pass) bounds activation memory by one layer's; ``grad_accum`` micro-batches reach the paper's batch sizes.
"""

import contextlib
import inspect
import logging
import warnings

import numpy as np
import torch

from ..errors import ConfigError
from ..training import ArrayBatches, LengthGroupedBatches, fit

__all__ = ["IGNORE", "LORA_TARGETS", "FMRI_SAMPLES", "llava_batches", "llava_loss", "quiet_peft", "apply_lora",
           "trainable_summary", "train_llava_stage"]

IGNORE = -100
#: Every linear layer of a Llama decoder block (LLaVA's LoRA recipe adapts all of them).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def llava_batches(records, tokenizer, trial_rows, max_len, group_by_length=False):
    """A batch source of tokenised records with the training trials of each record's image.

    Parameters
    ----------
    records : list of dict
        LLaVA records.
    tokenizer : transformers tokenizer
    trial_rows : callable
        ``image_ids -> (rows (n, R), counts (n,))`` (e.g. :meth:`TrialSet.trials_of`).
    max_len : int
        Text tokens per record (longer ones are truncated).
    group_by_length : bool
        Batches of records of similar length (:class:`~neurorecon.training.LengthGroupedBatches`; LLaVA's
        ``group_by_length``): each batch is cropped to its longest record, so less of it is padding.
    """
    from .llava import encode_chat

    enc = [encode_chat(tokenizer, r["conversations"], max_len) for r in records]
    L = max(len(i) for i, _ in enc)
    pad = tokenizer.pad_token_id
    ids = np.full((len(enc), L), pad, dtype=np.int64)
    labels = np.full((len(enc), L), IGNORE, dtype=np.int64)
    mask = np.zeros((len(enc), L), dtype=np.int64)
    for k, (i, lab) in enumerate(enc):
        ids[k, :len(i)], labels[k, :len(i)], mask[k, :len(i)] = i, lab, 1
    rows, counts = trial_rows(np.array([r["image_id"] for r in records], dtype=np.int64))
    fields = dict(input_ids=ids, labels=labels, attention_mask=mask, trials=rows, n_trials=counts)
    if group_by_length:
        return LengthGroupedBatches(mask.sum(1), **fields)
    return ArrayBatches(**fields)


FMRI_SAMPLES = ("trial", "mean")


def llava_loss(voxels, fmri="trial"):
    """``loss_fn`` for :func:`neurorecon.training.fit`: the fMRI of each record's image (``fmri="trial"``: one random
    training trial, NV2L; ``"mean"``: the mean of its training trials, as the test fMRI is averaged over
    repetitions), padding cropped to the batch's longest record."""
    if fmri not in FMRI_SAMPLES:
        raise ConfigError(f"llava_fmri {fmri!r}: expected one of {', '.join(FMRI_SAMPLES)}")

    def loss_fn(model, batch, gen):
        device = batch["input_ids"].device
        trials, n = batch["trials"].cpu(), batch["n_trials"].cpu()
        if fmri == "mean":
            weight = (torch.arange(trials.shape[1])[None] < n[:, None]).float() / n[:, None]
            x = torch.einsum("br,brv->bv", weight, voxels[trials].float()).to(device)
        else:
            pick = (torch.rand(len(n), generator=gen) * n).long().clamp(max=trials.shape[1] - 1)
            x = voxels[trials[torch.arange(len(n)), pick]].float().to(device)
        L = int(batch["attention_mask"].sum(1).max())
        return model(x, batch["input_ids"][:, :L], batch["attention_mask"][:, :L], batch["labels"][:, :L])

    return loss_fn


@contextlib.contextmanager
def quiet_peft():
    """peft 0.21 reads transformers 5's deprecated ``is_gradient_checkpointing`` property when it wraps a model:
    silence that one FutureWarning (nothing of ours uses the old name)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def apply_lora(lm, r, alpha=16, dropout=0.05, target_modules=LORA_TARGETS):
    """Wrap an LM with LoRA adapters (``peft``); the adapters are float32 whatever the base dtype.

    Parameters
    ----------
    lm : transformers causal LM
        Its own weights stay frozen in their dtype.
    r, alpha, dropout : LoRA rank, scale numerator (the update is ``alpha / r · B A x``) and input dropout.
    target_modules : sequence of str
        Names of the linear layers to adapt (default: all of a Llama block's).
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ConfigError("lora_r > 0 needs the package peft (pip install peft); set lora_r: 0 to fine-tune the "
                          "whole LM instead") from err
    names = {n.rsplit(".", 1)[-1] for n, _ in lm.named_modules()}
    missing = [t for t in target_modules if t not in names]
    if missing:
        raise ConfigError(f"lora_targets {missing} are not modules of {type(lm).__name__}; its layer names "
                          f"include {sorted(n for n in names if n.endswith('proj'))[:12]}")
    cfg = LoraConfig(r=int(r), lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                     task_type="CAUSAL_LM")
    with quiet_peft():
        lm = get_peft_model(lm, cfg, autocast_adapter_dtype=True)
    for p in lm.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return lm


def trainable_summary(model):
    """Counts of trainable and frozen parameters and the dtypes of each (for metrics and tests)."""
    out = {"trainable": 0, "frozen": 0, "trainable_dtypes": set(), "frozen_dtypes": set()}
    for p in model.parameters():
        key = "trainable" if p.requires_grad else "frozen"
        out[key] += p.numel()
        out[f"{key}_dtypes"].add(str(p.dtype).replace("torch.", ""))
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in out.items()}


def _checkpointing(lm, on):
    """Switch the LM's activation (gradient) checkpointing on (non-reentrant) or off; no KV cache while on."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    new = hasattr(base, "activation_checkpointing_enable")  # transformers >= 5.2 renamed the methods
    if on:
        key = "activation_checkpointing_kwargs" if new else "gradient_checkpointing_kwargs"
        (base.activation_checkpointing_enable if new else base.gradient_checkpointing_enable)(
            **{key: {"use_reentrant": False}})
    else:
        (base.activation_checkpointing_disable if new else base.gradient_checkpointing_disable)()
    base.config.use_cache = not on


def _fit_accepts(name):
    return name in inspect.signature(fit).parameters


def _prepare_stage(model, stage, lora):
    model.lm.requires_grad_(False)
    model.projector.requires_grad_(True).float()
    if stage == 2:
        if lora and lora.get("r"):
            if not hasattr(model.lm, "peft_config"):
                model.lm = apply_lora(model.lm, lora["r"], lora.get("alpha", 16), lora.get("dropout", 0.05),
                                      lora.get("targets", LORA_TARGETS))
            for n, p in model.lm.named_parameters():
                p.requires_grad_("lora_" in n)
        else:
            if hasattr(model.lm, "peft_config"):
                raise ConfigError("this LM carries LoRA adapters: train it with lora_r > 0, or start from an LM "
                                  "without adapters to fine-tune every weight")
            model.lm.float()  # trainable parameters are float32 (master weights); autocast computes in bf16
            model.lm.requires_grad_(True)


def train_llava_stage(model, data, voxels, stage, *, steps, batch_size, lr, weight_decay=0.0, seed=0, lora_r=0,
                      lora_alpha=16, lora_dropout=0.05, lora_targets=LORA_TARGETS, gradient_checkpointing=False,
                      fmri="trial", grad_accum=1, ckpt_dir=None, ckpt_every=0, mixed_precision="no", progress=True,
                      accelerator=None, stop_after=None, lr_schedule="constant", warmup_ratio=0.0):
    """Stage 1 (projector) or stage 2 (projector + LoRA adapters, or projector + the whole LM).

    Parameters
    ----------
    model : BrainLlava
    data : batch source of :func:`llava_batches`
    voxels : Tensor (N, V)
        Training trials (rows named by ``data``'s ``trials``).
    stage : 1 or 2
    steps, batch_size, lr, weight_decay, seed : the recipe (``batch_size`` per process and micro-batch).
    lora_r, lora_alpha, lora_dropout, lora_targets : LoRA in stage 2 (``lora_r: 0`` = full fine-tuning).
    gradient_checkpointing : bool
        Recompute the LM's decoder layers in the backward pass (non-reentrant checkpointing).
    fmri : {"trial", "mean"}
        The fMRI a record is paired with: one random trial of its image per step, or the mean of its trials.
    grad_accum : int
        Micro-batches per optimizer step (needs :func:`neurorecon.training.fit` with ``grad_accum``).
    ckpt_dir, ckpt_every, mixed_precision, progress, accelerator, stop_after, lr_schedule, warmup_ratio : see
        :func:`neurorecon.training.fit`.

    Returns
    -------
    TrainResult
        Its ``model`` is the trained brain LLaVA to go on with (under FSDP an unsharded copy of ``model``).
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, found {stage!r}")
    extra = {}
    if int(grad_accum) != 1:
        if not _fit_accepts("grad_accum"):
            raise ConfigError(f"grad_accum: {grad_accum} needs neurorecon.training.fit with gradient accumulation "
                              "(this version has none); set grad_accum: 1")
        extra["grad_accum"] = int(grad_accum)
    if accelerator is not None:
        extra["accelerator"] = accelerator
    if stop_after is not None:
        extra["stop_after"] = stop_after
    _prepare_stage(model, stage, dict(r=lora_r, alpha=lora_alpha, dropout=lora_dropout, targets=lora_targets))
    if gradient_checkpointing:
        _checkpointing(model.lm, True)
    params = [p for p in model.parameters() if p.requires_grad]
    # accelerate warns that the LM's tied input/output embeddings are stored once in checkpoints: expected here
    quiet = logging.getLogger("accelerate.utils.other")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    res = None
    try:
        res = fit(model, llava_loss(voxels, fmri), data, steps=steps, batch_size=batch_size, lr=lr,
                  weight_decay=weight_decay, seed=seed, params=params, ckpt_dir=ckpt_dir, ckpt_every=ckpt_every,
                  mixed_precision=mixed_precision, desc=f"LLaVA stage {stage}", progress=progress,
                  log_every=max(1, steps // 100), lr_schedule=lr_schedule, warmup_ratio=warmup_ratio, **extra)
        return res
    finally:
        quiet.setLevel(level)
        if gradient_checkpointing:
            _checkpointing(model.lm, False)
            if res is not None and res.model is not None and res.model is not model:  # FSDP's unsharded copy
                _checkpointing(res.model.lm, False)
