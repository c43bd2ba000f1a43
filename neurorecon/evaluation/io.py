"""On-disk format of reconstructions (and ground truths) that ``neurorecon evaluate`` reads.

A reconstructions file is an ``.npz`` with

- ``images``: uint8 (n, H, W, 3) reconstructions;
- ``image_ids``: (n,) int, the 0-based NSD (73k) id of the test image each row reconstructs;
- optional ``subject`` (scalar int or str), ``method`` and ``variant`` (scalar str) labelling the table rows;
- optional ``brain_embeds``: (n, E) float brain-predicted CLIP image embeddings (adds retrieval);
- optional ``captions``: (n,) str, one generated caption per row (adds caption metrics).

A ground-truth file has the same ``images`` and ``image_ids`` keys and optional ``references``: (n, k) str
reference captions. A prepared store folder (``store.json``) serves as ground truth too (images and COCO
captions by id).
"""

from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["save_reconstructions", "load_reconstructions", "load_ground_truth", "reconstruction_files"]

_OPTIONAL = ("subject", "method", "variant", "brain_embeds", "captions")


def save_reconstructions(path, images, image_ids, **extra):
    """Write a reconstructions ``.npz`` (see the module docstring); ``extra``: keys of the optional fields."""
    from .images import to_uint8

    bad = sorted(set(extra) - set(_OPTIONAL))
    if bad:
        raise ValueError(f"unknown field(s) {bad}; optional fields are {list(_OPTIONAL)}")
    images = np.asarray(images) if isinstance(images, np.ndarray) and images.dtype == np.uint8 else to_uint8(images)
    fields = {k: (np.asarray(v, dtype=str) if k in ("captions", "method", "variant") else np.asarray(v))
              for k, v in extra.items() if v is not None}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=images, image_ids=np.asarray(image_ids, dtype=np.int64), **fields)
    return path


def _read_npz(path, what):
    path = Path(path)
    if not path.is_file():
        raise DataError(path, what, "no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported with its path
        raise DataError(path, what, f"an unreadable file ({type(err).__name__})") from err
    for key in ("images", "image_ids"):
        if key not in data:
            raise DataError(path, f"{what} with keys 'images' and 'image_ids'", f"keys {sorted(data)}")
    images, ids = data["images"], data["image_ids"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(path, "'images' as uint8 (n, H, W, 3)", f"{images.dtype} {images.shape}")
    if ids.ndim != 1 or len(ids) != len(images) or not np.issubdtype(ids.dtype, np.integer):
        raise DataError(path, f"'image_ids' as {len(images)} integers", f"{ids.dtype} {ids.shape}")
    if len(np.unique(ids)) != len(ids):
        raise DataError(path, "unique 'image_ids'", "repeated ids")
    return data


def load_reconstructions(path):
    """Read a reconstructions ``.npz``: a dict with ``images``, ``image_ids`` and the optional fields present
    (scalars as Python values)."""
    data = _read_npz(path, "a reconstructions .npz")
    n = len(data["images"])
    for key in ("brain_embeds", "captions"):
        if key in data and len(data[key]) != n:
            raise DataError(path, f"'{key}' with one row per image ({n})", f"{len(data[key])} rows")
    for key in ("subject", "method", "variant"):
        if key in data:
            data[key] = data[key].item()
    return data


def load_ground_truth(source, image_ids):
    """Ground-truth images (and reference captions, or None) for ``image_ids``.

    Parameters
    ----------
    source : str or Path
        A ground-truth ``.npz`` or a prepared store folder.
    image_ids : array (n,)

    Returns
    -------
    images : uint8 (n, H, W, 3)
    references : list of list of str, or None
    """
    source = Path(source)
    ids = np.asarray(image_ids)
    if source.is_dir():
        from ..data import open_store

        store = open_store(source)
        refs = [list(store.annotations[int(i)]["captions"]) for i in ids] if store.annotations else None
        return store.get_images(ids), refs
    data = _read_npz(source, "a ground-truth .npz")
    row = {int(i): k for k, i in enumerate(data["image_ids"])}
    missing = [int(i) for i in ids if int(i) not in row]
    if missing:
        raise DataError(source, "a ground-truth image for every reconstructed id", f"missing ids {missing[:5]}")
    rows = np.array([row[int(i)] for i in ids], dtype=np.int64)
    refs = None
    if "references" in data:
        refs = [[str(c) for c in r if str(c)] for r in np.asarray(data["references"])[rows]]
    return data["images"][rows], refs


def reconstruction_files(path):
    """``path`` itself if it is a file, else every ``*.npz`` in the folder (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if files:
            return files
        raise DataError(path, "a folder holding reconstruction .npz files", "none")
    raise DataError(path, "a reconstructions .npz or a folder of them", "no such file or folder")
