"""One training loop for every stage, built on ``accelerate``: one CPU process and N GPUs run the same code.

A stage supplies a model, a *batch source* (anything with ``len()`` and ``batch(indices) -> dict``: array-backed
datasets gather a whole batch in one indexing call instead of a Python loop over items) and a loss function
``loss_fn(model, batch, generator) -> scalar``. The loop

- draws the data order from ``(seed, epoch)`` and the per-step randomness (diffusion noise, timesteps, CFG
  masks) from a generator seeded by ``(seed, step, rank, micro-batch)``, so a run killed and resumed from a
  checkpoint ends with exactly the weights of an uninterrupted run;
- splits each global batch (``batch_size`` per process × processes × ``grad_accum``) across processes and
  micro-batches; gradients of the first ``grad_accum - 1`` micro-batches are accumulated locally
  (``accelerator.no_sync``), the last one's backward averages them across processes (DDP);
- saves ``accelerate`` state (model, optimizer, RNG of every rank) every ``ckpt_every`` steps into a step-named
  folder and then flips the ``latest`` pointer atomically (see :func:`save_checkpoint`);
- supports bf16 mixed precision and gradient checkpointing, shows tqdm progress, and logs losses.

Step counts come from epochs with :func:`steps_for` (they depend on the number of processes); checkpoint folders
are keyed by :func:`checkpoint_key`, over the config fields that change training only.

Launch several processes with ``accelerate launch`` (GPUs) or, on CPU, ``torchrun --standalone
--nproc_per_node 2`` (``accelerate launch --cpu --num_processes 2`` starts only one process).

Under FSDP (``configs/accelerate/fsdp_8gpu.yaml``, FSDP2 only) the prepared model's parameters are shards:
checkpoints are sharded (accelerate writes every rank's shards with ``torch.distributed.checkpoint``) and, when
training ends, :func:`fit` gathers the weights into an unsharded copy of the model, ``TrainResult.model``, which
the caller uses from then on (the module it passed in keeps the shards). Without GPUs accelerate quietly turns
an FSDP launch into plain data parallelism; :func:`make_accelerator` refuses that, unless
``NEURORECON_FSDP_ON_CPU=1`` (tests only) asks for real FSDP over gloo on the CPU.
"""

import contextlib
import hashlib
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

from .distributed import full_state_dict, is_sharded, load_unsharded, meta_copy
from .dryrun.probe import step_probe
from .errors import ConfigError, NeuroreconError

__all__ = ["TrainResult", "fit", "lr_at", "LR_SCHEDULES", "ArrayBatches", "LengthGroupedBatches",
           "length_grouped_order", "make_accelerator", "epoch_order", "steps_for", "resolve_steps",
           "checkpoint_key", "checkpoint_root", "remove_checkpoints", "save_checkpoint", "load_checkpoint"]


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


def length_grouped_order(lengths, seed, epoch, global_batch, megabatch=50):
    """:func:`epoch_order` regrouped so that every global batch holds samples of similar length.

    The epoch's random order is cut into runs of ``megabatch`` global batches, each run is sorted by length and
    cut into global batches, and those batches are shuffled (the grouping of ``group_by_length`` in transformers'
    Trainer and LLaVA): a batch is padded to its longest sample, so mixing short and long ones wastes compute.
    Returns a permutation of ``range(len(lengths))``; a tail shorter than one global batch comes last.
    """
    lengths = np.asarray(lengths)
    order = epoch_order(len(lengths), seed, epoch)
    run = int(global_batch) * int(megabatch)
    order = np.concatenate([chunk[np.argsort(lengths[chunk], kind="stable")]
                            for chunk in np.array_split(order, range(run, len(order), run))])
    full = len(order) // global_batch * global_batch
    blocks = order[:full].reshape(-1, global_batch)
    blocks = blocks[np.random.default_rng([seed, epoch, 1]).permutation(len(blocks))]
    return np.concatenate([blocks.ravel(), order[full:]])


class LengthGroupedBatches(ArrayBatches):
    """:class:`ArrayBatches` whose epochs are ordered by :func:`length_grouped_order` of ``lengths``.

    Parameters
    ----------
    lengths : array (n,)
        The length of each sample (what its batch is padded to).
    transform, **fields : as :class:`ArrayBatches`.
    """

    def __init__(self, lengths, transform=None, **fields):
        super().__init__(transform, **fields)
        if len(lengths) != len(self):
            raise ValueError(f"lengths has {len(lengths)} entries for {len(self)} samples")
        self.lengths = np.asarray(lengths)

    def epoch_order(self, seed, epoch, global_batch):
        return length_grouped_order(self.lengths, seed, epoch, global_batch)


def steps_for(epochs, n_samples, batch_size, num_processes=1, grad_accum=1):
    """Optimizer steps of ``epochs`` passes over ``n_samples``:
    ``ceil(epochs × n_samples / (batch_size × num_processes × grad_accum))``, at least 1.

    ``batch_size`` is per process and per micro-batch, so the global batch of one step is
    ``batch_size × num_processes × grad_accum`` (the paper's pretraining, 80 epochs of ~67k pairs at 6 × 16:
    ``steps_for(80, 67000, 16, 6) == 55834``).
    """
    for name, v in (("batch_size", batch_size), ("num_processes", num_processes), ("grad_accum", grad_accum)):
        if int(v) < 1:
            raise ConfigError(f"{name} must be at least 1, got {v!r}")
    if float(epochs) <= 0:
        raise ConfigError(f"epochs must be positive, got {epochs!r}")
    global_batch = int(batch_size) * int(num_processes) * int(grad_accum)
    return max(1, math.ceil(float(epochs) * int(n_samples) / global_batch))


def resolve_steps(steps, epochs, n_samples, batch_size, num_processes=1, grad_accum=1, name="steps"):
    """``steps`` if set, else :func:`steps_for` of ``epochs``; returns ``(steps, record)`` where ``record`` is
    what the stage writes into its metrics: the steps, the epochs they amount to, the global batch and whether
    they came from ``epochs`` (1) or from ``steps`` (0)."""
    if steps is None and epochs is None:
        raise ConfigError(f"set either {name} or the matching epochs (both are null)")
    global_batch = int(batch_size) * int(num_processes) * int(grad_accum)
    n = int(steps) if steps is not None else steps_for(epochs, n_samples, batch_size, num_processes, grad_accum)
    if n < 0:  # 0: no training (e.g. a pretrained start used as it is)
        raise ConfigError(f"{name} must be 0 or more, got {steps!r}")
    return n, dict(steps=n, epochs=n * global_batch / max(1, int(n_samples)), global_batch=global_batch,
                   num_processes=int(num_processes), grad_accum=int(grad_accum),
                   steps_from_epochs=float(steps is None))


def checkpoint_key(cfg, upstream=()):
    """A short hash of the config fields that change training, and of the upstream stages' markers.

    The fields a config class lists in its ``NOT_TRAINING`` tuple (evaluation and sampling settings, thread
    counts, checkpoint frequency, …) are left out, so editing them resumes training instead of restarting it.
    """
    from .artifacts import read_marker

    skip = set(getattr(cfg, "NOT_TRAINING", ()))
    unknown = skip - set(cfg.to_dict())
    if unknown:
        raise ValueError(f"{type(cfg).__name__}.NOT_TRAINING names unknown fields {sorted(unknown)}")
    values = {k: v for k, v in cfg.to_dict().items() if k not in skip}
    blob = json.dumps([values] + [read_marker(s, cfg.profile) for s in upstream], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_root(cfg, upstream=()):
    """Training checkpoints of a stage config, outside its atomically written stage folder (so a killed run
    resumes): ``artifacts/<profile>/<stage>.ckpt/<checkpoint_key>``."""
    from . import paths

    return paths.artifacts_dir(cfg.profile) / f"{cfg.STAGE}.ckpt" / checkpoint_key(cfg, upstream)


def remove_checkpoints(folder):
    """Delete a stage's checkpoint folder once the stage is written, and its ``<stage>.ckpt`` parent if that is
    left empty."""
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    if folder.parent.name.endswith(".ckpt"):
        try:
            folder.parent.rmdir()
        except OSError:  # other configs' checkpoints are still there
            pass


@dataclass
class TrainResult:
    losses: list = field(default_factory=list)  # (step, loss) on the main process
    steps: int = 0
    seconds: float = 0.0
    resumed_from: int = 0
    model: object = field(default=None, repr=False)  # the trained module (under FSDP an unsharded copy)


#: Set to 1 to run an FSDP launch over gloo on a machine without GPUs (tests of the sharded path only).
FSDP_ON_CPU = "NEURORECON_FSDP_ON_CPU"


def _fsdp_requested():
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def _fsdp_on_cpu(acc):
    """Turn the MULTI_CPU (gloo) state accelerate set up for an FSDP launch into an FSDP one: accelerate only
    shards on accelerators, but FSDP2's collectives run on gloo (the default device mesh is the CPU's)."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    # accelerate copies PartialState's fields into AcceleratorState whenever one is created: set both
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    acc.state.distributed_type = DistributedType.FSDP
    if getattr(acc.state, "fsdp_plugin", None) is None:
        plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* variables
        if acc.mixed_precision != "no":
            plugin.set_mixed_precision(acc.mixed_precision)
        acc.state.fsdp_plugin = plugin


def make_accelerator(mixed_precision="no", cpu=None):
    """An ``Accelerator`` (CPU when there is no CUDA device).

    Raises when the launcher started several processes but accelerate set up a single-process state, or an FSDP
    launch that accelerate runs as plain data parallelism (FSDP on a machine without GPUs: every rank would hold
    the whole model, which is exactly what the config was chosen to avoid), and for FSDP1 configs (the loop
    supports FSDP2, ``fsdp_version: 2``). ``NEURORECON_FSDP_ON_CPU=1`` runs an FSDP launch on CPU ranks (gloo)
    instead, for tests.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    if cpu is None:
        cpu = not torch.cuda.is_available()
    acc = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and acc.num_processes != launched:
        raise NeuroreconError(
            f"the launcher started {launched} processes (WORLD_SIZE) but accelerate set up "
            f"{acc.num_processes} ({acc.distributed_type}); FSDP and DeepSpeed configs need GPUs, use the DDP "
            "config (or torchrun without them) on CPU")
    if _fsdp_requested() and acc.num_processes > 1 and acc.distributed_type != DistributedType.FSDP:
        if os.environ.get(FSDP_ON_CPU) != "1":
            raise NeuroreconError(
                f"an FSDP launch, but accelerate set up {acc.distributed_type} (no GPUs): every rank would hold "
                f"the whole model; use the DDP config on CPU (or set {FSDP_ON_CPU}=1 to test FSDP on gloo)")
        _fsdp_on_cpu(acc)
    if is_sharded(acc) and acc.state.fsdp_plugin.fsdp_version != 2:
        raise ConfigError(f"FSDP version {acc.state.fsdp_plugin.fsdp_version}: neurorecon's training loop "
                          "supports FSDP2 only; set fsdp_version: 2 in the accelerate config (see fsdp_8gpu.yaml)")
    return acc


@contextlib.contextmanager
def _wrap_present_layers(acc, model):
    """Under FSDP, auto-wrap only the configured layer classes that ``model`` has (accelerate refuses a model
    without them: the ViT3D has no Llama layers; it is then sharded as one unit)."""
    plugin = acc.state.fsdp_plugin if is_sharded(acc) else None
    names = getattr(plugin, "transformer_cls_names_to_wrap", None)
    if not names:
        yield
        return
    present = {type(m).__name__ for m in model.modules()}
    plugin.transformer_cls_names_to_wrap = [n for n in names if n in present]
    try:
        yield
    finally:
        plugin.transformer_cls_names_to_wrap = names


def _phase(name):
    """Called between the filesystem operations of a checkpoint write (a no-op; tests replace it to kill the
    process at each point)."""


def _step_dir(ckpt_dir, step):
    return Path(ckpt_dir) / f"step-{int(step):09d}"


def _complete_steps(ckpt_dir):
    """Step folders holding ``step.json`` (written last), newest first."""
    found = [p for p in Path(ckpt_dir).glob("step-*") if p.is_dir() and (p / "step.json").is_file()]
    return sorted(found, key=lambda p: p.name, reverse=True)


def save_checkpoint(accelerator, ckpt_dir, step, info):
    """Save ``accelerate`` state as ``ckpt_dir/step-<step>/`` and point ``ckpt_dir/latest`` at it.

    Every rank writes into the same step-named folder (accelerate saves each rank's RNG state there); the main
    process then writes ``step.json`` (last, so a folder with it is complete), replaces the ``latest`` symlink
    in one atomic rename and only then deletes the older step folders. A kill at any point leaves ``latest``
    pointing at a complete checkpoint (or, before the first one, no checkpoint).
    """
    ckpt_dir = Path(ckpt_dir)
    target = _step_dir(ckpt_dir, step)
    main = accelerator.is_main_process
    if main:
        for p in ckpt_dir.glob("latest.partial-*"):  # leftovers of the earlier pid-named writes
            shutil.rmtree(p, ignore_errors=True)
        if target.exists():  # a killed earlier write of this very step
            shutil.rmtree(target)
    accelerator.wait_for_everyone()
    omitted = []
    handle = accelerator.register_save_state_pre_hook(
        lambda models, weights, _dir: omitted.extend(_drop_frozen(models, weights)))
    try:
        accelerator.save_state(str(target))
    finally:
        handle.remove()
    accelerator.wait_for_everyone()
    if main:
        _phase("state-written")
        tmp = target / "step.json.tmp"
        tmp.write_text(json.dumps({"step": int(step), "frozen_omitted": len(omitted), **info}))
        os.replace(tmp, target / "step.json")
        _phase("step-json-written")
        latest = ckpt_dir / "latest"
        if latest.is_dir() and not latest.is_symlink():  # a checkpoint of the earlier layout: keep it loadable
            os.replace(latest, _step_dir(ckpt_dir, _read_info(latest).get("step", 0)))
        link = ckpt_dir / f"latest.link-{os.getpid()}"
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(target.name, link)
        _phase("link-made")
        os.replace(link, latest)  # atomic: latest names the old or the new complete folder, never nothing
        _phase("latest-flipped")
        for p in ckpt_dir.glob("step-*"):
            if p.name != target.name:
                shutil.rmtree(p, ignore_errors=True)
        for p in ckpt_dir.glob("latest.link-*"):
            p.unlink(missing_ok=True)
    accelerator.wait_for_everyone()


def _frozen_keys(model):
    """State-dict keys of ``model``'s parameters that do not train (tied names included)."""
    return {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def _drop_frozen(models, weights):
    """Remove the frozen parameters from the state dicts accelerate is about to save (in place); returns their
    keys. A checkpoint is for resuming a run that has the frozen weights already (the bf16 LLM under LoRA, 16 GB
    per checkpoint at 8B; the frozen ViT3D of the brain LLaVA), so it holds what training changes:
    trainable parameters, buffers, optimizer and RNG states. (Under FSDP or DeepSpeed accelerate writes the
    models itself and ``weights`` is empty: their checkpoints stay whole.)"""
    dropped = []
    for model, state in zip(models, weights):
        keys = _frozen_keys(model) & set(state)
        for k in keys:
            del state[k]
        dropped.extend(sorted(keys))
    return dropped


def _check_saved_keys(accelerator, folder):
    """Before loading: a checkpoint without frozen weights must hold exactly this run's other keys (the strict
    check that ``load_state(strict=False)`` gives up), else the runs train different parameters."""
    from safetensors import safe_open

    for i, model in enumerate(accelerator._models):
        path = Path(folder) / (f"model_{i}.safetensors" if i else "model.safetensors")
        if not path.is_file():
            continue  # FSDP/DeepSpeed layouts, or a .bin checkpoint: accelerate loads those strictly
        with safe_open(str(path), "pt") as f:
            saved = set(f.keys())
        state = model.state_dict()
        everything = set(state)
        need = everything - _frozen_keys(model)
        # accelerate's safetensors writer keeps one name of tied tensors: a saved key set may lack tied twins
        if not saved <= everything or not (need - saved) <= _tied_twins(state, saved):
            missing, extra = sorted(need - saved)[:5], sorted(saved - everything)[:5]
            raise NeuroreconError(f"{path}: this checkpoint does not hold the parameters this run trains "
                                  f"(missing {missing}, not in the model {extra}); resume with the same settings "
                                  "or delete the folder to restart")


def _tied_twins(state, saved):
    """Keys of ``state`` whose tensor shares storage with a saved key (tied weights saved once)."""
    ptrs = {state[k].data_ptr() for k in saved if k in state}
    return {k for k, v in state.items() if k not in saved and v.data_ptr() in ptrs}


def _read_info(folder):
    try:
        return json.loads((Path(folder) / "step.json").read_text())
    except (OSError, ValueError):
        return {}


def load_checkpoint(accelerator, ckpt_dir):
    """Restore the newest complete checkpoint of ``ckpt_dir`` (``latest``, else the newest complete step folder);
    returns its ``step.json`` content, or ``None`` when there is none."""
    latest = Path(ckpt_dir) / "latest"
    folder = latest if (latest / "step.json").is_file() else next(iter(_complete_steps(ckpt_dir)), None)
    if folder is None:
        return None
    try:
        info = json.loads((folder / "step.json").read_text())
        _check_saved_keys(accelerator, folder)
        accelerator.load_state(str(folder), strict=False)  # frozen weights are not in it (see _drop_frozen)
    except NeuroreconError:
        raise
    except Exception as err:
        raise NeuroreconError(f"{folder}: expected a complete training checkpoint (accelerate state + step.json), "
                              f"found an unreadable one ({type(err).__name__}: {err}); delete the folder to "
                              "restart training from scratch") from err
    return info


LR_SCHEDULES = ("constant", "cosine")


def lr_at(lr, steps, schedule="constant", warmup_ratio=0.0):
    """``step -> learning rate`` of :func:`fit` (``schedule`` and ``warmup_ratio`` as there)."""
    if schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule {schedule!r}: expected one of {', '.join(LR_SCHEDULES)}")
    if not 0.0 <= float(warmup_ratio) < 1.0:
        raise ConfigError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    warm = int(math.ceil(float(warmup_ratio) * steps))

    def rate(step):
        if step < warm:
            return lr * (step + 1) / (warm + 1)
        if schedule == "constant":
            return lr
        return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    return rate


def fit(model, loss_fn, data, *, steps, batch_size, lr, weight_decay=0.01, seed=0, params=None, ckpt_dir=None,
        ckpt_every=0, mixed_precision="no", gradient_checkpointing=False, max_grad_norm=1.0, desc="train",
        progress=True, log_every=1, stop_after=None, accelerator=None, grad_accum=1, lr_schedule="constant",
        warmup_ratio=0.0):
    """Train ``model`` for ``steps`` optimizer steps; resumes from ``ckpt_dir`` if it holds a checkpoint.

    Parameters
    ----------
    model : torch.nn.Module
    loss_fn : callable
        ``loss_fn(model, batch, generator) -> scalar tensor``. It must call ``model(...)`` (the wrapped module
        it is given) rather than its submodules, so that DDP synchronises gradients across processes.
    data : batch source
        ``len(data)`` and ``data.batch(indices) -> dict of tensors``; an ``epoch_order(seed, epoch, global_batch)``
        method, if it has one, orders its epochs (:class:`LengthGroupedBatches`), else :func:`epoch_order`.
    steps, batch_size, lr, weight_decay : training recipe (AdamW); ``batch_size`` per process and micro-batch.
    lr_schedule : {"constant", "cosine"}
        ``lr`` throughout, or a linear warm-up over the first ``warmup_ratio`` of the steps then a cosine decay to
        zero (LLaVA's recipe). The rate is a function of the step alone, so a resumed run continues the curve.
    warmup_ratio : float
        Share of the steps spent warming up (either schedule).
    grad_accum : int
        Micro-batches per optimizer step (the global batch is ``batch_size × processes × grad_accum``).
    params : iterable, optional
        Parameters to train (default: those with ``requires_grad``).
    ckpt_dir : str or Path, optional
        Where ``accelerate`` state is saved every ``ckpt_every`` steps and at the end.
    stop_after : int, optional
        Stop (without final checkpoint) after this step: simulates a killed run in tests.

    Returns
    -------
    TrainResult
        ``model`` holds the trained module: ``model`` itself, or under FSDP an unsharded copy with the gathered
        weights (the module passed in then holds shards only; go on with the copy).
    """
    grad_accum = int(grad_accum)
    if grad_accum < 1:
        raise ConfigError(f"{desc}: grad_accum must be at least 1, got {grad_accum}")
    acc = accelerator or make_accelerator(mixed_precision)
    if gradient_checkpointing and hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing()
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    rate = lr_at(lr, steps, lr_schedule, warmup_ratio)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    original, skeleton = model, (meta_copy(model) if is_sharded(acc) else None)
    with _wrap_present_layers(acc, model):
        model, opt = acc.prepare(model, opt)
    params = [p for group in opt.param_groups for p in group["params"]]  # FSDP replaces them with shards
    world, rank = acc.num_processes, acc.process_index
    micro = batch_size * world
    global_batch = micro * grad_accum
    start, losses = 0, []
    if ckpt_dir:
        Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
        info = load_checkpoint(acc, ckpt_dir)
        if info is not None:
            start, losses = int(info["step"]), [tuple(x) for x in info["losses"]]
            had = info.get("global_batch", global_batch)
            if had != global_batch:
                raise NeuroreconError(
                    f"{ckpt_dir}: the checkpoint was trained at a global batch of {had} (batch_size × processes × "
                    f"grad_accum = {info.get('batch_size')} × {info.get('num_processes')} × "
                    f"{info.get('grad_accum')}), this run uses {global_batch} ({batch_size} × {world} × "
                    f"{grad_accum}); resume with the same global batch or delete the folder to restart")
            if start > steps:
                raise NeuroreconError(f"{ckpt_dir}: the checkpoint is at step {start}, past this run's {steps} steps")
    n = len(data)
    per_epoch = max(1, n // global_batch)
    meta = dict(global_batch=global_batch, batch_size=batch_size, num_processes=world, grad_accum=grad_accum)
    t0 = time.time()
    model.train()
    probe = step_probe(model, params, loss_fn, desc, batch_size * grad_accum, acc.mixed_precision)  # None unless measuring
    bar = tqdm(range(start, steps), desc=desc, disable=not (progress and acc.is_main_process), leave=False,
               initial=start, total=steps)
    order_epoch, order = None, None
    for step in bar:
        epoch, pos = divmod(step, per_epoch)
        if epoch != order_epoch:  # one order per epoch, not per step (a grouped order sorts the whole epoch)
            order_epoch = epoch
            order = (data.epoch_order(seed, epoch, global_batch) if hasattr(data, "epoch_order")
                     else epoch_order(n, seed, epoch))
        chunk = order[pos * global_batch:(pos + 1) * global_batch]
        if len(chunk) < global_batch:  # fewer samples than one global batch: sample with wrap-around
            chunk = np.resize(order, global_batch)
        for group in opt.param_groups:
            group["lr"] = rate(step)
        with probe.step(step) if probe else contextlib.nullcontext():
            total = 0.0
            for k in range(grad_accum):
                start_row = k * micro + rank * batch_size
                batch = data.batch(chunk[start_row:start_row + batch_size])
                batch = {key: v.to(acc.device) if isinstance(v, torch.Tensor) else v for key, v in batch.items()}
                gen = torch.Generator(device="cpu").manual_seed(
                    int(seed) * 1_000_003 + step * 1009 + rank + k * 7_000_003)
                # gradients of all but the last micro-batch stay local; the last backward all-reduces their sum
                sync = contextlib.nullcontext() if k == grad_accum - 1 else acc.no_sync(model)
                with sync:
                    with acc.autocast():
                        loss = loss_fn(model, batch, gen)
                    acc.backward(loss / grad_accum if grad_accum > 1 else loss)
                total += loss.detach().float()
            if max_grad_norm:
                acc.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
        value = acc.reduce(total / grad_accum, reduction="mean").item()
        if not math.isfinite(value):
            raise NeuroreconError(f"{desc}: loss became {value} at step {step}; lower the learning rate")
        if (step + 1) % log_every == 0 or step == steps - 1:
            losses.append((step + 1, value))
            bar.set_postfix(loss=f"{value:.4f}")
        done = step + 1
        if ckpt_dir and ckpt_every and done % ckpt_every == 0 and done < steps:
            save_checkpoint(acc, ckpt_dir, done, dict(losses=losses, **meta))
        if stop_after is not None and done >= stop_after:
            return TrainResult(losses, done, time.time() - t0, start, _trained(acc, model, original, skeleton))
    if ckpt_dir and start < steps:  # (a run resumed from its final checkpoint has nothing new to save)
        save_checkpoint(acc, ckpt_dir, steps, dict(losses=losses, **meta))
    model.eval()
    return TrainResult(losses, steps, time.time() - t0, start, _trained(acc, model, original, skeleton).eval())


def _trained(acc, prepared, original, skeleton):
    """The module the caller goes on with: ``original`` itself, or under FSDP ``skeleton`` filled with the
    gathered weights; the accelerator's references to the prepared model and optimizer are released either way,
    so that the next phase's memory and checkpoints hold only its own."""
    trained = original if skeleton is None else load_unsharded(skeleton, full_state_dict(acc, prepared)).train(
        original.training)
    # The accelerator forgets this phase's prepared model and optimizer: a stage that trains several phases on
    # one accelerator (refinement, then its CFG-mask copy) otherwise kept every earlier phase's AdamW moments
    # alive (5.4 GB for NeuroPictor's 672 M trainable parameters; notebook 05 of the dry run died of it) and
    # saved them again in each later phase's checkpoints.
    acc.free_memory()
    return trained
