"""Split-half reliability (a noise-ceiling proxy) of repeated test trials."""

import numpy as np

__all__ = ["split_half_reliability", "spearman_brown"]


def split_half_reliability(trial_betas, trial_image_ids):
    """Per-voxel correlation, across images, between an image's first and second repetition.

    Parameters
    ----------
    trial_betas : ndarray (n_trials, V)
    trial_image_ids : ndarray (n_trials,)

    Returns
    -------
    ndarray (V,)
        Pearson r per voxel over the images with at least two repetitions (nan if fewer than 3 such images).
    """
    ids = np.asarray(trial_image_ids)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    first = np.r_[True, sorted_ids[1:] != sorted_ids[:-1]]
    starts = np.nonzero(first)[0]
    counts = np.diff(np.r_[starts, len(ids)])
    ok = counts >= 2
    if ok.sum() < 3:
        return np.full(trial_betas.shape[1], np.nan)
    a = np.asarray(trial_betas[order[starts[ok]]], dtype=np.float64)
    b = np.asarray(trial_betas[order[starts[ok] + 1]], dtype=np.float64)
    a -= a.mean(0)
    b -= b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(0) / den, np.nan)


def spearman_brown(r, k):
    """Reliability of the mean of ``k`` repetitions from single-repetition reliability ``r``."""
    r = np.asarray(r, dtype=np.float64)
    return k * r / (1 + (k - 1) * r)
