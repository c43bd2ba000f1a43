"""One training loop for every stage, built on ``accelerate``: one CPU process and N GPUs run the same code.

A stage supplies a model, a *batch source* (anything with ``len()`` and ``batch(indices) -> dict``: array-backed
datasets gather a whole batch in one indexing call instead of a Python loop over items) and a loss function
``loss_fn(model, batch, generator) -> scalar``. The loop

- draws the data order from ``(seed, epoch)`` and the per-step randomness (diffusion noise, timesteps, CFG
  masks) from a generator seeded by ``(seed, step, rank)``, so a run killed and resumed from a checkpoint ends
  with exactly the weights of an uninterrupted run;
- splits each global batch across processes (``batch_size`` per process), DDP averages gradients;
- saves ``accelerate`` state (model, optimizer, RNG) every ``ckpt_every`` steps atomically (temp folder, rename);
- supports bf16 mixed precision and gradient checkpointing, shows tqdm progress, and logs losses.

Launch several processes with ``accelerate launch`` (GPUs) or, on CPU, ``torchrun --standalone
--nproc_per_node 2`` (``accelerate launch --cpu --num_processes 2`` starts only one process).
"""

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import NeuroreconError

__all__ = ["TrainResult", "fit", "ArrayBatches", "make_accelerator", "epoch_order"]


class ArrayBatches:
    """A batch source over equally long arrays/tensors: ``batch(idx)`` gathers every field at once.

    Parameters
    ----------
    transform : callable, optional
        Applied to the gathered dict (e.g. uint8 → float conversion).
    **fields : ndarray or Tensor
    """

    def __init__(self, transform=None, **fields):
        lengths = {len(v) for v in fields.values()}
        if len(lengths) != 1:
            raise ValueError(f"fields have different lengths: { {k: len(v) for k, v in fields.items()} }")
        self.fields = fields
        self.transform = transform

    def __len__(self):
        return len(next(iter(self.fields.values())))

    def batch(self, indices):
        idx = np.sort(np.asarray(indices))  # sorted reads are faster on memory-mapped arrays
        perm = np.argsort(np.argsort(np.asarray(indices)))
        out = {}
        for k, v in self.fields.items():
            x = v[idx] if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v[idx]))
            out[k] = x[torch.from_numpy(perm)]
        return self.transform(out) if self.transform else out


def epoch_order(n, seed, epoch):
    """The data order of one epoch (same on every process)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


@dataclass
class TrainResult:
    losses: list = field(default_factory=list)  # (step, loss) on the main process
    steps: int = 0
    seconds: float = 0.0
    resumed_from: int = 0


def make_accelerator(mixed_precision="no", cpu=None):
    from accelerate import Accelerator

    if cpu is None:
        cpu = not torch.cuda.is_available()
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def _save(accelerator, ckpt_dir, step, losses):
    final = Path(ckpt_dir) / "latest"
    tmp = Path(ckpt_dir) / f"latest.partial-{os.getpid()}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "step.json").write_text(json.dumps({"step": step, "losses": losses}))
        old = Path(ckpt_dir) / "latest.old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load(accelerator, ckpt_dir):
    final = Path(ckpt_dir) / "latest"
    meta = final / "step.json"
    if not meta.is_file():
        return 0, []
    try:
        info = json.loads(meta.read_text())
        accelerator.load_state(str(final))
    except Exception as err:
        raise NeuroreconError(f"{final}: expected a complete training checkpoint (accelerate state + step.json), "
                              f"found an unreadable one ({type(err).__name__}: {err}); delete the folder to "
                              "restart training from scratch") from err
    return int(info["step"]), [tuple(x) for x in info["losses"]]


def fit(model, loss_fn, data, *, steps, batch_size, lr, weight_decay=0.01, seed=0, params=None, ckpt_dir=None,
        ckpt_every=0, mixed_precision="no", gradient_checkpointing=False, max_grad_norm=1.0, desc="train",
        progress=True, log_every=1, stop_after=None, accelerator=None):
    """Train ``model`` for ``steps`` optimizer steps; resumes from ``ckpt_dir`` if it holds a checkpoint.

    Parameters
    ----------
    model : torch.nn.Module
    loss_fn : callable
        ``loss_fn(model, batch, generator) -> scalar tensor``. It must call ``model(...)`` (the wrapped module
        it is given) rather than its submodules, so that DDP synchronises gradients across processes.
    data : batch source
        ``len(data)`` and ``data.batch(indices) -> dict of tensors``.
    steps, batch_size, lr, weight_decay : training recipe (AdamW, no schedule); ``batch_size`` per process.
    params : iterable, optional
        Parameters to train (default: those with ``requires_grad``).
    ckpt_dir : str or Path, optional
        Where ``accelerate`` state is saved every ``ckpt_every`` steps and at the end.
    stop_after : int, optional
        Stop (without final checkpoint) after this step: simulates a killed run in tests.

    Returns
    -------
    TrainResult
    """
    acc = accelerator or make_accelerator(mixed_precision)
    if gradient_checkpointing and hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing()
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model, opt = acc.prepare(model, opt)
    start, losses = (0, [])
    if ckpt_dir:
        Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
        start, losses = _load(acc, ckpt_dir)
    world, rank = acc.num_processes, acc.process_index
    n = len(data)
    global_batch = batch_size * world
    per_epoch = max(1, n // global_batch)
    t0 = time.time()
    model.train()
    bar = tqdm(range(start, steps), desc=desc, disable=not (progress and acc.is_main_process), leave=False,
               initial=start, total=steps)
    for step in bar:
        epoch, pos = divmod(step, per_epoch)
        order = epoch_order(n, seed, epoch)
        chunk = order[pos * global_batch:(pos + 1) * global_batch]
        if len(chunk) < global_batch:  # fewer samples than one global batch: sample with wrap-around
            chunk = np.resize(order, global_batch)
        batch = data.batch(chunk[rank * batch_size:(rank + 1) * batch_size])
        batch = {k: v.to(acc.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        gen = torch.Generator(device="cpu").manual_seed(int(seed) * 1_000_003 + step * 1009 + rank)
        with acc.autocast():
            loss = loss_fn(model, batch, gen)
        acc.backward(loss)
        if max_grad_norm:
            acc.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = acc.reduce(loss.detach().float(), reduction="mean").item()
        if not math.isfinite(value):
            raise NeuroreconError(f"{desc}: loss became {value} at step {step}; lower the learning rate")
        if (step + 1) % log_every == 0 or step == steps - 1:
            losses.append((step + 1, value))
            bar.set_postfix(loss=f"{value:.4f}")
        done = step + 1
        if ckpt_dir and ckpt_every and done % ckpt_every == 0 and done < steps:
            _save(acc, ckpt_dir, done, losses)
        if stop_after is not None and done >= stop_after:
            return TrainResult(losses, done, time.time() - t0, start)
    if ckpt_dir:
        _save(acc, ckpt_dir, steps, losses)
    model.eval()
    return TrainResult(losses, steps, time.time() - t0, start)
