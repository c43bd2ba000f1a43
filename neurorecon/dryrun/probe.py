"""Opt-in measurement of training steps (used by ``make dryrun``; off unless ``$NEURORECON_STEP_PROFILE`` is set).

When the variable names a file, :func:`neurorecon.training.fit` appends one JSON line per optimizer step to it:
the loop's name (``desc``), step, wall seconds of the step, the process's peak resident memory so far, the
trainable and frozen parameter counts, and for the first step of each ``fit`` call its FLOPs as counted by
``torch.utils.flop_counter.FlopCounterMode`` (forward, backward, recomputation under gradient checkpointing;
matrix products, convolutions and attention, the ops that dominate), with the FLOPs per top-level submodule.
The measurement does not change what is computed.
"""

import contextlib
import functools
import json
import os
import resource
import time

import torch

__all__ = ["ENV", "step_probe", "StepProbe", "frozen_and_trainable"]

ENV = "NEURORECON_STEP_PROFILE"


def _modules_in(obj, depth=2, seen=None):
    """nn.Modules reachable from ``obj`` through closures, bound ``self``, partial arguments and attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth < 0:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.nn.Module):
        return [obj]
    found = []
    if isinstance(obj, functools.partial):
        children = [obj.func, *obj.args, *obj.keywords.values()]
    elif callable(obj) and hasattr(obj, "__closure__"):
        children = [c.cell_contents for c in (obj.__closure__ or ()) if _has_contents(c)]
        children += [getattr(obj, "__self__", None)]
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        children = list(vars(obj).values())
    else:
        children = []
    for child in children:
        if child is not None:
            found += _modules_in(child, depth - 1, seen)
    return found


def _has_contents(cell):
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def frozen_and_trainable(model, loss_fn, params):
    """(trainable, frozen) parameter counts: ``params`` vs every other parameter of the model and of the modules
    the loss function reaches (the frozen foundation parts it calls)."""
    trainable = {id(p): p.numel() for p in params}
    frozen = {}
    for module in [model, *_modules_in(loss_fn)]:
        for p in module.parameters():
            if id(p) not in trainable:
                frozen[id(p)] = p.numel()
    return int(sum(trainable.values())), int(sum(frozen.values()))


class StepProbe:
    """Records each step of one ``fit`` call (see the module docstring)."""

    def __init__(self, path, model, params, loss_fn, desc, batch_size, mixed_precision):
        self.path, self.desc = path, desc
        self.trainable, self.frozen = frozen_and_trainable(model, loss_fn, params)
        self.batch_size, self.mixed_precision = int(batch_size), str(mixed_precision)
        self.first = True

    @contextlib.contextmanager
    def step(self, step):
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False) if self.first else None
        t0 = time.perf_counter()
        with counter if counter is not None else contextlib.nullcontext():
            yield
        seconds = time.perf_counter() - t0
        rec = dict(desc=self.desc, step=int(step), seconds=round(seconds, 3), batch_size=self.batch_size,
                   mixed_precision=self.mixed_precision, trainable=self.trainable, frozen=self.frozen,
                   peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
                   threads=torch.get_num_threads(), pid=os.getpid(), time=time.time())
        if counter is not None:
            rec["flops"] = int(counter.get_total_flops())
            counts = counter.get_flop_counts()
            rec["flops_by_module"] = {name: int(sum(ops.values())) for name, ops in counts.items()
                                      if name.count(".") <= 1 or ".layers." in name and name.count(".") <= 4}
            self.first = False
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")


def step_probe(model, params, loss_fn, desc, batch_size, mixed_precision):
    """A :class:`StepProbe` when ``$NEURORECON_STEP_PROFILE`` is set, else None."""
    path = os.environ.get(ENV)
    if not path:
        return None
    return StepProbe(path, model, params, loss_fn, desc, batch_size, mixed_precision)
