"""Work split across the processes of an ``accelerate``/``torchrun`` launch: each rank its slice, gathered in order.

Training splits batches inside :func:`neurorecon.training.fit`; everything else a stage does over many items
(caching VAE latents, sampling validation images) uses these helpers so that N processes do 1/N of the work
each instead of the main process doing all of it while the others wait at a barrier (at full size that is
hours, past the process group's timeout). Slices are contiguous blocks in rank order, so concatenating the
ranks' results gives the single-process order, also for uneven splits (``n`` not a multiple of the number of
processes, or fewer items than processes: a rank may get an empty slice).

Every function accepts ``accelerator=None`` (one process: the whole range, no communication).
"""

import torch

__all__ = ["shard", "shard_bounds", "gather", "world"]


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

    The result (on every rank, on ``tensor``'s device and dtype) equals what one process computing all rows
    would hold. Ranks may hold different numbers of rows (zero included); the other dimensions must agree.
    With NCCL the tensors travel through the accelerator's device.
    """
    num, _ = world(accelerator)
    if num == 1:
        return tensor
    device, dtype = tensor.device, tensor.dtype
    x = tensor.to(accelerator.device)
    if dtype == torch.bool:  # not every backend reduces/gathers bools
        x = x.to(torch.uint8)
    sizes = accelerator.gather(torch.tensor([x.shape[0]], device=accelerator.device)).tolist()
    longest = max(sizes)
    if longest == 0:
        return tensor
    if x.shape[0] < longest:
        pad = torch.zeros((longest - x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
        x = torch.cat([x, pad])
    every = accelerator.gather(x.contiguous())  # (num × longest, ...), rank-major
    parts = [every[r * longest:r * longest + sizes[r]] for r in range(num)]
    return torch.cat(parts).to(device=device, dtype=dtype)
