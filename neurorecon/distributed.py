"""Work split across the processes of an ``accelerate``/``torchrun`` launch: each rank its slice, gathered in order.

Training splits batches inside :func:`neurorecon.training.fit`; everything else a stage does over many items
(caching VAE latents, sampling validation images) uses these helpers so that N processes do 1/N of the work
each instead of the main process doing all of it while the others wait at a barrier (at full size that is
hours, past the process group's timeout). Slices are contiguous blocks in rank order, so concatenating the
ranks' results gives the single-process order, also for uneven splits (``n`` not a multiple of the number of
processes, or fewer items than processes: a rank may get an empty slice).

Every function accepts ``accelerator=None`` (one process: the whole range, no communication).
"""

import contextlib

import torch

__all__ = ["shard", "shard_bounds", "gather", "world", "main_writer", "num_processes", "require_single_process"]


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


def num_processes():
    """The number of processes of this launch (1 without ``torchrun``/``accelerate launch``)."""
    from accelerate import PartialState

    return int(PartialState().num_processes)


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
