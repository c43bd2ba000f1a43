"""Work split across the processes of an ``accelerate``/``torchrun`` launch: each rank its slice, gathered in order.

Training splits batches inside :func:`neurorecon.training.fit`; everything else a stage does over many items
(caching VAE latents, sampling validation images) uses these helpers so that N processes do 1/N of the work
each instead of the main process doing all of it while the others wait at a barrier (at full size that is
hours, past the process group's timeout). Slices are contiguous blocks in rank order, so concatenating the
ranks' results gives the single-process order, also for uneven splits (``n`` not a multiple of the number of
processes, or fewer items than processes: a rank may get an empty slice).

Every function accepts ``accelerator=None`` (one process: the whole range, no communication).

Sharded training (FSDP2, ``configs/accelerate/fsdp_8gpu.yaml``) splits every parameter across the ranks, so no
rank's ``model.state_dict()`` holds the model. :func:`full_state_dict` gathers it (a collective: every rank
calls it), :func:`meta_copy` keeps an empty (meta-device) copy of a module taken before sharding and
:func:`load_unsharded` fills that copy with the gathered weights: an ordinary module again, for the next
training phase, evaluation or ``save_pretrained``.
"""

import contextlib
import copy

import torch

__all__ = ["shard", "shard_bounds", "gather", "world", "main_writer", "num_processes", "require_single_process",
           "end_process_group", "ending_process_group", "is_sharded", "require_unsharded", "full_state_dict", "meta_copy", "load_unsharded"]


def world(accelerator=None):
    """``(num_processes, process_index)`` of ``accelerator`` (``(1, 0)`` without one)."""
    if accelerator is None:
        return 1, 0
    return int(accelerator.num_processes), int(accelerator.process_index)


def shard_bounds(n, num_processes, rank):
    """``(start, stop)`` of rank ``rank``'s contiguous block of ``range(n)``: sizes differ by at most one."""
    n, num_processes, rank = int(n), int(num_processes), int(rank)
    if num_processes < 1 or not 0 <= rank < num_processes:
        raise ValueError(f"rank {rank} of {num_processes} processes")
    base, extra = divmod(n, num_processes)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(n, accelerator=None):
    """This process's ``slice`` of ``range(n)`` (all of it in a single process)."""
    return slice(*shard_bounds(n, *world(accelerator)))


def gather(tensor, accelerator=None):
    """Concatenate every rank's ``tensor`` (its :func:`shard` of the rows) along dim 0, in rank order.

    The result (on every rank, on ``tensor``'s device) equals what one process computing all rows would hold.
    Ranks may hold different numbers of rows; a rank with none may pass any empty tensor (its trailing shape
    and dtype are taken from the others). With NCCL the tensors travel through the accelerator's device.
    """
    num, _ = world(accelerator)
    if num == 1:
        return tensor
    from accelerate.utils import gather_object

    meta = gather_object([(int(tensor.shape[0]) if tensor.ndim else 0, tuple(tensor.shape[1:]), str(tensor.dtype))])
    full = [m for m in meta if m[0] > 0]
    if not full:
        return tensor
    trailing, dtype = full[0][1], getattr(torch, full[0][2].replace("torch.", ""))
    bad = [m for m in full if m[1] != trailing or m[2] != full[0][2]]
    if bad:
        kinds = sorted({(m[1], m[2]) for m in meta})
        raise ValueError(f"gather: ranks hold rows of different shapes/dtypes {kinds}")
    sizes = [m[0] for m in meta]
    longest = max(sizes)
    x = tensor.to(accelerator.device) if tensor.numel() else torch.zeros((0,) + trailing, dtype=dtype,
                                                                          device=accelerator.device)
    wire = torch.uint8 if dtype == torch.bool else dtype  # not every backend gathers bools
    x = x.to(wire)
    if x.shape[0] < longest:
        x = torch.cat([x, torch.zeros((longest - x.shape[0],) + trailing, dtype=wire, device=x.device)])
    every = accelerator.gather(x.contiguous())  # (num × longest, ...), rank-major
    parts = [every[r * longest:r * longest + sizes[r]] for r in range(num)]
    return torch.cat(parts).to(device=tensor.device, dtype=dtype)


def is_sharded(accelerator=None):
    """Whether ``accelerator`` shards the models it prepares (FSDP): then a prepared model's parameters are
    per-rank shards (DTensors) and its weights must be gathered with :func:`full_state_dict`."""
    if accelerator is None:
        return False
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def require_unsharded(accelerator, stage):
    """Raise when ``stage`` (one whose models fit a GPU and that uses the module it trained afterwards) was
    launched with a sharding (FSDP) config."""
    if is_sharded(accelerator):
        from .errors import ConfigError

        raise ConfigError(f"the {stage} stage trains data-parallel (its models fit one GPU): launch it with a DDP "
                          "config (ddp_8gpu.yaml); the FSDP config is for the language stage")


def full_state_dict(accelerator, model):
    """The whole state dict of ``model``, on every rank.

    Under FSDP (``model`` as returned by ``accelerator.prepare``) the shards of every rank are gathered (a
    collective: call it on every rank); the tensors are on the accelerator's device. Otherwise the (unwrapped)
    module's own ``state_dict()``.
    """
    if not is_sharded(accelerator):
        return (accelerator.unwrap_model(model) if accelerator is not None else model).state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def meta_copy(module):
    """A deep copy of ``module`` whose parameters live on the meta device (no memory); buffers and every other
    attribute are copied. Take it before ``accelerator.prepare`` shards the module; :func:`load_unsharded`
    fills it."""
    memo = {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in module.parameters()}
    return copy.deepcopy(module, memo)


def _tied_groups(module):
    """Names of the parameters that are one tensor (tied weights), one list per tensor shared by several."""
    groups = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _set_param(module, name, param):
    owner, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(owner) if owner else module, leaf, param)


def load_unsharded(skeleton, state_dict):
    """Fill a :func:`meta_copy` with a full state dict (every key must match) and return it; tied weights stay
    tied and each parameter keeps the skeleton's ``requires_grad``."""
    groups = _tied_groups(skeleton)
    skeleton.load_state_dict(state_dict, strict=True, assign=True)
    for names in groups:
        first = skeleton.get_parameter(names[0])
        for name in names[1:]:
            _set_param(skeleton, name, first)
    left = [n for n, t in list(skeleton.named_parameters()) + list(skeleton.named_buffers()) if t.is_meta]
    if left:
        raise ValueError(f"load_unsharded: no weights for {left[:5]} (the state dict is not this module's)")
    return skeleton


def num_processes():
    """The number of processes of this launch (1 without ``torchrun``/``accelerate launch``)."""
    from accelerate import PartialState

    return int(PartialState().num_processes)


def end_process_group():
    """Destroy this process's default process group, if one was set up (a no-op in a single process).

    Every entry point that may run under ``torchrun``/``accelerate launch`` calls it when it is done, on every
    rank: a process that exits with a live gloo group can abort during interpreter shutdown (the group's worker
    threads still hold work when Python tears down; "terminate called without an active exception", SIGABRT),
    which fails the launch after the work is done. Not a barrier: a rank that has finished leaves while the main
    one may still be writing the stage folder.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def ending_process_group():
    """Run the block, then :func:`end_process_group` (also when the block raises: the traceback is then the
    block's, not an abort at shutdown)."""
    try:
        yield
    finally:
        end_process_group()


def require_single_process(stage):
    """Raise when ``stage`` (one that runs as a single process) was started under a multi-process launcher:
    every rank would train, evaluate and write the same stage folder."""
    import os

    from .errors import ConfigError

    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1:
        raise ConfigError(f"the {stage} stage runs as one process, but it was launched as {launched} "
                          "(WORLD_SIZE); run it without torchrun/accelerate launch")


class _Discard:
    """What non-main processes write metrics into: nothing (the main process's :class:`StageWriter` records)."""

    path = None

    def add_metric(self, *args, **kwargs):
        pass


@contextlib.contextmanager
def main_writer(accelerator, config):
    """The stage's :class:`~neurorecon.artifacts.StageWriter` on the main process, a writer that discards on the
    others: every process runs the same evaluation code (its share of the sampling, :func:`gather`), only the
    main one writes (guard file writes with ``accelerator.is_main_process``)."""
    if accelerator is None or accelerator.is_main_process:
        from .artifacts import StageWriter

        with StageWriter(config) as w:
            yield w
    else:
        yield _Discard()
