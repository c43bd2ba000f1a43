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
import re
from pathlib import Path

import numpy as np
import yaml

from ..errors import DataError
from ..paths import repo_root

__all__ = ["check_data", "load_manifest", "manifest_path", "manifest_from_tree"]


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


def check_data(nsd_root, manifest="demo", subjects=None):
    """List what is missing or malformed in a raw NSD tree.

    Parameters
    ----------
    nsd_root : str or Path
        Root of the raw tree.
    manifest : str or Path
        A profile name (``smoke``, ``demo``, ``full``) or a manifest file.
    subjects : list of int, optional
        Check only these subjects' files (and every file of no subject); default: every file of the manifest.

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
        subject = re.search(r"/subj(\d\d)/", entry["path"])
        if subjects is None or subject is None or int(subject.group(1)) in subjects:
            problems += _check_entry(root, entry)
    return problems


def manifest_from_tree(nsd_root, profile, description="", exact=False):
    """Describe an existing raw tree as a manifest (how the demo/smoke manifests were made from NSD-mini).

    With ``exact=False`` the subjects' volume sizes are left open (null), since NSD-mini draws them from the
    seed; preparation checks that betas and ROIs of a subject agree.
    """
    import h5py
    import nibabel as nib
    import pandas as pd
    import scipy.io

    from .betas import session_shape
    from .layout import NSDLayout

    root = Path(nsd_root)
    lay = NSDLayout(root)
    rel = lambda p: str(Path(p).relative_to(root))  # noqa: E731
    files = [dict(path=rel(lay.expdesign), kind="mat", what="NSD design (1-based indices)",
                  variables={n: list(s) for n, s, _ in scipy.io.whosmat(str(lay.expdesign))
                             if n in ("masterordering", "subjectim", "sharedix")})]
    info = pd.read_csv(lay.stim_info)
    files.append(dict(path=rel(lay.stim_info), kind="csv", what="stimulus info", rows=len(info),
                      columns=["cocoId", "cocoSplit", "cropBox", "nsdId", "shared1000"]))
    with h5py.File(lay.stimuli, "r") as f:
        files.append(dict(path=rel(lay.stimuli), kind="hdf5", dataset="imgBrick", what="stimulus images",
                          shape=list(f["imgBrick"].shape), dtype=str(f["imgBrick"].dtype)))
    for p in sorted(lay.coco_root.glob("*.json")):
        files.append(dict(path=rel(p), kind="json", what="COCO annotations", keys=["images", "annotations"]))
    if lay.default_flatmap.is_file():
        files.append(dict(path=rel(lay.default_flatmap), kind="npz", what="vertex-to-pixel flat map",
                          keys=["shape", "pixel", "hemi", "vertex"]))
    for s in lay.subjects_present():
        for roi in ("brainmask", "nsdgeneral", "prf-visualrois", "streams"):
            p = lay.roi(s, roi)
            if not p.is_file():
                continue
            shape = list(nib.load(str(p)).shape) if exact else [None, None, None]
            files.append(dict(path=rel(p), kind="nifti", what=f"subj{s:02d} {roi}", shape=shape))
        sessions = lay.sessions(s)
        shapes = [session_shape(p) for p in sessions.values()]
        counts = {n for n, _ in shapes}
        n, spatial = (counts.pop() if len(counts) == 1 else None), shapes[0][1]
        files.append(dict(path=rel(lay.betas_dir(s) / "betas_session{session:02d}"), kind="betas",
                          what=f"subj{s:02d} volume betas", sessions=len(sessions),
                          shape=[n, *(spatial[::-1] if exact else [None] * 3)],
                          dtype="int16"))
        for hemi in ("lh", "rh"):
            p = lay.surface_file(s, hemi, 1)
            if p.is_file():
                files.append(dict(path=rel(p).replace("session01", "session{session:02d}"), kind="mgh",
                                  what=f"subj{s:02d} {hemi} surface betas", sessions=len(sessions),
                                  shape=list(nib.load(str(p)).shape), required=True))
            r = lay.resting_file(s, hemi)
            if r.is_file():
                files.append(dict(path=rel(r), kind="mgh", what=f"subj{s:02d} {hemi} resting maps", required=False))
    return json.loads(json.dumps(dict(profile=profile, description=description, files=files), default=int))
