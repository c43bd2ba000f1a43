"""Check a raw NSD tree against a data manifest before any work starts.

A manifest (``data_manifests/<profile>.yaml``) lists the raw files a profile needs::

    profile: full
    files:
      - path: nsddata/experiments/nsd/nsd_expdesign.mat
        kind: mat
        variables: {masterordering: [1, 30000], subjectim: [8, 10000], sharedix: [1, 1000]}
      - path: nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session{session:02d}
        kind: betas              # .hdf5 (trials, Z, Y, X) or .nii.gz (X, Y, Z, trials)
        sessions: 37
        shape: [750, 83, 104, 81]
        dtype: int16
        required: true

``shape`` entries may be null (any size). Only headers are read, so checking real NSD takes seconds.
"""

import json
from pathlib import Path

import numpy as np
import yaml

from ..errors import DataError
from ..paths import repo_root

__all__ = ["check_data", "load_manifest", "manifest_path"]


def manifest_path(profile):
    root = repo_root()
    base = root / "data_manifests" if root else Path(__file__).resolve().parents[1] / "data_manifests"
    return base / f"{profile}.yaml"


def load_manifest(path_or_profile):
    path = Path(path_or_profile)
    if not path.suffix:
        path = manifest_path(path_or_profile)
    if not path.is_file():
        raise DataError(path, "a data manifest (YAML)", "no such file")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise DataError(path, "a mapping with a 'files' list")
    return data


def _shape_ok(found, expected):
    return expected is None or (len(found) == len(expected) and all(e is None or int(e) == int(f)
                                                                    for f, e in zip(found, expected)))


def _check_entry(root, entry):
    problems = []
    kind = entry.get("kind", "file")
    template = entry["path"]
    sessions = entry.get("sessions")
    paths = [template.format(session=s) for s in range(1, sessions + 1)] if sessions else [template]
    for rel in paths:
        candidates = [root / (rel + ext) for ext in (".hdf5", ".nii.gz")] if kind == "betas" else [root / rel]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            if entry.get("required", True):
                want = " or ".join(c.name for c in candidates)
                problems.append(f"{candidates[0].parent / want}: missing ({entry.get('what', kind)})")
            continue
        try:
            problems += _check_file(path, kind, entry)
        except Exception as err:  # an unreadable file is a problem to report, not a crash
            problems.append(f"{path}: unreadable ({type(err).__name__}: {err})")
    return problems


def _check_file(path, kind, entry):
    shape, dtype = entry.get("shape"), entry.get("dtype")
    found_shape = found_dtype = None
    if kind == "mat":
        import scipy.io

        found = {name: list(shp) for name, shp, _ in scipy.io.whosmat(str(path))}
        return [f"{path}: expected variable {v} of shape {s}, found {found.get(v)}"
                for v, s in (entry.get("variables") or {}).items() if not _shape_ok(found.get(v, ()), s)]
    if kind in ("hdf5", "betas") and path.name.endswith(".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            name = entry.get("dataset", "betas")
            if name not in f:
                return [f"{path}: expected dataset {name!r}, found {list(f.keys())}"]
            found_shape, found_dtype = f[name].shape, f[name].dtype
    elif kind in ("nifti", "betas", "mgh"):
        import nibabel as nib

        img = nib.load(str(path))
        found_shape, found_dtype = img.shape, img.get_data_dtype()
        if kind == "betas" and shape is not None:
            shape = list(shape[1:][::-1]) + [shape[0]]
    elif kind == "csv":
        import pandas as pd

        cols = pd.read_csv(path, nrows=2).columns
        missing = [c for c in entry.get("columns", []) if c not in cols]
        problems = [f"{path}: expected columns {missing}, not found"] if missing else []
        if entry.get("rows") is not None:
            n = sum(1 for _ in open(path)) - 1
            if n != entry["rows"]:
                problems.append(f"{path}: expected {entry['rows']} rows, found {n}")
        return problems
    elif kind == "json":
        data = json.loads(path.read_text())
        missing = [k for k in entry.get("keys", []) if k not in data]
        return [f"{path}: expected keys {missing}, not found"] if missing else []
    elif kind == "npz":
        z = np.load(path)
        missing = [k for k in entry.get("keys", []) if k not in z.files]
        return [f"{path}: expected keys {missing}, not found"] if missing else []
    problems = []
    if found_shape is not None and not _shape_ok(found_shape, shape):
        problems.append(f"{path}: expected shape {shape}, found {list(found_shape)}")
    if dtype and found_dtype is not None and np.dtype(found_dtype) != np.dtype(dtype):
        problems.append(f"{path}: expected dtype {dtype}, found {np.dtype(found_dtype)}")
    return problems


def check_data(nsd_root, manifest="demo"):
    """List what is missing or malformed in a raw NSD tree.

    Parameters
    ----------
    nsd_root : str or Path
        Root of the raw tree.
    manifest : str or Path
        A profile name (``smoke``, ``demo``, ``full``) or a manifest file.

    Returns
    -------
    list of str
        One line per problem, each naming the file and what was expected; empty when all is well.
    """
    root = Path(nsd_root)
    if not root.is_dir():
        return [f"{root}: expected the NSD root folder, found no such folder"]
    problems = []
    for entry in load_manifest(manifest)["files"]:
        problems += _check_entry(root, entry)
    return problems
