"""Write an NSD-mini raw tree: stimuli, annotations, design, ROIs, volume and surface betas, resting maps."""

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import scipy.io
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from ..artifacts import atomic_dir
from ..config import load_config
from ..errors import ConfigError
from . import brain, scenes
from .config import N_SUBJECTS, SimConfig
from .design import make_design, stim_info

__all__ = ["simulate", "BETAS_FORMATS", "BETAS_DIR", "FLATMAP_FILE", "TRUTH_FILE"]

BETAS_FORMATS = ("hdf5", "nifti")
BETAS_DIR = "betas_fithrf_GLMdenoise_RR"
FLATMAP_FILE = "neurorecon_flatmap.npz"
TRUTH_FILE = "nsdmini_truth.json"
_VOXEL_MM = 1.8
_SURFACE_NOISE_COMPONENTS = 32

DESCRIPTION = (
    "Each hemisphere is a cortical sheet (u, v) in [0,1]^2. Along u: V1 [0,0.15), V2 [0.15,0.27), "
    "V3 [0.27,0.37), hV4 [0.37,0.45) (retinotopic: Gaussian receptive fields over an 8x8 grid of luminance "
    "contrast, RGB and edge energy; polar angle from v, dorsal = lower field; eccentricity reverses at each area "
    "border; RF size grows along u; left hemisphere = right visual field), mid [0.45,0.65) (colour x position and "
    "shape x position of the objects through a coarse receptive field), high [0.65,1] (position-invariant tuning "
    "to category counts (stronger ventrally), object count (stronger dorsally) and background). Tuning is smooth "
    "over the sheet: a species template shared by subjects plus a 30% subject-specific part. nsdgeneral voxels "
    "are a cap of the ellipsoidal brain's outer shell around the occipital pole; u is the (warped) angle to the "
    "pole, v the dorsal-ventral angle. Surface vertices are common sheet positions with a small subject-specific "
    "misalignment. Beta = session_gain * (evoked + amplitude * gain * voxel_gain * z-scored response) + "
    "session_offset + noise (a spatially smooth part, a signal-like part = random feature vectors through the "
    "same tuning, and an independent part); ncsnr = signal sd / noise sd. "
    "Brain voxels outside nsdgeneral hold noise only."
)


def _rng(seed, *tags):
    return np.random.default_rng([seed, *tags])


def _save_nifti(data, path):
    affine = np.diag([_VOXEL_MM] * 3 + [1.0])
    affine[:3, 3] = -_VOXEL_MM * (np.asarray(data.shape[:3]) - 1) / 2
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)


def _save_mgh(data, path):
    nib.save(nib.MGHImage(np.ascontiguousarray(data, np.float32)[:, None, None, :], np.eye(4)), path)


def _polygon_area(p):
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(x[:-1] @ y[1:] - y[:-1] @ x[1:] + x[-1] * y[0] - y[-1] * x[0])


def _add_annotations(part, coco_id, scene, captions, polygons, S, counts):
    """Append one image's COCO image entry, captions and (when drawn) instances; ``counts`` = [captions, instances]."""
    part["images"].append(dict(id=coco_id, file_name=f"{coco_id:012d}.jpg", width=S, height=S,
                               background=scene["background"]))
    for text in captions:
        counts[0] += 1
        part["captions"].append(dict(id=counts[0], image_id=coco_id, caption=text))
    for obj, polys in zip(scene["objects"], polygons or []):
        pts = np.concatenate(polys)
        x0, y0 = np.clip(pts.min(0), 0, S)
        x1, y1 = np.clip(pts.max(0), 0, S)
        area = sum(_polygon_area(p) for p in polys)  # parts barely overlap
        counts[1] += 1
        part["instances"].append(dict(
            id=counts[1], image_id=coco_id, category_id=scenes.CATEGORY_IDS[obj["category"]],
            bbox=[round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
            area=round(float(area), 2), iscrowd=0,
            segmentation=[[round(float(c), 2) for c in p.ravel()] for p in polys],
            attributes=dict(color=obj["color"], size=obj["size"], shape=scenes.CATEGORY_SHAPES[obj["category"]],
                            position=obj["position"])))


def _write_coco(stim, coco):
    info = dict(description="NSD-mini simulated scenes (neurorecon.simulate)", version="1.0")
    for s, part in coco.items():
        for kind in ("captions", "instances"):
            doc = dict(info=info, images=part["images"], annotations=part[kind])
            if kind == "instances":
                doc["categories"] = scenes.coco_categories()
            (stim / f"annotations/{kind}_{s}.json").write_text(json.dumps(doc))


def _render_stimuli(cfg, design, seed, root, bar):
    """Draw every image, write the brick and the COCO annotations; return the scenes and the image features."""
    n = design.n_total
    S = cfg.image_size
    brick = np.zeros((n, S, S, 3), np.uint8)
    split = design.coco_split
    coco = {s: dict(images=[], captions=[], instances=[]) for s in ("train2017", "val2017")}
    all_scenes = []
    counts = [0, 0]
    for i in range(n):
        rng = _rng(seed, 2, i)
        scene = scenes.sample_scene(rng)
        brick[i], polygons = scenes.render_scene(scene, S, rng, cfg.supersample)
        all_scenes.append(scene)
        _add_annotations(coco[split[i]], 100000 + i + 1, scene, scenes.scene_captions(scene, rng), polygons, S,
                         counts)
        if i % 256 == 255:
            bar.set_postfix_str(f"image {i + 1}/{n}")
    stim = root / "nsddata_stimuli/stimuli/nsd"
    (stim / "annotations").mkdir(parents=True)
    with h5py.File(stim / "nsd_stimuli.hdf5", "w") as f:
        f.create_dataset("imgBrick", data=brick, chunks=(1, S, S, 3), compression="gzip", compression_opts=1,
                         track_times=False)
    _write_coco(stim, coco)
    feats = brain.scene_features(all_scenes)
    feats["low"] = brain.image_features(brick, cfg.feature_grid)
    return feats


def _render_sparse(cfg, design, seed, root, bar, shown, rendered):
    """Like :func:`_render_stimuli` for a tree with simulated_trials/sessions: the brick has every image id but
    only ``rendered`` ids are drawn (the rest stay unwritten: black); scenes and captions for every ``shown`` id.
    Features are those of the drawn images (0 elsewhere)."""
    n, S = design.n_total, cfg.image_size
    split = design.coco_split
    coco = {s: dict(images=[], captions=[], instances=[]) for s in ("train2017", "val2017")}
    drawn, lows, counts = [], [], [0, 0]
    stim = root / "nsddata_stimuli/stimuli/nsd"
    (stim / "annotations").mkdir(parents=True)
    rendered = set(int(i) for i in rendered)
    with h5py.File(stim / "nsd_stimuli.hdf5", "w") as f:
        ds = f.create_dataset("imgBrick", shape=(n, S, S, 3), dtype=np.uint8, chunks=(1, S, S, 3),
                              compression="gzip", compression_opts=1, track_times=False)
        for i in np.unique(np.asarray(list(shown), np.int64)):
            rng = _rng(seed, 2, int(i))
            scene = scenes.sample_scene(rng)
            polygons = None
            if int(i) in rendered:
                image, polygons = scenes.render_scene(scene, S, rng, cfg.supersample)
                ds[int(i)] = image
                drawn.append((int(i), scene))
                lows.append(brain.image_features(image[None], cfg.feature_grid))
            _add_annotations(coco[split[i]], 100000 + int(i) + 1, scene, scenes.scene_captions(scene, rng),
                             polygons, S, counts)
    _write_coco(stim, coco)
    ids = np.array([i for i, _ in drawn], np.int64)
    part = brain.scene_features([sc for _, sc in drawn])
    part["low"] = np.concatenate(lows)
    feats = {}
    for key, arr in part.items():
        feats[key] = np.zeros((n, *arr.shape[1:]), arr.dtype)
        feats[key][ids] = arr
    return feats


def _write_design(design, root):
    exp = root / "nsddata/experiments/nsd"
    exp.mkdir(parents=True)
    scipy.io.savemat(exp / "nsd_expdesign.mat", dict(
        masterordering=design.masterordering[None].astype(np.float64),
        subjectim=design.subjectim.astype(np.float64),
        sharedix=design.sharedix[None].astype(np.float64)))
    stim_info(design).to_csv(exp / "nsd_stim_info_merged.csv")


def _write_flatmap(layout, root):
    np.savez(root / FLATMAP_FILE, shape=np.asarray(layout.shape, np.int64), pixel=layout.pixel,
             hemi=layout.hemi, vertex=layout.vertex)


def _signal_model(cfg, tuning, feats, u, v, hemi, gain, noise_factor, rng):
    """Per point: signal (n_img, N), evoked mean, noise sd, for points with sheet coordinates (u, v, hemi)."""
    amp = brain.area_profile(u, cfg.amplitude) * gain * np.exp(rng.normal(0, 0.25, len(u)))
    rel = brain.area_profile(u, cfg.reliability)
    noise_sd = brain.area_profile(u, cfg.amplitude) * gain * noise_factor * np.sqrt((1 - rel) / rel)
    evoked = cfg.evoked * amp / cfg.amplitude[0]
    signal = tuning.responses(feats, u, v, hemi) * amp
    return signal.astype(np.float32), evoked, noise_sd, amp


def _volume_noise(cfg, rng, n, anat, sd):
    """(n, X, Y, Z) noise: spatially smooth and independent parts (their shares of the variance), times ``sd``."""
    white = rng.standard_normal((n, *anat.shape), dtype=np.float32)
    smooth = gaussian_filter(rng.standard_normal((n, *anat.shape), dtype=np.float32), sigma=(0, 1, 1, 1))
    kernel = np.exp(-0.5 * np.arange(-4, 5) ** 2)  # gaussian_filter's sigma=1 kernel: unit variance inside
    smooth /= np.sqrt(((kernel / kernel.sum()) ** 2).sum() ** 3)
    return (np.sqrt(cfg.smooth_noise) * smooth + np.sqrt(1 - cfg.smooth_noise - cfg.feature_noise) * white) * sd


def _surface_noise(cfg, rng, n, u, v, sd):
    """(n, N) surface noise: smooth random plane waves on the sheet plus an independent part."""
    field = brain.SmoothField(rng, 1, _SURFACE_NOISE_COMPONENTS, max_freq=4.0)
    coef = rng.normal(0, np.sqrt(2.0 / _SURFACE_NOISE_COMPONENTS), (n, _SURFACE_NOISE_COMPONENTS))
    smooth = coef @ field.basis(u, v).T
    white = rng.standard_normal((n, len(u)), dtype=np.float32)
    white = np.sqrt(1 - cfg.smooth_noise - cfg.feature_noise) * white
    return ((np.sqrt(cfg.smooth_noise) * smooth + white) * sd).astype(np.float32)


def _write_rois(anat, func):
    (func / "roi").mkdir(parents=True)
    _save_nifti(anat.brain.astype(np.int16), func / "brainmask.nii.gz")
    general = np.where(anat.general, 1, np.where(anat.brain, 0, -1)).astype(np.int16)
    _save_nifti(general, func / "roi/nsdgeneral.nii.gz")
    _save_nifti(anat.prf, func / "roi/prf-visualrois.nii.gz")
    _save_nifti(anat.streams, func / "roi/streams.nii.gz")


def _write_volume_session(betas, path, betas_format):
    """Write one session's (T, X, Y, Z) psc betas as int16 x 300 (HDF5: axes reversed to (T, Z, Y, X))."""
    data = np.clip(np.rint(betas * 300), -32768, 32767).astype(np.int16)
    if betas_format == "hdf5":
        with h5py.File(path.with_suffix(".hdf5"), "w") as f:
            f.create_dataset("betas", data=np.ascontiguousarray(data.transpose(0, 3, 2, 1)),
                             chunks=(data.shape[0], 1, data.shape[2], data.shape[1]), compression="gzip",
                             compression_opts=1, track_times=False)
    else:
        _save_nifti(np.ascontiguousarray(data.transpose(1, 2, 3, 0)), path.with_suffix(".nii.gz"))


def _write_sparse_session(betas, path, n_trials, shape):
    """A (n_trials, Z, Y, X) int16 HDF5 session of which only the first ``len(betas)`` trials are written (the
    rest, never allocated, read as 0); ``betas`` is (k, X, Y, Z) psc or None for a session without data."""
    X, Y, Z = shape
    with h5py.File(path.with_suffix(".hdf5"), "w") as f:
        ds = f.create_dataset("betas", shape=(n_trials, Z, Y, X), dtype=np.int16, chunks=(n_trials, 1, Y, X),
                              compression="gzip", compression_opts=1, track_times=False)
        if betas is not None and len(betas):
            data = np.clip(np.rint(betas * 300), -32768, 32767).astype(np.int16)
            ds[: len(data)] = data.transpose(0, 3, 2, 1)


def _simulated_counts(cfg, s):
    """(sessions with content, simulated trials) of subject ``s``."""
    n_ses = min(cfg.sessions[s - 1], cfg.simulated_sessions or cfg.sessions[s - 1])
    return n_ses, min(cfg.simulated_trials or n_ses * cfg.trials_per_session, n_ses * cfg.trials_per_session)


def _simulate_subject(cfg, seed, s, design, feats, layout, root, betas_format, bar):
    """Anatomy, ROIs, volume and surface betas and resting maps of subject ``s``; returns its truth record."""
    rng = _rng(seed, 3, s)
    anat = brain.make_anatomy(cfg, rng, cfg.volume_shapes[s - 1] if cfg.volume_shapes else None)
    gain = float(rng.uniform(0.85, 1.15))
    noise_factor = float(rng.uniform(*cfg.subject_noise))
    tuning = brain.Tuning(seed, cfg.feature_grid, subject=s)
    func = root / f"nsddata/ppdata/subj{s:02d}/func1pt8mm"
    _write_rois(anat, func)

    sparse = bool(cfg.simulated_sessions or cfg.simulated_trials)
    n_content, n_sim = _simulated_counts(cfg, s)
    ids = design.trial_ids(s)
    own = design.subjectim[s - 1] - 1  # 0-based ids of the subject's images
    if sparse:  # only the images of simulated trials need a signal model
        own = np.unique(ids[:n_sim])
    sub_feats = {k: f[own] for k, f in feats.items()}
    sig, evoked, noise_sd, amp = _signal_model(cfg, tuning, sub_feats, anat.u, anat.v, anat.hemi, gain,
                                               noise_factor, rng)
    ncsnr = np.zeros(anat.shape, np.float32)
    ncsnr[anat.general] = amp / noise_sd
    # brain voxels outside nsdgeneral get no signal-like noise: scale them so their total sd is outside_noise
    boost = 1 / np.sqrt(1 - cfg.feature_noise)
    vol_sd = np.where(anat.brain, cfg.outside_noise * noise_factor * boost, 0.0).astype(np.float32)
    vol_sd[anat.general] = noise_sd

    # surface: common vertices with a small subject-specific misalignment
    mis = brain.SmoothField(rng, 2, 8, max_freq=1.5)
    surf = []
    for h in (0, 1):
        u0, v0 = layout.u[h], layout.v[h]
        d = 0.02 * mis(u0, v0)
        u, v = np.clip(u0 + d[:, 0], 0, 1), np.clip(v0 + d[:, 1], 0, 1)
        surf.append((u, v, *_signal_model(cfg, tuning, sub_feats, u, v, np.full(len(u), h), gain, noise_factor,
                                          rng)))

    bdir = root / f"nsddata_betas/ppdata/subj{s:02d}/func1pt8mm/{BETAS_DIR}"
    sdir = root / f"nsddata_betas/ppdata/subj{s:02d}/fsaverage/{BETAS_DIR}"
    bdir.mkdir(parents=True)
    sdir.mkdir(parents=True)
    _save_nifti(ncsnr, bdir / "ncsnr.nii.gz")
    column = {img: c for c, img in enumerate(own)}
    tps = cfg.trials_per_session
    for ses in range(cfg.sessions[s - 1]):
        if sparse and (ses >= n_content or n_sim <= ses * tps):
            _write_sparse_session(None, bdir / f"betas_session{ses + 1:02d}", tps, anat.shape)
            if ses < n_content:
                for h in ("lh", "rh"):
                    _save_mgh(np.zeros((len(layout.u[0 if h == "lh" else 1]), tps), np.float32),
                              sdir / f"{h}.betas_session{ses + 1:02d}.mgh")
            bar.update(1)
            continue
        cols = np.array([column[i] for i in ids[ses * tps:min((ses + 1) * tps, n_sim if sparse else len(ids))]])
        srng = _rng(seed, 4, s, ses)
        betas = _volume_noise(cfg, srng, len(cols), anat, vol_sd)
        offset = srng.normal(0, cfg.drift_offset, anat.shape) * anat.brain
        sgain = 1 + srng.normal(0, cfg.drift_gain, len(anat.u))
        fluct = brain.random_features(srng, len(cols), cfg.feature_grid)  # signal-like trial fluctuations
        fnoise = np.sqrt(cfg.feature_noise) * tuning.responses(fluct, anat.u, anat.v, anat.hemi) * noise_sd
        betas[:, anat.general] += sgain * (evoked + sig[cols]) + fnoise
        betas += offset
        if sparse:
            _write_sparse_session(betas, bdir / f"betas_session{ses + 1:02d}", tps, anat.shape)
        else:
            _write_volume_session(betas, bdir / f"betas_session{ses + 1:02d}", betas_format)
        del betas
        for h, (u, v, hsig, hev, hsd, _) in zip(("lh", "rh"), surf):
            sb = _surface_noise(cfg, srng, len(cols), u, v, hsd)
            sb += np.sqrt(cfg.feature_noise) * tuning.responses(fluct, u, v, np.full(len(u), h)) * hsd
            hgain = 1 + srng.normal(0, cfg.drift_gain, len(u))
            sb += hgain * (hev + hsig[cols]) + srng.normal(0, cfg.drift_offset, len(u))
            if sparse and len(sb) < tps:
                sb = np.concatenate([sb, np.zeros((tps - len(sb), sb.shape[1]), np.float32)])
            _save_mgh(sb.T, sdir / f"{h}.betas_session{ses + 1:02d}.mgh")
        bar.update(1)

    # resting maps: random feature vectors through the same model, plus the same noise
    rrng = _rng(seed, 5, s)
    rest_feats = brain.random_features(rrng, cfg.n_rest, cfg.feature_grid)
    rdir = root / f"nsdmini_resting/subj{s:02d}"
    rdir.mkdir(parents=True)
    for h, (u, v, _, _, hsd, hamp) in zip(("lh", "rh"), surf):
        act = tuning.responses(rest_feats, u, v, np.full(len(u), h)) * hamp
        act += _surface_noise(cfg, rrng, cfg.n_rest, u, v, hsd)
        _save_mgh(act.T, rdir / f"{h}.resting.mgh")
    bar.update(1)

    rois = {name: anat.prf_vals == k for k, name in brain.PRF_LABELS.items()}
    rois.update({name: anat.stream_vals == k for k, name in brain.STREAM_LABELS.items()})
    snr = amp / noise_sd
    return dict(volume_shape=list(anat.shape), nsdgeneral_voxels=int(anat.general.sum()),
                brain_voxels=int(anat.brain.sum()), n_sessions=int(cfg.sessions[s - 1]),
                n_trials=int(design.n_trials[s]), **(dict(simulated_sessions=n_content, simulated_trials=n_sim)
                                                     if sparse else {}), gain=round(gain, 4), noise_factor=round(noise_factor, 4),
                roi_voxels={k: int(m.sum()) for k, m in rois.items()},
                median_ncsnr={k: round(float(np.median(snr[m])), 4) for k, m in rois.items() if m.any()},
                expected_single_trial_reliability={
                    k: round(float(np.median(snr[m] ** 2 / (1 + snr[m] ** 2))), 4) for k, m in rois.items() if m.any()})


def simulate(out, profile="demo", seed=0, betas_format="hdf5", config=None, progress=True):
    """Simulate an NSD-mini raw tree.

    Parameters
    ----------
    out : str or Path
        Target folder (built under a temporary name and renamed into place when complete; an existing folder
        is replaced only then).
    profile : str
        Config profile (``smoke``, ``demo``, ``full``) when ``config`` is not given.
    seed : int
        Seed; the same seed gives identical arrays.
    betas_format : {"hdf5", "nifti"}
        Volume betas as ``betas_sessionNN.hdf5`` (T, Z, Y, X) or ``betas_sessionNN.nii.gz`` (X, Y, Z, T).
    config : SimConfig, optional
        Use this config instead of loading the profile.
    progress : bool
        Show a progress bar.

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    out = Path(out)
    if betas_format not in BETAS_FORMATS:
        raise ConfigError(f"betas_format {betas_format!r}: expected one of {', '.join(BETAS_FORMATS)}")
    cfg = (config or load_config(SimConfig, profile)).validate()
    if (cfg.simulated_sessions or cfg.simulated_trials) and betas_format != "hdf5":
        raise ConfigError("simulated_sessions/simulated_trials write partly empty sessions, which only HDF5 can "
                          f"hold: use betas_format 'hdf5', not {betas_format!r}")
    seed = int(seed)
    steps = 2 + sum(cfg.sessions[s - 1] + 1 for s in cfg.subjects)
    with atomic_dir(out) as root, tqdm(total=steps, desc="simulate NSD-mini", disable=not progress) as bar:
        design = make_design(cfg, _rng(seed, 1))
        _write_design(design, root)
        bar.set_postfix_str("stimuli")
        if cfg.simulated_sessions or cfg.simulated_trials:
            counts = {s: _simulated_counts(cfg, s) for s in cfg.subjects}
            tps = cfg.trials_per_session
            shown = np.concatenate([design.trial_ids(s)[:counts[s][0] * tps] for s in cfg.subjects])
            rendered = np.concatenate([design.trial_ids(s)[:counts[s][1]] for s in cfg.subjects])
            feats = _render_sparse(cfg, design, seed, root, bar, shown, rendered)
        else:
            feats = _render_stimuli(cfg, design, seed, root, bar)
        bar.update(1)
        layout = brain.make_surface(cfg.n_vertices, cfg.flatmap_size, _rng(seed, 6))
        _write_flatmap(layout, root)
        bar.update(1)
        subjects = {}
        for s in cfg.subjects:
            bar.set_postfix_str(f"subj{s:02d}")
            subjects[f"subj{s:02d}"] = _simulate_subject(cfg, seed, s, design, feats, layout, root, betas_format, bar)
        truth = dict(seed=seed, profile=cfg.profile, betas_format=betas_format, config=cfg.to_dict(),
                     n_subjects_in_design=N_SUBJECTS, n_images_total=int(design.n_total),
                     n_images_per_subject=cfg.n_images, n_shared=cfg.n_shared, subjects=subjects,
                     sheet=dict(early_bands=dict(zip(["V1", "V2", "V3", "hV4"], zip(brain.EARLY_BANDS[:-1],
                                                                                   brain.EARLY_BANDS[1:]))),
                                mid=[brain.EARLY_END, brain.MID_END], high=[brain.MID_END, 1.0]),
                     prf_labels=brain.PRF_LABELS, stream_labels=brain.STREAM_LABELS,
                     vocabulary=dict(categories=scenes.CATEGORIES, colors=list(scenes.COLORS),
                                     backgrounds=scenes.BACKGROUNDS, positions=scenes.POSITIONS,
                                     sizes=scenes.SIZES, shapes=scenes.SHAPES),
                     brain_model=DESCRIPTION)
        (root / TRUTH_FILE).write_text(json.dumps(truth, indent=1))
    return out
