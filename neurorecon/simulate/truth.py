"""What the simulator knows about its voxels: which ones encode which object category (the ground truth of concept
maps, notebook 06).

NSD-mini's brain model (:mod:`neurorecon.simulate.brain`) gives every nsdgeneral voxel a level mix along the sheet
(:func:`~neurorecon.simulate.brain.level_weights`: low, mid, high) and, in its high part, smooth random weights
over the category counts (``Tuning`` field ``high``, first ``len(CATEGORIES)`` columns, scaled along v as in
``Tuning.responses``). The *category tuning* of a voxel for category ``c`` is

    share_high(u) * |w_high[c]| / ||w_high||

(the high level's share of the voxel's level mix times the weight of ``c`` within the voxel's high tuning): large
on high-area voxels whose response moves with ``c``, near zero in early and mid areas. Shape is a function of the
category in NSD-mini (``CATEGORY_SHAPES``), so mid-area shape tuning also carries the category; the high part is
what is category-specific and what is measured here.

The anatomy (sheet coordinates of every voxel) is redrawn from the seed and config recorded in
``nsdmini_truth.json``, exactly as :func:`neurorecon.simulate.core.simulate` drew it; a check against the prepared
store's voxel indices makes a mismatch an error rather than a wrong ground truth.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import brain
from .config import SimConfig
from .core import TRUTH_FILE
from .scenes import CATEGORIES

__all__ = ["TRUTH_FILE", "load_truth", "category_tuning"]


def load_truth(nsd_root):
    """The simulator's record (``nsdmini_truth.json``) of an NSD-mini tree, or None for a tree without one (real
    NSD)."""
    path = Path(nsd_root) / TRUTH_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _sim_config(truth):
    fields = {f.name for f in dataclasses.fields(SimConfig)}
    cfg = {k: v for k, v in truth["config"].items() if k in fields}
    if cfg.get("volume_shapes"):
        cfg["volume_shapes"] = tuple(tuple(int(a) for a in s) for s in cfg["volume_shapes"])
    return SimConfig(**cfg)


def category_tuning(truth, subject, voxel_ijk=None, categories=CATEGORIES):
    """Category tuning (see the module doc) of one subject's nsdgeneral voxels.

    Parameters
    ----------
    truth : dict
        :func:`load_truth`'s record.
    subject : int
    voxel_ijk : ndarray (V, 3), optional
        The prepared store's voxel indices of the subject; checked against the redrawn anatomy.
    categories : sequence of str
        Columns of the result (each one of the simulator's categories).

    Returns
    -------
    tuning : ndarray (V, len(categories)) float32, non-negative
    high : ndarray (V,) bool
        Voxels of the high (category) areas (u beyond the mid areas).
    """
    cfg = _sim_config(truth)
    seed, s = int(truth["seed"]), int(subject)
    anat = brain.make_anatomy(cfg, np.random.default_rng([seed, 3, s]),
                              cfg.volume_shapes[s - 1] if cfg.volume_shapes else None)
    if voxel_ijk is not None and not np.array_equal(anat.index, np.asarray(voxel_ijk)):
        raise DataError(TRUTH_FILE, f"the anatomy of subject {s} as the store prepared it",
                        "the redrawn nsdgeneral voxels differ from the store's (another simulator version?)")
    tuning = brain.Tuning(seed, cfg.feature_grid, subject=s)
    u, v = anat.u, anat.v
    wh = tuning._field("high", u, v)
    nc = len(CATEGORIES)
    wh[:, :nc] = wh[:, :nc] * (0.4 + v[:, None]) + 0.3 * np.sign(wh[:, :nc]) * v[:, None]  # as Tuning.responses
    wh[:, nc:nc + 3] *= (1.4 - v[:, None])
    wh[:, nc + 3:] *= (0.4 + v[:, None])
    lw = brain.level_weights(u)
    share = lw[:, 2] / lw.sum(1)
    rel = np.abs(wh[:, :nc]) / (np.linalg.norm(wh, axis=1, keepdims=True) + 1e-12)
    cols = [list(CATEGORIES).index(c) for c in categories]
    return (share[:, None] * rel[:, cols]).astype(np.float32), u >= brain.MID_END
