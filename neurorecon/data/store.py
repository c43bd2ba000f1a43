"""The prepared store that every later stage reads (written by :func:`neurorecon.data.prepare`).

Layout of a store folder::

    store.json              format version, subjects, sizes, provenance
    images.npy              (n_images, S, S, 3) uint8, every image any prepared subject saw
    image_ids.npy           (n_images,) sorted 0-based 73k ids of those images
    annotations.json        {id: {coco_id, captions, instances, background}}  (boxes in store pixels)
    common_grid.npz         shape (subject 1's X, Y, Z), union_ijk: voxels of the union nsdgeneral mask there
    flatmap.npz             the flat-map projection used (if surface data was prepared)
    subjXX/
      subject.json          volume shape, affine, sessions, counts, common_resampling ("volume"; absent in
                            stores whose common arrays resampled only the nsdgeneral voxels), common_source_voxels
      voxel_ijk.npy         (V, 3) NIfTI indices of nsdgeneral voxels, np.argwhere order
      rois.json             {"prf-visualrois": {name: [columns]}, "streams": {...}}
      train_betas.npy       (train trials, V) float32, z-scored within session (training trials' stats)
      train_image_ids.npy   (train trials,) int64
      train_sessions.npy    (train trials,) int16, 1-based session of each trial
      test_trial_betas.npy  (test trials, V) float32, same normalisation
      test_trial_image_ids.npy
      train_common.npy / test_trial_common.npy   (trials, n_union) float16: each trial's z-scored volume resampled
                            (trilinear) onto subject 1's grid at the union mask's voxels
      train_flat.npy / test_trial_flat.npy       (trials, H, W) float16: flat maps (if surface data)
      resting_flat.npy      (n, H, W) float16: unlabeled resting maps (if present)

Test arrays are kept per trial; :class:`PreparedSubject` averages repetitions of each image on access.
"""

import json
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import DataError, MissingStageError

__all__ = ["FORMAT_VERSION", "PreparedSubject", "PreparedStore", "load_prepared", "open_store",
           "average_by_image"]

FORMAT_VERSION = 1


def average_by_image(values, image_ids, dtype=np.float32, chunk_bytes=2 ** 27, out=None):
    """Mean of the rows of ``values`` per image: returns (sorted unique ids, (n_ids, ...) means in ``dtype``).

    ``out``, optional: a callable ``(shape, dtype) -> array`` the means are written into (block by block; e.g. a
    ``.npy`` memory map, so that not even the output is held in memory).

    ``values`` may be memory-mapped: it is read a block of images at a time (about ``chunk_bytes`` of float64
    per block), so memory stays at the output plus one block. Each mean is summed in float64 in trial order,
    as one ``np.add.at`` over all rows would. A subject's real-NSD training flat maps (27k trials of 256 x 256)
    would otherwise be copied whole to float64: 14 GB per subject, per process.
    """
    image_ids = np.asarray(image_ids)
    ids, inverse, counts = np.unique(image_ids, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")  # trials grouped by image, in trial order within an image
    ends = np.cumsum(counts)
    row = int(np.prod(values.shape[1:], dtype=np.int64))
    per_block = max(1, int(chunk_bytes // (8 * max(row, 1) * max(int(counts.max(initial=1)), 1))))
    shape = (len(ids),) + tuple(values.shape[1:])
    out = np.empty(shape, dtype=dtype) if out is None else out(shape, np.dtype(dtype))
    for a in range(0, len(ids), per_block):
        b = min(a + per_block, len(ids))
        rows = order[(ends[a - 1] if a else 0):ends[b - 1]]
        block = np.asarray(values[np.sort(rows)], dtype=np.float64)  # sorted reads of a memory map
        acc = np.zeros((b - a,) + block.shape[1:], dtype=np.float64)
        np.add.at(acc, inverse[np.sort(rows)] - a, block)
        acc /= counts[a:b].reshape((-1,) + (1,) * (values.ndim - 1))
        out[a:b] = acc.astype(np.float32)  # float64 -> float32 -> dtype, as the means always were rounded
    return ids, out


class PreparedSubject:
    """One subject of a prepared store. Arrays load lazily (memory-mapped where large).

    Attributes
    ----------
    voxel_ijk : ndarray (V, 3)
    train_image_ids, train_betas : one row per training trial, in trial order
    test_image_ids, test_betas : sorted unique shared images the subject saw; betas averaged over repetitions
    test_trial_image_ids, test_trial_betas : the individual test trials
    train_flat, test_flat, train_common, test_common, resting_flat : the derived inputs (None if absent)
    rois : dict
    """

    def __init__(self, folder, subject):
        self.folder = Path(folder)
        self.subject = int(subject)
        self.info = json.loads((self.folder / "subject.json").read_text())

    def _load(self, name, mmap=True):
        path = self.folder / f"{name}.npy"
        if not path.is_file():
            return None
        return np.load(path, mmap_mode="r" if mmap else None)

    @cached_property
    def voxel_ijk(self):
        return self._load("voxel_ijk", mmap=False)

    @cached_property
    def rois(self):
        return json.loads((self.folder / "rois.json").read_text())

    @cached_property
    def train_image_ids(self):
        return self._load("train_image_ids", mmap=False)

    @cached_property
    def train_sessions(self):
        return self._load("train_sessions", mmap=False)

    @cached_property
    def train_betas(self):
        return self._load("train_betas")

    @cached_property
    def test_trial_image_ids(self):
        return self._load("test_trial_image_ids", mmap=False)

    @cached_property
    def test_trial_betas(self):
        return self._load("test_trial_betas")

    def _test_mean(self, name):
        values = self._load(name)
        if values is None:
            return None
        return average_by_image(values, self.test_trial_image_ids)[1]

    @cached_property
    def test_image_ids(self):
        return np.unique(self.test_trial_image_ids)

    @cached_property
    def test_betas(self):
        return self._test_mean("test_trial_betas")

    @cached_property
    def train_flat(self):
        return self._load("train_flat")

    @cached_property
    def test_flat(self):
        return self._test_mean("test_trial_flat")

    @cached_property
    def train_common(self):
        return self._load("train_common")

    @cached_property
    def test_common(self):
        return self._test_mean("test_trial_common")

    @cached_property
    def resting_flat(self):
        return self._load("resting_flat")

    def __repr__(self):
        return (f"PreparedSubject(subj{self.subject:02d}: {len(self.train_image_ids)} train trials, "
                f"{len(self.test_image_ids)} test images, "
                f"{0 if self.voxel_ijk is None else len(self.voxel_ijk)} voxels)")


class PreparedStore:
    """A whole prepared store: shared images and annotations plus per-subject data."""

    def __init__(self, folder):
        self.folder = Path(folder)
        meta_path = self.folder / "store.json"
        if not meta_path.is_file():
            raise MissingStageError(f"{self.folder} is not a prepared store (no store.json): run "
                                    "notebooks/01_data_preparation.ipynb or `neurorecon prepare` first")
        try:
            self.meta = json.loads(meta_path.read_text())
        except ValueError as err:
            raise DataError(meta_path, "valid JSON", f"a parse error ({err})") from err
        version = self.meta.get("format_version")
        if version != FORMAT_VERSION:
            raise DataError(meta_path, f"a prepared store of format version {FORMAT_VERSION}",
                            f"version {version}; re-run `neurorecon prepare` (or notebook 01) to rebuild it")

    @property
    def subjects(self):
        return list(self.meta["subjects"])

    def subject(self, subject):
        if int(subject) not in self.subjects:
            raise DataError(self.folder / "store.json", f"subject {subject} among the prepared subjects",
                            f"{self.subjects}")
        return PreparedSubject(self.folder / f"subj{int(subject):02d}", subject)

    @cached_property
    def image_ids(self):
        return np.load(self.folder / "image_ids.npy")

    @cached_property
    def images(self):
        return np.load(self.folder / "images.npy", mmap_mode="r")

    @cached_property
    def annotations(self):
        raw = json.loads((self.folder / "annotations.json").read_text())
        return {int(k): v for k, v in raw.items()}

    def image_index(self, ids):
        """Rows of :attr:`images` for 0-based 73k ids (error if any id is absent)."""
        ids = np.asarray(ids)
        rows = np.searchsorted(self.image_ids, ids)
        rows = np.minimum(rows, len(self.image_ids) - 1)
        if not np.array_equal(self.image_ids[rows], ids):
            missing = ids[self.image_ids[rows] != ids]
            raise DataError(self.folder / "image_ids.npy", "every requested image id", f"missing {missing[:5]}")
        return rows

    def get_images(self, ids):
        """(n, S, S, 3) uint8 images for 0-based ids."""
        return np.asarray(self.images[self.image_index(ids)])

    @cached_property
    def common_grid(self):
        z = np.load(self.folder / "common_grid.npz")
        return {"shape": tuple(int(s) for s in z["shape"]), "union_ijk": z["union_ijk"]}


def open_store(folder):
    """Open a prepared store folder (checks its format version)."""
    return PreparedStore(folder)


def load_prepared(out, subject):
    """Load one subject from a prepared store.

    Parameters
    ----------
    out : str or Path
        The store folder written by ``neurorecon prepare``.
    subject : int
        1-based NSD subject number.

    Returns
    -------
    PreparedSubject
    """
    return open_store(out).subject(subject)
