"""Trilinear resampling of masked volume data onto another grid (NV2L's cross-subject alignment).

NV2L resamples every subject's betas volume onto subject 1's array grid with trilinear interpolation (array
corners aligned). Betas are zero outside each subject's nsdgeneral mask, so the resampling is a sparse linear map
from the subject's masked voxels to the target voxels; applying it to a (trials × voxels) matrix resamples
every trial at once.
"""

import itertools

import numpy as np
import scipy.sparse as sp

__all__ = ["source_coords", "trilinear_matrix", "resample_mask"]


def source_coords(src_shape, dst_ijk, dst_shape):
    """Continuous source coordinates of destination voxels (corners aligned, as ``align_corners=True``)."""
    scale = np.array([(s - 1) / (d - 1) if d > 1 else 0.0 for s, d in zip(src_shape, dst_shape)])
    return np.asarray(dst_ijk, dtype=np.float64) * scale


def trilinear_matrix(src_ijk, src_shape, dst_ijk, dst_shape):
    """Sparse (n_dst × n_src) matrix of trilinear weights from masked source voxels to destination voxels.

    Source neighbours outside ``src_ijk`` are treated as zeros (they contribute nothing).
    """
    src_ijk = np.asarray(src_ijk)
    lookup = np.full(src_shape, -1, dtype=np.int64)
    lookup[tuple(src_ijk.T)] = np.arange(len(src_ijk))
    coords = source_coords(src_shape, dst_ijk, dst_shape)
    base = np.floor(coords).astype(np.int64)
    frac = coords - base
    rows, cols, vals = [], [], []
    hi = np.array(src_shape) - 1
    for corner in itertools.product((0, 1), repeat=3):
        c = np.array(corner)
        idx = np.minimum(base + c, hi)
        w = np.prod(np.where(c, frac, 1.0 - frac), axis=1)
        src = lookup[tuple(idx.T)]
        keep = (src >= 0) & (w > 0)
        rows.append(np.nonzero(keep)[0])
        cols.append(src[keep])
        vals.append(w[keep])
    m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(len(dst_ijk), len(src_ijk)))
    m.sum_duplicates()
    return m


def resample_mask(mask, dst_shape, threshold=0.5):
    """Resample a boolean mask onto ``dst_shape`` (trilinear, then ``> threshold``)."""
    dst_ijk = np.argwhere(np.ones(dst_shape, dtype=bool))
    src_ijk = np.argwhere(mask)
    m = trilinear_matrix(src_ijk, mask.shape, dst_ijk, dst_shape)
    values = np.asarray(m.sum(axis=1)).ravel()
    return (values > threshold).reshape(dst_shape)
