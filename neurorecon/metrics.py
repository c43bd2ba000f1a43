"""Small reusable evaluation metrics (the MindEye protocol's building blocks; see
``docs/evaluation_protocol.md``). The full evaluation harness builds on these."""

import numpy as np
import torch

__all__ = ["two_way_identification", "retrieval_top1", "pearson_matrix", "paired_pearson", "derangement"]


def _as_2d(x):
    x = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    return x.reshape(len(x), -1)


def pearson_matrix(a, b):
    """``r[i, j] = corr(a_i, b_j)`` for row-flattened feature arrays ``a`` (n, ...) and ``b`` (m, ...)."""
    a, b = _as_2d(a), _as_2d(b)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-12
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-12
    return a @ b.T


def two_way_identification(gt_feats, rec_feats, return_per_item=False):
    """Two-way identification accuracy of reconstructions against their ground truths (chance 0.5).

    ``r[i, j] = corr(gt_i, rec_j)``; for each reconstruction j, the fraction of other ground truths i ≠ j with
    ``r[i, j] < r[j, j]`` (strict), averaged over j.

    Parameters
    ----------
    gt_feats, rec_feats : array or Tensor (n, ...)
        Features of the n ground truths and of the n reconstructions (same order), flattened per item.
    return_per_item : bool
        Also return the (n,) per-reconstruction fractions.
    """
    r = pearson_matrix(gt_feats, rec_feats)
    n = r.shape[0]
    if n < 2 or r.shape[1] != n:
        raise ValueError(f"two-way identification needs n >= 2 paired items, got {r.shape}")
    diag = np.diag(r)
    wins = (r < diag[None, :]).sum(0)  # the diagonal never counts (strict <)
    per = wins / (n - 1)
    return (float(per.mean()), per) if return_per_item else float(per.mean())


def retrieval_top1(a, b):
    """Top-1 retrieval accuracy between paired embeddings (cosine): (a→b, b→a); chance 1/n."""
    a, b = _as_2d(a), _as_2d(b)
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-12
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-12
    s = a @ b.T
    idx = np.arange(len(a))
    return float((s.argmax(1) == idx).mean()), float((s.argmax(0) == idx).mean())


def paired_pearson(gt, rec):
    """Mean over pairs of the Pearson r between flattened ``gt_i`` and ``rec_i`` (n, ...), nothing resized.

    The core of PixCorr (:func:`neurorecon.evaluation.lowlevel.pixcorr`, which first resizes both sides to the
    protocol's 425 px: call that one for PixCorr) and of the correlation distance of EffNet-B and SwAV."""
    a, b = _as_2d(gt), _as_2d(rec)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    r = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return float(r.mean())


def derangement(n, seed):
    """A permutation of range(n) without fixed points, drawn from ``seed``: the shuffled-fMRI control (each input
    goes to another image's slot). Raises ValueError for n < 2 (no such permutation)."""
    if n < 2:
        raise ValueError("the shuffled control needs at least 2 test images")
    p = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[p] = p[(np.arange(n) + 1) % n]
    return out
