"""A raw NSD tree at real geometry with a handful of simulated trials, written by the NSD-mini simulator.

Real sizes everywhere a reader or a model sees them: the design (30,000 trials, 8 × 10,000 images, 1,000 shared,
73,000 image ids), 750-trial sessions in each subject's func1pt8mm grid (37 sessions for subjects 1, 2, 5, 7),
425 px stimuli, fsaverage-size surfaces (163,842 vertices per hemisphere) and a 256 × 256 flat map. Only the first
``simulated_sessions`` sessions hold data (the others are HDF5 files of the right shape with nothing written, which
read as 0), and only the first ``simulated_trials`` trials of each subject get simulated betas and a drawn image.
The tree passes ``neurorecon check-data --profile full``; prepare it with the data config's ``max_sessions``.
"""

from ..config import load_config
from ..simulate import simulate
from ..simulate.config import SimConfig

__all__ = ["FUNC1PT8MM_SHAPES", "dryrun_sim_config", "write_nsd_tree"]

#: NSD's func1pt8mm volume (X, Y, Z) of subjects 1, 2, 5, 7 (the NSD data manual)
FUNC1PT8MM_SHAPES = {1: (81, 104, 83), 2: (82, 106, 84), 5: (79, 97, 78), 7: (78, 95, 81)}
SUBJECTS = (1, 2, 5, 7)


def dryrun_sim_config(simulated_sessions=2, simulated_trials=16):
    """The simulator config of the dry-run tree (the ``full`` simulator profile with real-geometry overrides).

    Subjects 3, 4, 6, 8 are not simulated; their ``volume_shapes`` entries (subject 1's grid) are unused.
    """
    shapes = tuple(FUNC1PT8MM_SHAPES.get(s, FUNC1PT8MM_SHAPES[1]) for s in range(1, 9))
    return load_config(SimConfig, "full", overrides=dict(
        subjects=SUBJECTS, n_shared=1000, n_train=9000, extra_images=0.0, trials_per_session=750,
        sessions=(37, 37, 32, 30, 37, 32, 37, 30), image_size=425, supersample=1, volume_shapes=shapes,
        volume_jitter=0, nsdgeneral_voxels=(12682, 15725), n_vertices=163842, flatmap_size=256, n_rest=4,
        feature_grid=5,  # low-level feature cells must tile the 425 px image (5 x 85 px)
        simulated_sessions=simulated_sessions, simulated_trials=simulated_trials)).validate()


def write_nsd_tree(out, simulated_sessions=2, simulated_trials=16, seed=0, progress=False):
    """Write the dry-run raw NSD tree to ``out`` (kept if already written with the same settings)."""
    import json
    from pathlib import Path

    out = Path(out)
    truth = out / "nsdmini_truth.json"
    cfg = dryrun_sim_config(simulated_sessions, simulated_trials)
    if truth.is_file():
        meta = json.loads(truth.read_text())
        if meta.get("seed") == seed and meta.get("config") == json.loads(json.dumps(cfg.to_dict())):
            return out
    return simulate(out, seed=seed, config=cfg, progress=progress)
