"""The simulator's config (``neurorecon/configs/simulate.yaml``)."""

import dataclasses
from typing import Optional

from ..config import StageConfig
from ..errors import ConfigError

__all__ = ["SimConfig"]

N_SUBJECTS = 8


@dataclasses.dataclass
class SimConfig(StageConfig):
    """Sizes, signal and noise of the simulated NSD-mini.

    Attributes
    ----------
    subjects : tuple of int
        Subjects (1..8) whose brains and betas are simulated; the design always has 8 rows.
    sessions : tuple of int
        Completed sessions of subjects 1..8 (8 values); a complete subject has
        ``3 * (n_shared + n_train) / trials_per_session`` sessions.
    n_shared, n_train : int
        Shared (test) images and unique (training) images per subject.
    trials_per_session : int
        Trials per scan session.
    image_size, supersample : int
        Stimulus side in pixels and the drawing resolution factor (antialiasing).
    extra_images : float
        Fraction of unused image ids added to the stimulus set (ids are not dense).
    val_fraction : float
        Fraction of images in the COCO ``val2017`` split.
    volume_shape, volume_jitter : tuple of int, int
        Typical (X, Y, Z) functional volume and the per-axis random change per subject.
    nsdgeneral_voxels : tuple of int
        Range [low, high) of nsdgeneral voxel counts per subject.
    n_vertices, flatmap_size, n_rest : int
        Vertices per hemisphere of the common surface, flat-map side, resting maps per subject.
    feature_grid : int
        Side of the coarse grid of low-level image features.
    amplitude : tuple of float
        Signal standard deviation across images (percent signal change) in early, mid and high areas.
    evoked : float
        Mean evoked response in early areas (psc).
    reliability : tuple of float
        Target single-trial split-half reliability in early, mid and high areas (typical subject).
    subject_noise : tuple of float
        Range of per-subject noise multipliers.
    outside_noise : float
        Noise standard deviation (psc) of brain voxels outside nsdgeneral.
    smooth_noise : float
        Fraction of the noise variance that is spatially smooth.
    feature_noise : float
        Fraction of the noise variance (in nsdgeneral and on the surface) that is structured like signal: random
        feature vectors passed through the voxel's tuning (trial-to-trial fluctuations of the represented content).
    drift_offset, drift_gain : float
        Per-session voxel offset (psc) and gain change (relative) standard deviations.
    volume_shapes : tuple of (X, Y, Z), optional
        Exact volume of each subject 1..8 (8 triples, e.g. NSD's func1pt8mm grids), instead of ``volume_shape``
        with jitter.
    simulated_sessions : int, optional
        Sessions per subject written with content (volume and surface betas); the later sessions up to
        ``sessions`` are HDF5 files of the right shape that hold no data (every value reads as 0), so a tree
        with the real number of session files fits on disk. Null: every session.
    simulated_trials : int, optional
        Trials per subject (the first ones, in trial order) that get simulated betas and a rendered image; the
        other trials of the simulated sessions read as 0 and their images are black (their scenes and captions
        are still written). Null: every trial.
    """

    STAGE = "simulate"

    subjects: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    sessions: tuple[int, ...] = (10, 10, 8, 7, 10, 8, 10, 7)
    n_shared: int = 100
    n_train: int = 400
    trials_per_session: int = 150
    image_size: int = 64
    supersample: int = 4
    extra_images: float = 0.1
    val_fraction: float = 0.2
    volume_shape: tuple[int, int, int] = (20, 24, 20)
    volume_jitter: int = 3
    nsdgeneral_voxels: tuple[int, int] = (800, 1500)
    n_vertices: int = 1200
    flatmap_size: int = 64
    n_rest: int = 300
    feature_grid: int = 8
    amplitude: tuple[float, float, float] = (1.6, 1.3, 1.1)
    evoked: float = 1.0
    reliability: tuple[float, float, float] = (0.32, 0.24, 0.16)
    subject_noise: tuple[float, float] = (0.85, 1.2)
    outside_noise: float = 2.0
    smooth_noise: float = 0.25
    feature_noise: float = 0.35
    drift_offset: float = 0.3
    drift_gain: float = 0.08
    volume_shapes: Optional[tuple[tuple[int, int, int], ...]] = None
    simulated_sessions: Optional[int] = None
    simulated_trials: Optional[int] = None

    @property
    def n_images(self):
        """Images per subject."""
        return self.n_shared + self.n_train

    @property
    def n_sessions_total(self):
        """Sessions of a complete subject."""
        return 3 * self.n_images // self.trials_per_session

    def validate(self):
        """Raise :class:`ConfigError` if the sizes are inconsistent; return self."""
        if (3 * self.n_images) % self.trials_per_session:
            raise ConfigError(f"simulate config: 3 * (n_shared + n_train) = {3 * self.n_images} is not a multiple of "
                              f"trials_per_session = {self.trials_per_session}")
        if len(self.sessions) != N_SUBJECTS or not all(0 < s <= self.n_sessions_total for s in self.sessions):
            raise ConfigError(f"simulate config: sessions must hold {N_SUBJECTS} values in 1..{self.n_sessions_total}, "
                              f"found {self.sessions}")
        if not self.subjects or not all(1 <= s <= N_SUBJECTS for s in self.subjects):
            raise ConfigError(f"simulate config: subjects must be in 1..{N_SUBJECTS}, found {self.subjects}")
        if self.image_size % self.feature_grid or self.flatmap_size % 2:
            raise ConfigError("simulate config: image_size must be a multiple of feature_grid and flatmap_size even")
        if not (0 <= self.smooth_noise and 0 <= self.feature_noise and self.smooth_noise + self.feature_noise < 1):
            raise ConfigError("simulate config: smooth_noise and feature_noise must be >= 0 with a sum below 1")
        if self.volume_shapes is not None and len(self.volume_shapes) != N_SUBJECTS:
            raise ConfigError(f"simulate config: volume_shapes must hold {N_SUBJECTS} (X, Y, Z) triples, found "
                              f"{len(self.volume_shapes)}")
        for key in ("simulated_sessions", "simulated_trials"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"simulate config: {key} must be null or >= 1, found {getattr(self, key)}")
        if self.simulated_trials and self.simulated_trials > (self.simulated_sessions or max(self.sessions)) * \
                self.trials_per_session:
            raise ConfigError("simulate config: simulated_trials exceeds the trials of the simulated sessions")
        return self
