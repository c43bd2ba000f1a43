"""Stage ``data`` (notebook 01): simulate or locate NSD, check it, prepare the store, measure it.

``layout: neuropictor`` reads NeuroPictor's released preprocessed data at ``nsd_root`` instead of raw NSD
(:mod:`neurorecon.data.neuropictor_layout`): flat maps only, so the raw-NSD check, voxel counts and ROI
reliabilities are skipped (their metrics are absent) and the NeuroPictor stages run on it.
"""

import dataclasses
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .. import paths
from ..artifacts import StageWriter, is_complete, require_stage
from ..config import StageConfig
from ..errors import ConfigError, DataError
from .check import check_data
from .preparation import prepare
from .reliability import spearman_brown, split_half_reliability
from .store import open_store

__all__ = ["DataConfig", "run_data_stage", "resolve_nsd_root", "store_path", "reliability_table"]


@dataclasses.dataclass
class DataConfig(StageConfig):
    """Config of the data stage (``neurorecon/configs/data.yaml``)."""

    STAGE = "data"
    NOTEBOOK = "01_data_preparation"
    #: 1: the ``*_common`` arrays resample each subject's whole volume (its voxels that the interpolation onto the
    #: union mask reads), not only its nsdgeneral voxels; stores prepared before are rebuilt, not reused.
    RECIPE = 1

    nsd_root: Optional[str] = None
    simulate: bool = True
    sim_seed: int = 0
    betas_format: str = "hdf5"
    subjects: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7, 8])
    coco_root: Optional[str] = None
    flatmap: Optional[str] = None
    image_size: Optional[int] = None
    manifest: Optional[str] = None
    layout: str = "nsd"
    trust_pickle: bool = False
    max_sessions: Optional[int] = None
    max_trials: Optional[int] = None


def resolve_nsd_root(cfg):
    """The raw tree this config reads (the simulated one when ``nsd_root`` is null)."""
    if cfg.nsd_root:
        return Path(cfg.nsd_root).expanduser()
    if not cfg.simulate:
        raise ConfigError(f"data config (profile {cfg.profile}): nsd_root is null; set it to your raw NSD copy "
                          "in a YAML passed with --config (or set simulate: true)")
    return paths.simulated_nsd_dir(cfg.profile)


def store_path(profile):
    """The prepared store of a profile; raises naming notebook 01 if it is not there yet."""
    return require_stage("data", profile) / "store"


def _ensure_simulated(cfg, root, progress):
    from ..simulate import simulate

    truth = root / "nsdmini_truth.json"
    if truth.is_file():
        meta = json.loads(truth.read_text())
        if meta.get("seed") == cfg.sim_seed and meta.get("betas_format", "hdf5") == cfg.betas_format:
            return
    simulate(root, profile=cfg.profile, seed=cfg.sim_seed, betas_format=cfg.betas_format, progress=progress)


def reliability_table(subject_data):
    """Median split-half reliability per ROI of one prepared subject: list of (roi_kind, roi, r1, r3)."""
    r = split_half_reliability(subject_data.test_trial_betas, subject_data.test_trial_image_ids)
    rows = [("all", "nsdgeneral", float(np.nanmedian(r)), float(np.nanmedian(spearman_brown(r, 3))))]
    for kind, rois in subject_data.rois.items():
        for name, cols in rois.items():
            if cols:
                rr = r[cols]
                rows.append((kind, name, float(np.nanmedian(rr)), float(np.nanmedian(spearman_brown(rr, 3)))))
    return rows


def _run_neuropictor_layout(cfg, progress):
    from .neuropictor_layout import prepare_neuropictor

    if not cfg.nsd_root:
        raise ConfigError(f"data config (profile {cfg.profile}): layout neuropictor needs nsd_root, the folder of "
                          "NeuroPictor's released data (with NSD/fmri_npy or fmri_npy inside)")
    t0 = time.time()
    with StageWriter(cfg) as w:
        store = prepare_neuropictor(cfg.nsd_root, w.path / "store", subjects=cfg.subjects,
                                    image_size=cfg.image_size, allow_pickle=cfg.trust_pickle, progress=progress)
        st = open_store(store)
        w.add_metric("prepare", "all", "all", "seconds", time.time() - t0)
        w.add_metric("prepare", "all", "all", "n_images", st.meta["n_images"])
        for s in st.subjects:
            sub = st.subject(s)
            w.add_metric("prepare", s, "train", "n_trials", len(sub.train_image_ids))
            w.add_metric("prepare", s, "test", "n_trials", len(sub.test_trial_image_ids))
            w.add_metric("prepare", s, "test", "n_images", len(sub.test_image_ids))
    return store_path(cfg.profile)


def run_data_stage(cfg, force=False, progress=True):
    """Run the data stage for a config and return the prepared store folder.

    A stage already complete with the same config is reused unless ``force``.
    """
    if cfg.layout not in ("nsd", "neuropictor"):
        raise ConfigError(f"data config (profile {cfg.profile}): layout must be nsd or neuropictor, got "
                          f"{cfg.layout!r}")
    if not force and is_complete(cfg.STAGE, cfg.profile, cfg.digest()):
        return store_path(cfg.profile)
    for key in ("max_sessions", "max_trials"):
        value = getattr(cfg, key)
        if value is not None and (value < 1 or cfg.layout == "neuropictor"):
            raise ConfigError(f"data config (profile {cfg.profile}): {key} must be null" +
                              (" with layout neuropictor (its released arrays are used whole)"
                               if cfg.layout == "neuropictor" else " or >= 1") + f", found {value}")
    if cfg.layout == "neuropictor":
        return _run_neuropictor_layout(cfg, progress)
    root = resolve_nsd_root(cfg)
    if cfg.simulate and not cfg.nsd_root:
        _ensure_simulated(cfg, root, progress)
    problems = check_data(root, cfg.manifest or cfg.profile, subjects=cfg.subjects)
    if problems:
        raise DataError(root, f"a raw NSD tree matching the {cfg.manifest or cfg.profile} manifest",
                        f"{len(problems)} problem(s):\n  " + "\n  ".join(problems))
    t0 = time.time()
    with StageWriter(cfg) as w:
        store = prepare(root, w.path / "store", subjects=cfg.subjects, coco_root=cfg.coco_root,
                        flatmap=cfg.flatmap, image_size=cfg.image_size, progress=progress,
                        max_sessions=cfg.max_sessions, max_trials=cfg.max_trials)
        w.add_metric("prepare", "all", "all", "seconds", time.time() - t0)
        st = open_store(store)
        w.add_metric("prepare", "all", "all", "n_images", st.meta["n_images"])
        for s in st.subjects:
            sub = st.subject(s)
            w.add_metric("prepare", s, "all", "n_voxels", len(sub.voxel_ijk))
            w.add_metric("prepare", s, "all", "n_common_source_voxels", sub.info["common_source_voxels"])
            w.add_metric("prepare", s, "train", "n_trials", len(sub.train_image_ids))
            w.add_metric("prepare", s, "test", "n_trials", len(sub.test_trial_image_ids))
            w.add_metric("prepare", s, "test", "n_images", len(sub.test_image_ids))
            for kind, name, r1, r3 in reliability_table(sub):
                w.add_metric("split_half", s, "test", f"r_{name}", r1)
                w.add_metric("split_half", s, "test", f"r3_{name}", r3)
    return store_path(cfg.profile)
