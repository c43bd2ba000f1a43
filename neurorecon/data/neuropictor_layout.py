"""NeuroPictor's released preprocessed NSD → the prepared store (``neurorecon prepare --layout neuropictor ROOT``).

The release (``ROOT`` or ``ROOT/NSD``) holds::

    fmri_npy/NN_norm/surf_XXXXXX.npy   one (256, 256) flat map per trial of subject NN (visual-cortex crop,
                                       zeros outside it; z-scored as released), trial j = file j
    fmri_npy/NN_label.npy              (trials,) the 0-based 73k image id of each trial
    unique_triallabel.npy              {subject index 0..7: training image ids} (a pickled dict)
    sub1257_shared_triallabel.npy      the shared test image ids (those a subject saw are its test images)
    COCO_73k_annots_curated.npy        (73000, 5) COCO captions per 73k id ('' = none)
    nsddata_stimuli/stimuli/images/image_XXXXXX.png

Written (the store contract of :mod:`neurorecon.data.store`, flat maps only): per subject ``train_flat`` /
``train_image_ids`` (every trial of its training images, in trial order: one-trial-per-image sampling is a
training option, not a property of the store) and ``test_trial_flat`` / ``test_trial_image_ids`` (every trial
of its test images: the repetition average and the first trial are both available downstream); trials of images
in neither list are dropped and counted in ``subject.json``. Also ``images.npy`` (the PNGs, native size unless
``image_size``), ``annotations.json`` (the curated captions), ``visual_mask.npy`` (every pixel nonzero in some
map). There are no betas, voxels or volumes: the NeuroPictor stages (notebooks 03-05, NeuroPictor rows of 07) run
on it; the ridge baseline and NV2L need a store prepared from raw NSD.

The pickled ``.npy`` files are read with a restricted unpickler (NumPy arrays, scalars, dicts, lists, sets,
strings and numbers only); anything else is refused unless ``allow_pickle``.
"""

import json
import pickle
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..artifacts import atomic_dir
from ..errors import DataError
from .store import FORMAT_VERSION

__all__ = ["prepare_neuropictor", "load_npy", "release_root"]

_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "ndarray"),
            ("numpy", "dtype"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "dict"),
            ("builtins", "list"), ("builtins", "tuple"), ("collections", "OrderedDict")}


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a plain data type")


def load_npy(path, what, allow_pickle=False):
    """A ``.npy`` file; object arrays are unpickled with data types only (``allow_pickle``: fully)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, what, "no such file")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            dtype = read(f)[2]
            if dtype.hasobject:
                return pickle.load(f) if allow_pickle else _DataOnlyUnpickler(f).load()
        return np.load(path, allow_pickle=False)
    except pickle.UnpicklingError as err:
        raise DataError(path, f"{what} holding plain data", f"{err}; if you trust the file, re-run with "
                                                             "--trust-pickle") from err
    except (ValueError, OSError, EOFError) as err:
        raise DataError(path, what, f"an unreadable .npy ({err})") from err


def release_root(root):
    """The folder holding ``fmri_npy`` (``ROOT/NSD`` or ``ROOT``)."""
    root = Path(root).expanduser()
    for cand in (root / "NSD", root):
        if (cand / "fmri_npy").is_dir():
            return cand
    raise DataError(root, "NeuroPictor's released data (fmri_npy/ under ROOT/NSD or ROOT)", "no fmri_npy folder")


def _ids(value, path, what):
    try:
        return np.unique(np.asarray(list(value) if not isinstance(value, np.ndarray) else value).astype(np.int64))
    except (TypeError, ValueError) as err:
        raise DataError(path, what, f"{type(value).__name__} ({err})") from err


def _subjects_present(fmri):
    return sorted(int(p.name[:2]) for p in fmri.glob("[0-9][0-9]_label.npy"))


def _write_maps(fmri, subject, rows, out, shape, mask):
    arr = np.lib.format.open_memmap(out, "w+", np.float16, (len(rows), *shape))
    folder = fmri / f"{subject:02d}_norm"
    for k, j in enumerate(rows):
        path = folder / f"surf_{j:06d}.npy"
        x = load_npy(path, f"the flat map of trial {j} of subject {subject}")
        if x.shape != shape:
            raise DataError(path, f"a {shape} flat map like the other trials", f"shape {x.shape}")
        arr[k] = x
        mask |= x != 0
    arr.flush()


def _prepare_subject(fmri, subject, train_ids, test_ids, folder, shape, mask):
    labels_path = fmri / f"{subject:02d}_label.npy"
    labels = np.asarray(load_npy(labels_path, f"subject {subject}'s trial labels (73k ids)")).astype(np.int64)
    if labels.ndim != 1:
        raise DataError(labels_path, "one 73k image id per trial (1-D)", f"shape {labels.shape}")
    train = np.isin(labels, train_ids)
    test = np.isin(labels, test_ids)
    if (train & test).any():
        raise DataError(labels_path, "no image both in training and in the test list",
                        f"{np.unique(labels[train & test])[:5]}")
    folder.mkdir()
    for split, sel in (("train", train), ("test_trial", test)):
        rows = np.nonzero(sel)[0]
        _write_maps(fmri, subject, rows, folder / f"{split}_flat.npy", shape, mask)
        np.save(folder / f"{split}_image_ids.npy", labels[rows])
    (folder / "rois.json").write_text("{}")
    info = dict(subject=subject, layout="neuropictor", source=str(fmri / f"{subject:02d}_norm"), n_voxels=0,
                n_train_trials=int(train.sum()), n_test_trials=int(test.sum()),
                n_test_images=int(np.unique(labels[test]).size), n_unused_trials=int((~train & ~test).sum()),
                flat_maps=True, n_resting=0)
    (folder / "subject.json").write_text(json.dumps(info, indent=1))
    return labels[train], labels[test]


def _write_images(images_dir, ids, out, image_size, progress):
    from PIL import Image

    size = None
    arr = None
    for k, i in enumerate(tqdm(ids, desc="images", disable=not progress, leave=False)):
        path = images_dir / f"image_{int(i):06d}.png"
        if not path.is_file():
            raise DataError(path, f"the stimulus of 73k id {int(i)}", "no such file")
        im = Image.open(path).convert("RGB")
        if size is None:
            size = image_size or im.size[0]
            arr = np.lib.format.open_memmap(out / "images.npy", "w+", np.uint8, (len(ids), size, size, 3))
        if im.size != (size, size):
            if image_size is None:
                raise DataError(path, f"a {size}x{size} image like the first one", f"{im.size[0]}x{im.size[1]}")
            im = im.resize((size, size), Image.BILINEAR)
        arr[k] = np.asarray(im)
    arr.flush()
    np.save(out / "image_ids.npy", ids)
    return size


def prepare_neuropictor(root, out, subjects=None, image_size=None, allow_pickle=False, progress=True):
    """NeuroPictor's released data layout → a prepared store (see the module docstring); returns ``out``.

    Parameters
    ----------
    root : str or Path
        The release root (``ROOT`` with ``NSD/`` inside, or the ``NSD`` folder itself).
    out : str or Path
        Store folder to write (replaced atomically).
    subjects : list of int, optional
        Default: every subject with an ``NN_label.npy``.
    image_size : int, optional
        Side of the stored images (default: the PNGs' own size, 425 for NSD).
    allow_pickle : bool
        Unpickle the label/caption files fully (only files you trust).
    """
    t0 = time.time()
    base = release_root(root)
    fmri = base / "fmri_npy"
    subjects = [int(s) for s in (subjects or _subjects_present(fmri))]
    if not subjects:
        raise DataError(fmri, "NN_label.npy files (one per subject)", "none")
    train_path, test_path = base / "unique_triallabel.npy", base / "sub1257_shared_triallabel.npy"
    train_all = load_npy(train_path, "the training image ids per subject (a dict)", allow_pickle)
    train_all = train_all.item() if isinstance(train_all, np.ndarray) and train_all.dtype == object and \
        train_all.ndim == 0 else train_all
    if not isinstance(train_all, dict):
        raise DataError(train_path, "a dict {subject index 0..7: image ids}", f"a {type(train_all).__name__}")
    test_ids = _ids(load_npy(test_path, "the shared test image ids", allow_pickle), test_path, "image ids")
    caps_path = base / "COCO_73k_annots_curated.npy"
    caps = np.asarray(load_npy(caps_path, "the curated COCO captions (73000, 5)", allow_pickle))
    first = np.load(fmri / f"{subjects[0]:02d}_norm" / "surf_000000.npy") if (
        fmri / f"{subjects[0]:02d}_norm" / "surf_000000.npy").is_file() else None
    if first is None or first.ndim != 2:
        raise DataError(fmri / f"{subjects[0]:02d}_norm" / "surf_000000.npy", "a 2-D flat map",
                        "no such file" if first is None else f"shape {first.shape}")
    shape = tuple(first.shape)
    mask = np.zeros(shape, dtype=bool)
    out = Path(out)
    with atomic_dir(out) as tmp:
        trains, tests = [], []
        for s in tqdm(subjects, desc="subjects", disable=not progress):
            if (s - 1) not in train_all:
                raise DataError(train_path, f"training image ids of subject {s} (key {s - 1})",
                                f"keys {sorted(train_all)}")
            tr = _ids(train_all[s - 1], train_path, f"subject {s}'s training image ids")
            a, b = _prepare_subject(fmri, s, tr, test_ids, tmp / f"subj{s:02d}", shape, mask)
            trains.append(a)
            tests.append(b)
        if not mask.any():
            raise DataError(fmri, "flat maps with nonzero visual-cortex pixels", "every map is all zeros")
        np.save(tmp / "visual_mask.npy", mask)
        ids = np.union1d(np.concatenate(trains), np.concatenate(tests))
        if caps.ndim != 2 or len(caps) <= ids.max():
            raise DataError(caps_path, f"(73000, 5) captions covering id {ids.max()}", f"shape {caps.shape}")
        size = _write_images(base / "nsddata_stimuli/stimuli/images", ids, tmp, image_size, progress)
        ann = {str(int(i)): dict(coco_id=None, captions=[str(c).strip() for c in caps[i] if str(c).strip()],
                                 instances=[], background=None) for i in ids}
        (tmp / "annotations.json").write_text(json.dumps(ann))
        meta = dict(format_version=FORMAT_VERSION, layout="neuropictor", subjects=subjects, nsd_root=str(base),
                    coco_root=None, coco_annotations=False, flatmap=None, flat_shape=list(shape), image_size=size,
                    n_images=int(len(ids)), n_test_images=int(len(np.unique(np.concatenate(tests)))),
                    common_shape=None, n_common_voxels=0, seconds=round(time.time() - t0, 2),
                    normalisation="as released by NeuroPictor (fmri_npy/NN_norm)")
        (tmp / "store.json").write_text(json.dumps(meta, indent=1))
    return out
