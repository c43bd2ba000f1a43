"""Raw NSD → prepared store. Works unchanged on real NSD and on NSD-mini.

Streams one session at a time (never the whole ``imgBrick`` or all betas at once), writes into a temporary
folder and renames it into place only when everything succeeded. See :mod:`neurorecon.data.store` for the
output layout and :func:`neurorecon.data.load_prepared` for the contract.
"""

import ast
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..artifacts import atomic_dir
from ..errors import DataError
from .betas import load_volume, read_session, read_surface, session_shape
from .design import read_design
from .flatmap import load_flatmap, save_flatmap
from .layout import NSDLayout
from .resample import resample_mask, trilinear_matrix, trilinear_support
from .store import FORMAT_VERSION

__all__ = ["prepare", "PRF_NAMES", "STREAM_NAMES", "session_plan"]

log = logging.getLogger(__name__)

#: How the ``*_common`` arrays are made (recorded in ``subject.json`` and ``store.json``; stores prepared before
#: it was recorded resampled only each subject's nsdgeneral voxels, zeros elsewhere).
COMMON_RESAMPLING = "volume"

PRF_NAMES = {1: "V1v", 2: "V1d", 3: "V2v", 4: "V2d", 5: "V3v", 6: "V3d", 7: "hV4"}
STREAM_NAMES = {1: "early", 2: "midventral", 3: "midlateral", 4: "midparietal", 5: "ventral", 6: "lateral",
                7: "parietal"}


def _nsdgeneral(layout, subject):
    path = layout.roi(subject, "nsdgeneral")
    data, affine = load_volume(path, "the nsdgeneral ROI (1 inside, < 1 outside)")
    mask = data > 0.5
    if not mask.any():
        raise DataError(path, "at least one voxel labelled 1 (inside nsdgeneral)", "none")
    return mask, affine, path


def session_plan(layout, design, subject, shape, roi_path, max_sessions=None):
    """Check a subject's session files and return ``[(session, path, n_trials, first_global_trial)]`` (only the
    first ``max_sessions`` sessions when given)."""
    sessions = layout.sessions(subject)
    if max_sessions is not None:
        sessions = {ses: p for ses, p in sessions.items() if ses <= max_sessions}
    if not sessions:
        raise DataError(layout.betas_dir(subject), "betas_sessionNN.hdf5 or betas_sessionNN.nii.gz files",
                        "none")
    last = max(sessions)
    for ses in range(1, last + 1):
        if ses not in sessions:
            raise DataError(layout.session_file(subject, ses),
                            f"session {ses:02d} of subj{subject:02d} (sessions 1..{last} are numbered consecutively)",
                            "no such file (.hdf5 or .nii.gz)")
    plan, start = [], 0
    for ses, path in sessions.items():
        n, spatial = session_shape(path)
        if tuple(spatial) != tuple(shape):
            hint = " (the axes look reversed)" if tuple(spatial) == tuple(shape)[::-1] else ""
            raise DataError(path, f"a volume of shape {tuple(shape)} (X, Y, Z) like {roi_path}",
                            f"{tuple(spatial)}{hint}")
        plan.append((ses, path, n, start))
        start += n
    if start > design.masterordering.size:
        raise DataError(design.path, f"masterordering covering the {start} trials of subj{subject:02d}'s betas",
                        f"{design.masterordering.size} trials")
    return plan


def _zscore(values, train):
    if not train.any():
        raise ValueError("a session without training trials cannot be normalised")
    ref = values[train]
    mu = ref.mean(0)
    sd = ref.std(0)
    sd[sd == 0] = 1.0
    return (values - mu) / sd


def _roi_columns(layout, subject, ijk, shape):
    rois = {}
    for kind, names in (("prf-visualrois", PRF_NAMES), ("streams", STREAM_NAMES)):
        path = layout.roi(subject, kind)
        if not path.is_file():
            continue
        data, _ = load_volume(path, f"the {kind} ROI")
        if data.shape != tuple(shape):
            raise DataError(path, f"a volume of shape {tuple(shape)} like nsdgeneral", f"{data.shape}")
        labels = np.rint(data[tuple(ijk.T)]).astype(int)
        rois[kind] = {name: np.nonzero(labels == code)[0].tolist() for code, name in names.items()}
    return rois


def _volume_sources(mask, common):
    """The voxels to read from a subject's betas: its nsdgeneral voxels and every voxel that trilinear resampling
    of the whole volume onto the union mask on subject 1's grid reads (the paper resamples the volume, then masks).

    Returns ``(read_ijk, own_cols, n_support, resample)``: the voxels to read (``np.argwhere`` order), the
    columns of the nsdgeneral voxels among them, how many voxels the resampling reads, and the sparse
    (n_union × n_read) map.
    """
    support = trilinear_support(mask.shape, common["union_ijk"], common["shape"])
    read_ijk = np.argwhere(mask | support)
    own_cols = np.flatnonzero(mask[tuple(read_ijk.T)])
    resample = trilinear_matrix(read_ijk, mask.shape, common["union_ijk"], common["shape"])
    return read_ijk, own_cols, int(support.sum()), resample


def _prepare_subject(layout, design, subject, folder, common, flatmap, progress, max_sessions=None,
                     max_trials=None):
    mask, affine, roi_path = _nsdgeneral(layout, subject)
    ijk = np.argwhere(mask)
    plan = session_plan(layout, design, subject, mask.shape, roi_path, max_sessions)
    n_total = sum(p[2] for p in plan)
    ids = design.trial_image_ids(subject, n_total)
    is_test = design.is_test(ids)
    kept = np.arange(n_total) < (max_trials if max_trials is not None else n_total)
    train_sel, test_sel = ~is_test & kept, is_test & kept  # z-scoring still uses each whole session
    if not test_sel.any() or not train_sel.any():
        raise DataError(layout.betas_dir(subject), f"training and test trials among subj{subject:02d}'s first "
                        f"{int(kept.sum())} trials (max_trials {max_trials})",
                        f"{int(train_sel.sum())} training and {int(test_sel.sum())} test trials; raise max_trials")
    folder.mkdir()
    np.save(folder / "voxel_ijk.npy", ijk)

    surface = flatmap is not None and all(
        layout.surface_file(subject, h, ses).is_file() for ses, *_ in plan for h in ("lh", "rh"))
    if flatmap is not None and not surface:
        found = [ses for ses, *_ in plan if layout.surface_file(subject, "lh", ses).is_file()]
        if found:
            missing = next(layout.surface_file(subject, h, ses) for ses, *_ in plan for h in ("lh", "rh")
                           if not layout.surface_file(subject, h, ses).is_file())
            raise DataError(missing, "surface betas for every session that has volume betas", "no such file")
        log.warning("subj%02d: no surface betas; flat maps are not prepared", subject)

    read_ijk, own_cols, n_support, resample = _volume_sources(mask, common)
    n_common = len(common["union_ijk"])
    outs = {}
    for split, sel in (("train", train_sel), ("test_trial", test_sel)):
        n = int(sel.sum())
        outs[split] = dict(
            sel=sel,
            betas=np.lib.format.open_memmap(folder / f"{split}_betas.npy", "w+", np.float32, (n, len(ijk))),
            common=np.lib.format.open_memmap(folder / f"{split}_common.npy", "w+", np.float16, (n, n_common)),
            flat=np.lib.format.open_memmap(folder / f"{split}_flat.npy", "w+", np.float16,
                                           (n, *flatmap.shape)) if surface else None,
        )
        np.save(folder / f"{split}_image_ids.npy", ids[sel])
    np.save(folder / "train_sessions.npy",
            np.concatenate([np.full(n, ses, np.int16) for ses, _, n, _ in plan])[train_sel])

    verts = {h: flatmap.vertices(h) for h in ("lh", "rh")} if surface else None
    bar = tqdm(plan, desc=f"subj{subject:02d} sessions", disable=not progress, leave=False)
    for ses, path, n, start in bar:
        train = ~is_test[start:start + n]
        z_read = _zscore(read_session(path, read_ijk, mask.shape, roi_path), train)
        z = z_read[:, own_cols]
        flat = None
        if surface:
            hemis = []
            for h in ("lh", "rh"):
                sfile = layout.surface_file(subject, h, ses)
                data = read_surface(sfile, verts[h], flatmap, h)
                if data.shape[0] != n:
                    raise DataError(sfile, f"{n} trials like {path.name}", f"{data.shape[0]}")
                hemis.append(_zscore(data, train))
            flat = flatmap.project(*hemis)
        for split, o in outs.items():
            rows = np.nonzero(o["sel"][:start])[0].size
            keep = o["sel"][start:start + n]
            k = int(keep.sum())
            o["betas"][rows:rows + k] = z[keep]
            o["common"][rows:rows + k] = (resample @ z_read[keep].T).T
            if flat is not None:
                o["flat"][rows:rows + k] = flat[keep]
        del z_read, z, flat  # not held while the next session is read
    for o in outs.values():
        for key in ("betas", "common", "flat"):
            if o[key] is not None:
                o[key].flush()

    resting = 0
    if surface and all(layout.resting_file(subject, h).is_file() for h in ("lh", "rh")):
        hemis = [read_surface(layout.resting_file(subject, h), verts[h], flatmap, h) for h in ("lh", "rh")]
        hemis = [_zscore(x, np.ones(len(x), bool)) for x in hemis]
        np.save(folder / "resting_flat.npy", flatmap.project(*hemis))
        resting = len(hemis[0])

    rois = _roi_columns(layout, subject, ijk, mask.shape)
    (folder / "rois.json").write_text(json.dumps(rois))
    info = dict(subject=subject, volume_shape=list(mask.shape), affine=np.asarray(affine).tolist(),
                n_voxels=int(len(ijk)), sessions=[p[0] for p in plan], session_files=[str(p[1]) for p in plan],
                n_train_trials=int(train_sel.sum()), n_test_trials=int(test_sel.sum()),
                n_test_images=int(np.unique(ids[test_sel]).size), flat_maps=bool(surface), n_resting=resting,
                common_resampling=COMMON_RESAMPLING, common_source_voxels=n_support,
                common_source_voxels_outside_nsdgeneral=int(len(read_ijk) - len(ijk)))
    (folder / "subject.json").write_text(json.dumps(info, indent=1))
    return ids[train_sel], ids[test_sel], info


def _common_grid(layout):
    ref_path = layout.roi(1, "nsdgeneral")
    ref, _ = load_volume(ref_path, "subject 1's nsdgeneral ROI (defines the common grid)")
    shape = ref.shape
    union = np.zeros(shape, dtype=bool)
    for subj_dir in sorted((layout.root / "nsddata/ppdata").glob("subj[0-9][0-9]")):
        path = layout.roi(int(subj_dir.name[4:]), "nsdgeneral")
        if path.is_file():
            mask, _ = load_volume(path, "an nsdgeneral ROI")
            union |= resample_mask(mask > 0.5, shape)
    return {"shape": shape, "union_ijk": np.argwhere(union)}


def _parse_crop(text):
    try:
        vals = tuple(float(v) for v in ast.literal_eval(str(text)))
    except (ValueError, SyntaxError, TypeError):
        vals = ()
    return vals if len(vals) == 4 else (0.0, 0.0, 0.0, 0.0)


def _write_images(layout, ids, out, image_size, progress):
    import h5py
    from PIL import Image

    path = layout.stimuli
    if not path.is_file():
        raise DataError(path, "the NSD stimuli file nsd_stimuli.hdf5 (dataset imgBrick)", "no such file")
    try:
        f = h5py.File(path, "r")
    except Exception as err:
        raise DataError(path, "a readable HDF5 file with dataset imgBrick", f"an unreadable file ({err})") from err
    with f:
        if "imgBrick" not in f:
            raise DataError(path, "a dataset named imgBrick", f"datasets {list(f.keys())}")
        brick = f["imgBrick"]
        if brick.ndim != 4 or brick.shape[3] != 3 or brick.dtype != np.uint8:
            raise DataError(path, "imgBrick of shape (images, H, W, 3) uint8", f"{brick.shape} {brick.dtype}")
        if ids.size and ids.max() >= brick.shape[0]:
            raise DataError(path, f"at least {ids.max() + 1} images in imgBrick", f"{brick.shape[0]}")
        size = image_size or brick.shape[1]
        images = np.lib.format.open_memmap(out / "images.npy", "w+", np.uint8, (len(ids), size, size, 3))
        chunk = 256
        for a in tqdm(range(0, len(ids), chunk), desc="images", disable=not progress, leave=False):
            block = brick[np.sort(ids[a:a + chunk])]
            if block.shape[1] != size or block.shape[2] != size:
                block = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
                                  for im in block])
            images[a:a + len(block)] = block
        images.flush()
    np.save(out / "image_ids.npy", ids)
    return size


def _coco_index(layout, splits):
    """Captions, instances, image records and category names of the COCO splits NSD's images come from.

    Raises
    ------
    DataError
        A split's captions or instances file is missing (named, with the COCO folder it was looked for in).
    """
    captions, instances, images, cats = {}, {}, {}, {}
    for split in splits:
        for path, kind in ((layout.captions(split), "captions"), (layout.instances(split), "instances")):
            if not path.is_file():
                raise DataError(path, f"the COCO {kind} file of split {split} (NSD's captions and object boxes; "
                                f"set --coco-root / coco_root to the folder holding captions_{split}.json and "
                                f"instances_{split}.json)", "no such file")
            try:
                data = json.loads(path.read_text())
                for im in data["images"]:
                    images[im["id"]] = im
                for c in data.get("categories", []):
                    cats[c["id"]] = c["name"]
                target = captions if kind == "captions" else instances
                for ann in data["annotations"]:
                    target.setdefault(ann["image_id"], []).append(ann)
            except (ValueError, KeyError, TypeError) as err:
                raise DataError(path, f"a COCO {kind} JSON file (images, annotations)", f"{err!r}") from err
    return captions, instances, images, cats


def _write_annotations(layout, ids, size, out):
    path = layout.stim_info
    if not path.is_file():
        raise DataError(path, "nsd_stim_info_merged.csv", "no such file")
    info = pd.read_csv(path)
    need = {"nsdId", "cocoId", "cocoSplit", "cropBox"}
    if not need <= set(info.columns):
        raise DataError(path, f"columns {sorted(need)}", f"{sorted(info.columns)[:12]}...")
    info = info.set_index("nsdId")
    missing = np.setdiff1d(ids, info.index.to_numpy())
    if missing.size:
        raise DataError(path, "a row (nsdId) for every image the subjects saw", f"missing ids {missing[:5]}")
    rows = info.loc[ids]
    splits = sorted(rows["cocoSplit"].astype(str).unique())
    captions, instances, images, cats = _coco_index(layout, splits)
    uncaptioned = sorted({int(c) for c in rows["cocoId"]} - set(captions))
    if uncaptioned:
        raise DataError(layout.captions(splits[0]).parent, f"captions for every COCO image the subjects saw "
                        f"(captions_<split>.json of splits {splits})",
                        f"none for {len(uncaptioned)} cocoId(s), e.g. {uncaptioned[:5]}")
    ann = {}
    for nsd_id, row in zip(ids, rows.itertuples()):
        coco_id = int(row.cocoId)
        im = images.get(coco_id, {})
        top, bottom, left, right = _parse_crop(row.cropBox)
        w, h = im.get("width", size), im.get("height", size)
        x0, y0, cw, ch = left * w, top * h, w * (1 - left - right), h * (1 - top - bottom)
        boxes = []
        for a in instances.get(coco_id, []):
            bx, by, bw, bh = a["bbox"]
            nx0, ny0 = max(0.0, (bx - x0) / cw * size), max(0.0, (by - y0) / ch * size)
            nx1, ny1 = min(size, (bx + bw - x0) / cw * size), min(size, (by + bh - y0) / ch * size)
            if nx1 <= nx0 or ny1 <= ny0:
                continue
            boxes.append(dict(category=cats.get(a["category_id"], str(a["category_id"])),
                              bbox=[round(nx0, 2), round(ny0, 2), round(nx1 - nx0, 2), round(ny1 - ny0, 2)],
                              attributes=a.get("attributes", {})))
        ann[str(int(nsd_id))] = dict(coco_id=coco_id, captions=[c["caption"].strip() for c in captions.get(coco_id, [])],
                                     instances=boxes, background=im.get("background"))
    (out / "annotations.json").write_text(json.dumps(ann))


def prepare(nsd_root, out, subjects=None, coco_root=None, flatmap=None, image_size=None, progress=True,
            max_sessions=None, max_trials=None):
    """Prepare raw NSD (or NSD-mini) into the store every later stage reads.

    Parameters
    ----------
    nsd_root : str or Path
        Root of the raw NSD tree.
    out : str or Path
        Store folder to write (replaced atomically; an existing store survives a failed run).
    subjects : list of int, optional
        Subjects to prepare (default: every subject whose betas folder exists).
    coco_root : str or Path, optional
        COCO annotation folder (default ``nsddata_stimuli/stimuli/nsd/annotations``).
    flatmap : str or Path, optional
        Flat-map ``.npz`` (default ``<nsd_root>/neurorecon_flatmap.npz`` when present; without one, no flat maps).
    image_size : int, optional
        Side of the stored images (default: the stimuli's own size).
    progress : bool
        Show tqdm progress bars.
    max_sessions : int, optional
        Prepare only each subject's first ``max_sessions`` sessions (a quick first pass over real NSD, or the dry
        run's tree whose later sessions hold no data); default every session present.
    max_trials : int, optional
        Keep only each subject's first ``max_trials`` trials of those sessions (the dry run's simulated ones);
        the z-scoring still uses each whole session. Default every trial.

    Returns
    -------
    Path
        The store folder.
    """
    t0 = time.time()
    layout = NSDLayout(nsd_root, coco_root)
    if not layout.root.is_dir():
        raise DataError(layout.root, "an NSD root folder", "no such folder")
    design = read_design(layout.expdesign)
    subjects = [int(s) for s in (subjects or layout.subjects_present())]
    if not subjects:
        raise DataError(layout.root / "nsddata_betas/ppdata", "at least one subjXX folder with betas", "none")
    for s in subjects:
        design.check_subject(s)
        if not layout.betas_dir(s).is_dir():
            raise DataError(layout.betas_dir(s), f"the betas folder of subj{s:02d}", "no such folder")
    fm_path = Path(flatmap) if flatmap else (layout.default_flatmap if layout.default_flatmap.is_file() else None)
    fm = load_flatmap(fm_path) if fm_path else None
    common = _common_grid(layout)
    out = Path(out)
    with atomic_dir(out) as tmp:
        np.savez(tmp / "common_grid.npz", shape=np.array(common["shape"]), union_ijk=common["union_ijk"])
        if fm is not None:
            save_flatmap(fm, tmp / "flatmap.npz")
        train_ids, test_ids, infos = [], [], {}
        for s in tqdm(subjects, desc="subjects", disable=not progress):
            tr, te, info = _prepare_subject(layout, design, s, tmp / f"subj{s:02d}", common, fm, progress,
                                            max_sessions, max_trials)
            train_ids.append(tr)
            test_ids.append(te)
            infos[s] = info
        all_train = np.unique(np.concatenate(train_ids))
        all_test = np.unique(np.concatenate(test_ids))
        leak = np.intersect1d(all_train, np.union1d(all_test, design.sharedix))
        if leak.size:
            raise DataError(design.path, "no shared (test) image in any training split",
                            f"{leak.size} leaked ids, e.g. {leak[:5]}")
        ids = np.union1d(all_train, all_test)
        size = _write_images(layout, ids, tmp, image_size, progress)
        _write_annotations(layout, ids, size, tmp)  # raises on missing COCO files: never empty captions
        meta = dict(format_version=FORMAT_VERSION, subjects=subjects, nsd_root=str(layout.root),
                    coco_root=str(layout.coco_root), coco_annotations=True, flatmap=str(fm_path) if fm_path else None,
                    flat_shape=list(fm.shape) if fm else None, image_size=size, max_sessions=max_sessions,
                    max_trials=max_trials,
                    n_images=int(len(ids)),
                    n_test_images=int(len(all_test)), common_shape=list(common["shape"]),
                    n_common_voxels=int(len(common["union_ijk"])), seconds=round(time.time() - t0, 2),
                    common_resampling=COMMON_RESAMPLING,
                    normalisation="z-score per voxel within each session using that session's training trials "
                                  "(mean, population std); test trials use the same statistics")
        (tmp / "store.json").write_text(json.dumps(meta, indent=1))
    return out
