"""Low-level and feature-space scores of the MindEye protocol (``docs/evaluation_protocol.md``).

- :func:`pixcorr`: resize both sides to 425 px, flatten RGB, Pearson r per (ground truth, reconstruction) pair,
  mean (MindEye: ``np.corrcoef`` per pair);
- :func:`ssim`: resize to 425 px, ``skimage.color.rgb2gray``, ``structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1.0)`` per pair, mean;
- :func:`two_way_identification`: the shared vectorised implementation of :mod:`neurorecon.metrics` (strict
  ``<``, divided by N − 1, averaged; chance 0.5; one N × N Pearson matrix, ~0.1 s for 1000 × 1000 with 768-d
  features on 2 CPU cores; it holds float64 copies of both feature arrays, about 4 × N × d × 8 bytes, e.g.
  ~4 GB for AlexNet(2)'s 140k-d features of 982 images, as MindEye's ``np.corrcoef`` of the stacked features);
- :func:`correlation_distance`: mean over pairs of ``1 − r`` (``scipy.spatial.distance.correlation``), the
  EffNet-B and SwAV score (lower is better).

Scores are fractions (multiply two-way identification by 100 for the papers' percentages).
"""

import numpy as np
import torch

from .. import metrics as _shared
from .images import ANTIALIAS, as_float_images, protocol_resize

__all__ = ["PIX_SIZE", "pixcorr", "ssim", "two_way_identification", "correlation_distance"]

#: Side (px) both images are resized to for PixCorr and SSIM.
PIX_SIZE = 425

#: The shared implementation (``r[i, j] = corr(gt_i, rec_j)``; for each reconstruction j the fraction of ground
#: truths i ≠ j with ``r[i, j] < r[j, j]``, averaged over j).
two_way_identification = _shared.two_way_identification


def _check_pairs(gt, rec):
    if len(gt) != len(rec):
        raise ValueError(f"{len(gt)} ground truths but {len(rec)} reconstructions: they must be paired")
    if len(gt) == 0:
        raise ValueError("no images to score")


def pixcorr(gt, rec, size=PIX_SIZE, antialias=ANTIALIAS, chunk=64):
    """PixCorr: mean Pearson r between flattened resized RGB ground truth and reconstruction, per pair.

    Parameters
    ----------
    gt, rec : uint8 (n, H, W, 3) arrays or float (n, 3, H, W) tensors in [0, 1]
        Paired images (any sizes; each side is resized to ``size``).
    size : int
    antialias : bool
    chunk : int
        Images resized at a time (bounds memory: 982 images at 425 px are 2 GB in float32).

    Returns
    -------
    float
    """
    _check_pairs(gt, rec)
    total = 0.0
    for i in range(0, len(gt), chunk):
        g = protocol_resize(gt[i:i + chunk], size, antialias)
        r = protocol_resize(rec[i:i + chunk], size, antialias)
        total += _shared.paired_pearson(g, r) * len(g)  # the per-pair Pearson mean, weighted back to a sum
    return float(total / len(gt))


def ssim(gt, rec, size=PIX_SIZE, antialias=ANTIALIAS, chunk=64, grey=True):
    """SSIM (skimage, Gaussian weights σ = 1.5, population covariance, data range 1) per pair, mean.

    The protocol's SSIM (the defaults) is that of the grey-scale images resized to 425 px. ``size=None`` scores
    the images at their own size and ``grey=False`` on the RGB channels: the foundation stage's VAE check
    (:func:`neurorecon.foundation.evaluate.vae_quality`) uses both, so its SSIM is not the protocol's.

    Parameters are those of :func:`pixcorr`, plus ``grey`` (``skimage.color.rgb2gray`` first).
    """
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    _check_pairs(gt, rec)
    scores = []
    for i in range(0, len(gt), chunk):
        g, r = (protocol_resize(x[i:i + chunk], size, antialias) if size else as_float_images(x[i:i + chunk])
                for x in (gt, rec))
        g, r = (x.permute(0, 2, 3, 1).numpy() for x in (g, r))
        g, r = (rgb2gray(g), rgb2gray(r)) if grey else (g.astype(np.float64), r.astype(np.float64))
        for a, b in zip(g, r):
            scores.append(structural_similarity(b, a, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                                data_range=1.0, channel_axis=None if grey else -1))
    return float(np.mean(scores))


def correlation_distance(gt_feats, rec_feats):
    """Mean over pairs of the correlation distance ``1 − corr(gt_i, rec_i)`` of flattened features (lower is
    better; 1 is chance for unrelated features).

    Parameters
    ----------
    gt_feats, rec_feats : array or Tensor (n, ...)
    """
    if isinstance(gt_feats, torch.Tensor):
        gt_feats = gt_feats.detach().cpu()
    if isinstance(rec_feats, torch.Tensor):
        rec_feats = rec_feats.detach().cpu()
    _check_pairs(gt_feats, rec_feats)
    # mean(1 - r_i) = 1 - mean(r_i)
    return float(1.0 - _shared.paired_pearson(gt_feats, rec_feats))
