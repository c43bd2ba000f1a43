"""The experimental design: image ids per subject, trial order, and the merged stimulus-info table."""

import math

import numpy as np
import pandas as pd

from .config import N_SUBJECTS

__all__ = ["Design", "make_design", "stim_info"]


class Design:
    """The NSD-like design (all indices as in the real files: 1-based).

    Attributes
    ----------
    n_total : int
        Number of image ids (rows of the stimulus brick and of the stim-info table).
    subjectim : numpy.ndarray
        (8, n_images) 1-based image ids; the first ``n_shared`` columns are ``sharedix``.
    sharedix : numpy.ndarray
        (n_shared,) 1-based ids of the shared images (ascending).
    masterordering : numpy.ndarray
        (3 * n_images,) 1-based indices into a subject's image list, one per global trial.
    coco_split : numpy.ndarray
        (n_total,) ``train2017`` / ``val2017`` per image id.
    n_trials : dict
        Subject (1..8) -> number of completed trials.
    """

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def trial_ids(self, subject):
        """0-based image ids of a subject's completed trials, in trial order."""
        t = self.masterordering[: self.n_trials[subject]]
        return self.subjectim[subject - 1, t - 1] - 1


def make_design(cfg, rng):
    """Draw the design.

    Every subject image is shown 3 times; the three presentations are spread at random over the whole
    experiment (so test images also appear in early sessions), one ordering for all subjects as in NSD.

    Parameters
    ----------
    cfg : SimConfig
    rng : numpy.random.Generator

    Returns
    -------
    Design
    """
    n_img = cfg.n_images
    n_used = cfg.n_shared + N_SUBJECTS * cfg.n_train
    n_total = int(math.ceil(n_used * (1 + cfg.extra_images)))
    ids = rng.permutation(n_total)[:n_used] + 1
    shared = np.sort(ids[: cfg.n_shared])
    subjectim = np.stack([np.concatenate([shared, np.sort(ids[cfg.n_shared + s * cfg.n_train:
                                                                cfg.n_shared + (s + 1) * cfg.n_train])])
                          for s in range(N_SUBJECTS)])
    masterordering = rng.permutation(np.repeat(np.arange(1, n_img + 1), 3))
    split = np.where(rng.random(n_total) < cfg.val_fraction, "val2017", "train2017")
    n_trials = {s + 1: cfg.sessions[s] * cfg.trials_per_session for s in range(N_SUBJECTS)}
    return Design(n_total=n_total, subjectim=subjectim, sharedix=shared, masterordering=masterordering,
                  coco_split=split, n_trials=n_trials)


def stim_info(design):
    """The ``nsd_stim_info_merged.csv`` table (one row per image id, ``nsdId`` 0-based).

    ``subjectK_repR`` holds the 1-based global trial number of presentation R of the image to subject K, or 0
    when the image is not in the subject's list or that presentation falls after the subject's last session.
    """
    n = design.n_total
    nsd = np.arange(n)
    table = dict(cocoId=100000 + nsd + 1, cocoSplit=design.coco_split, cropBox=["(0, 0, 0, 0)"] * n,
                 loss=np.zeros(n), nsdId=nsd, flagged=np.zeros(n, bool), BOLD5000=np.zeros(n, bool),
                 shared1000=np.isin(nsd + 1, design.sharedix))
    trials = np.argsort(design.masterordering, kind="stable").reshape(-1, 3) + 1  # per image column, sorted
    reps = {}
    for s in range(1, N_SUBJECTS + 1):
        table[f"subject{s}"] = np.isin(nsd + 1, design.subjectim[s - 1])
        rows = design.subjectim[s - 1] - 1
        shown = np.where(trials <= design.n_trials[s], trials, 0)
        for r in range(3):
            col = np.zeros(n, np.int64)
            col[rows] = shown[:, r]
            reps[f"subject{s}_rep{r}"] = col
    return pd.DataFrame({**table, **reps})
