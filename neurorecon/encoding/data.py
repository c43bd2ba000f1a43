"""Flat maps for the calibrated encoder: the visual mask, the pretraining pool and a batch source over it."""

import numpy as np
import torch

from ..data import load_flatmap
from ..errors import DataError

__all__ = ["visual_mask", "StackedMaps", "pretraining_arrays", "check_flat"]


def check_flat(store):
    """The flat-map shape (H, W) of a store, or a clear error if it has no flat maps."""
    shape = store.meta.get("flat_shape")
    if not shape:
        raise DataError(store.folder / "store.json", "a prepared store with flat maps (flat_shape set; prepare "
                        "with surface betas and a flat-map file)", "flat_shape null")
    if shape[0] != shape[1]:
        raise DataError(store.folder / "store.json", "square flat maps", f"flat_shape {shape}")
    return tuple(shape)


def visual_mask(store):
    """Bool (H, W) visual-cortex mask: the pixels of the store's ``flatmap.npz``, else its ``visual_mask.npy``
    (stores of NeuroPictor's released maps), else every pixel that is nonzero in some map."""
    shape = check_flat(store)
    path = store.folder / "flatmap.npz"
    if path.is_file():
        mask = load_flatmap(path).mask
    elif (store.folder / "visual_mask.npy").is_file():
        path = store.folder / "visual_mask.npy"
        mask = np.load(path).astype(bool)
    else:
        mask = np.zeros(shape, dtype=bool)
        for s in store.subjects:
            flat = store.subject(s).train_flat
            mask |= np.any(np.asarray(flat[: min(len(flat), 256)]) != 0, axis=0)
    if mask.shape != shape or not mask.any():
        raise DataError(path, f"a non-empty visual mask of shape {shape}", f"shape {mask.shape}, {mask.sum()} pixels")
    return mask


def pretraining_arrays(store, subjects, resting=True, trials=True):
    """The unlabeled pretraining pool: each subject's resting maps (the UK Biobank analog) and single training trials.

    Returns
    -------
    arrays : list of (n_i, H, W) float16 arrays (memory-mapped, never copied)
    counts : dict name → number of maps
    """
    arrays, counts = [], {}
    for s in subjects:
        sub = store.subject(s)
        if resting and sub.resting_flat is not None:
            arrays.append(sub.resting_flat)
            counts[f"subj{s:02d}_resting"] = len(sub.resting_flat)
        if trials:
            if sub.train_flat is None:
                raise DataError(sub.folder / "train_flat.npy", "training flat maps", "no such file")
            arrays.append(sub.train_flat)
            counts[f"subj{s:02d}_trials"] = len(sub.train_flat)
    if not arrays:
        raise DataError(store.folder, f"flat maps of subjects {list(subjects)} to pretrain on", "none")
    return arrays, counts


class StackedMaps:
    """Batch source over several (n_i, H, W) arrays seen as one: ``batch(idx) -> {"maps": float32 (b, H, W)}``."""

    def __init__(self, arrays):
        self.arrays = list(arrays)
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self):
        return int(self.offsets[-1])

    def batch(self, indices):
        indices = np.asarray(indices)
        # gathered in the stored dtype (float16) and converted by torch: NumPy's float16 -> float32 cast cost
        # 25x the gather itself (benchmarks/bench_loading.py)
        dtype = np.result_type(*(a.dtype for a in self.arrays))
        out = np.empty((len(indices),) + self.arrays[0].shape[1:], dtype=dtype)
        which = np.searchsorted(self.offsets, indices, side="right") - 1
        for k in np.unique(which):
            sel = np.nonzero(which == k)[0]
            local = indices[sel] - self.offsets[k]
            order = np.argsort(local)
            out[sel[order]] = self.arrays[k][local[order]]
        return {"maps": torch.from_numpy(out).float()}
