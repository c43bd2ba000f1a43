"""``make dryrun``: the full profile at real sizes on a CPU, with random weights in the real on-disk formats and a
raw NSD tree at real geometry; per-stage wall time, peak memory, parameters and FLOPs.

See :mod:`neurorecon.dryrun.weights` (the weights), :mod:`neurorecon.dryrun.nsd` (the tree) and
:mod:`neurorecon.dryrun.run` (the measurement).
"""

__all__ = []
