"""Trilinear resampling of masked volume data onto another grid (NV2L's cross-subject alignment).

NV2L resamples every subject's betas volume onto subject 1's array grid with trilinear interpolation (array
corners aligned) and keeps the union of the subjects' nsdgeneral masks there. Only the source voxels that the
interpolation at those target voxels reads (:func:`trilinear_support`: the 8 neighbours of each target's source
coordinate) matter, so the resampling is a sparse linear map from them to the target voxels; applying it to a
(trials × voxels) matrix resamples every trial at once.
"""

import itertools

import numpy as np
import scipy.sparse as sp

__all__ = ["source_coords", "trilinear_support", "trilinear_matrix", "resample_mask"]


def source_coords(src_shape, dst_ijk, dst_shape):
    """Continuous source coordinates of destination voxels (corners aligned, as ``align_corners=True``)."""
    scale = np.array([(s - 1) / (d - 1) if d > 1 else 0.0 for s, d in zip(src_shape, dst_shape)])
    return np.asarray(dst_ijk, dtype=np.float64) * scale


def _corners(src_shape, dst_ijk, dst_shape):
    """The 8 trilinear neighbours of each destination voxel: yields ``(source ijk (n_dst, 3), weight (n_dst,))``
    per corner."""
    coords = source_coords(src_shape, dst_ijk, dst_shape)
    base = np.floor(coords).astype(np.int64)
    frac = coords - base
    hi = np.array(src_shape) - 1
    for corner in itertools.product((0, 1), repeat=3):
        c = np.array(corner)
        yield np.minimum(base + c, hi), np.prod(np.where(c, frac, 1.0 - frac), axis=1)


def trilinear_support(src_shape, dst_ijk, dst_shape):
    """Boolean ``src_shape`` volume of the source voxels that trilinear interpolation at ``dst_ijk`` reads with a
    positive weight (what must be read to resample a whole volume there)."""
    touched = np.zeros(src_shape, dtype=bool)
    for idx, w in _corners(src_shape, dst_ijk, dst_shape):
        touched[tuple(idx[w > 0].T)] = True
    return touched


def trilinear_matrix(src_ijk, src_shape, dst_ijk, dst_shape):
    """Sparse (n_dst × n_src) matrix of trilinear weights from masked source voxels to destination voxels.

    Source neighbours outside ``src_ijk`` are treated as zeros (they contribute nothing); with ``src_ijk`` covering
    :func:`trilinear_support` it resamples the whole volume.
    """
    src_ijk = np.asarray(src_ijk)
    lookup = np.full(src_shape, -1, dtype=np.int64)
    lookup[tuple(src_ijk.T)] = np.arange(len(src_ijk))
    rows, cols, vals = [], [], []
    for idx, w in _corners(src_shape, dst_ijk, dst_shape):
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
