"""Instruction data exported in the layout of LLaVA's custom-data fine-tuning, with the fMRI each record uses.

LLaVA's training code reads a JSON list of samples, each with a unique ``id``, an ``image`` path relative to the
``--image_folder`` it is given, and ``conversations`` (alternating ``{"from": "human"|"gpt", "value": ...}``
turns, the first human turn holding ``<image>``); other keys are ignored by it. An export folder::

    sft_data_tr.json      training records (images of the training trials)
    sft_data_te.json      test records (the shared test images)
    images/               nsd_image_{id:06d}.png of every image a record names  (LLaVA's --image_folder)
    export.json           where the fMRI arrays are (the prepared store), their shapes, and the folder layout

Besides LLaVA's keys every record carries ``image_id``, ``type``, ``subjects`` (who saw the image in that split)
and ``fmri``: one entry per subject, ``{"subject", "array", "rows", "sessions"}`` with ``array`` the store file
(relative to the store folder named in ``export.json``; volumes on subject 1's grid, NV2L's input) and ``rows``
the trials of that image in it (rows of ``train_common.npy``, or of ``test_trial_common.npy`` for the test
split), so a brain LLaVA code base can pair each record with the exact trials it was trained or tested on.
"""

import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from .instructions import image_file_name

__all__ = ["SPLIT_FILES", "ARRAYS", "fmri_references", "export_llava", "read_llava_export"]

SPLIT_FILES = {"train": "sft_data_tr.json", "test": "sft_data_te.json"}
#: The store array of NV2L's input per split, and the array of its image ids.
ARRAYS = {"train": ("train_common", "train_image_ids"), "test": ("test_trial_common", "test_trial_image_ids")}


def fmri_references(store, subjects, split):
    """``image_id -> list of {"subject", "array", "rows", "sessions"}`` of every trial of ``subjects`` in ``split``."""
    array, ids_name = ARRAYS[split]
    out = {}
    for s in subjects:
        sub = store.subject(s)
        ids = np.asarray(getattr(sub, ids_name))
        sessions = np.asarray(sub.train_sessions) if split == "train" else None
        rel = str((sub.folder / f"{array}.npy").relative_to(store.folder))
        order = np.argsort(ids, kind="stable")
        uniq, start, count = np.unique(ids[order], return_index=True, return_counts=True)
        for i, a, c in zip(uniq.tolist(), start, count):
            rows = np.sort(order[a:a + c])
            ref = {"subject": int(s), "array": rel, "rows": rows.tolist()}
            if sessions is not None:
                ref["sessions"] = sessions[rows].astype(int).tolist()
            out.setdefault(int(i), []).append(ref)
    return out


def _write_images(store, image_ids, folder):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    ids = np.asarray(sorted(image_ids))
    for a in range(0, len(ids), 256):
        chunk = ids[a:a + 256]
        for i, im in zip(chunk.tolist(), store.get_images(chunk)):
            path = folder / image_file_name(i)
            if not path.is_file():
                Image.fromarray(np.asarray(im, dtype=np.uint8)).save(path)


def export_llava(records, store, folder, split, subjects, images=True):
    """Write one split's records (with their fMRI references) and, with ``images``, their images.

    Parameters
    ----------
    records : list of dict
        :func:`build_instruction_data` records of the split's images.
    store : Store
        The prepared store the fMRI references point into.
    folder : str or Path
        The export folder (``images/`` and ``export.json`` go beside the JSON).
    split : ``"train"`` or ``"test"``
    subjects : sequence of int
    images : bool
        Write ``images/`` (LLaVA's image folder).

    Returns
    -------
    Path of the JSON file.
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    refs = fmri_references(store, subjects, split)
    missing = sorted({r["image_id"] for r in records} - set(refs))
    if missing:
        raise DataError(store.folder, f"{split} trials of subjects {list(subjects)} for every record's image",
                        f"none for image ids {missing[:5]}")
    out = []
    for r in records:
        fmri = refs[int(r["image_id"])]
        out.append({"id": r["id"], "image": r["image"], "conversations": r["conversations"],
                    "image_id": int(r["image_id"]), "type": r["type"],
                    "subjects": sorted({f["subject"] for f in fmri}), "fmri": fmri})
    path = folder / SPLIT_FILES[split]
    path.write_text(json.dumps(out, indent=1))
    if images:
        _write_images(store, {r["image_id"] for r in records}, folder / "images")
    _update_manifest(folder, store, subjects, split, images)
    return path


def _update_manifest(folder, store, subjects, split, images):
    path = folder / "export.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    array, _ = ARRAYS[split]
    shapes = {}
    for s in subjects:
        sub = store.subject(s)
        arr = np.load(sub.folder / f"{array}.npy", mmap_mode="r")
        shapes[str((sub.folder / f"{array}.npy").relative_to(store.folder))] = [list(arr.shape), str(arr.dtype)]
    info.update(store=str(Path(store.folder).resolve()), image_folder="images" if images else None,
                layout="LLaVA custom data: id, image (relative to image_folder), conversations")
    info.setdefault("splits", {})[split] = {"file": SPLIT_FILES[split], "fmri_arrays": shapes,
                                            "fmri_space": "volumes on subject 1's grid within the union mask"}
    path.write_text(json.dumps(info, indent=1))


def read_llava_export(folder, split):
    """Records of an export folder's split, each checked the way LLaVA reads it and with its fMRI resolvable.

    Returns
    -------
    records : list of dict
    store_folder : Path
    """
    folder = Path(folder)
    path = folder / SPLIT_FILES[split]
    manifest = folder / "export.json"
    try:
        records = json.loads(path.read_text())
        info = json.loads(manifest.read_text())
    except (OSError, ValueError) as err:
        raise DataError(path, "an exported LLaVA JSON list beside export.json", f"{type(err).__name__}: {err}") \
            from err
    keys = ("id", "image", "conversations", "fmri")
    if not isinstance(records, list) or not all(isinstance(r, dict) and all(k in r for k in keys) for r in records):
        raise DataError(path, f"a list of records with {', '.join(keys)}")
    return records, Path(info["store"])
