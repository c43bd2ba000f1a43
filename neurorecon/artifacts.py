"""Stage artifact folders: written atomically, with the resolved config, tidy metrics and a completion marker.

A stage folder ``$NEURORECON_HOME/artifacts/<profile>/<stage>/`` holds

- ``config.yaml``: the resolved stage config;
- ``metrics.csv``: tidy metrics with columns ``stage, method, subject, split, metric, value``;
- whatever the stage produces;
- ``COMPLETE``: JSON marker written last (config digest, time, duration, a run id, and the run ids of the
  upstream stages it was built from, :data:`STAGE_DEPENDS`).

A stage counts as *complete with a config* (:func:`is_complete` with a digest, which decides whether a stage is
reused) only while the upstream stages it was built from are still the same runs, recursively: re-making the
foundation models makes the pretraining, refinement, language and reconstruction stages built on the old ones
stale, so they are rebuilt instead of silently reused.

Everything is first written into a sibling ``<stage>.partial-<pid>`` folder and renamed into place only when
the stage finished, so a stage killed mid-way leaves no half-written artifact and no marker, and an older
complete version is replaced only by a newer complete one.
"""

import csv
import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path

import pandas as pd

from . import paths
from .errors import MissingStageError

__all__ = [
    "METRIC_COLUMNS",
    "STAGE_NOTEBOOKS",
    "STAGE_DEPENDS",
    "StageWriter",
    "atomic_dir",
    "is_complete",
    "stale_upstream",
    "read_marker",
    "require_stage",
    "read_metrics",
    "collect_metrics",
]

METRIC_COLUMNS = ("stage", "method", "subject", "split", "metric", "value")
MARKER = "COMPLETE"

#: Which notebook produces which stage (in run order).
STAGE_NOTEBOOKS = {
    "data": "01_data_preparation",
    "foundation": "02_foundation_models",
    "encoding": "03_calibrated_encoding",
    "pretrain": "04_multisubject_pretraining",
    "refine": "05_singlesubject_refinement",
    "language": "06_language_instruction_tuning",
    "reconstruction": "07_reconstruction_and_evaluation",
    "figures": "08_paper_figures",
}

#: The stages whose outputs each stage reads (direct dependencies; staleness is checked recursively).
STAGE_DEPENDS = {
    "data": (),
    "foundation": ("data",),
    "encoding": ("data",),
    "pretrain": ("data", "foundation", "encoding"),
    "refine": ("pretrain",),
    "language": ("data", "foundation"),
    "reconstruction": ("data", "foundation", "pretrain", "refine", "language"),
    "figures": ("reconstruction",),
}


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_partials(target):
    """Remove ``<target>.partial-<pid>`` / ``.old-<pid>`` leftovers of processes that were killed."""
    if not target.parent.is_dir():
        return
    for p in target.parent.glob(f"{target.name}.*-*"):
        kind, _, pid = p.name[len(target.name) + 1:].rpartition("-")
        if kind in ("partial", "old") and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


class atomic_dir:
    """Context manager: build a folder under a temporary name, rename it into place on success.

    On an exception the temporary folder is removed and an existing ``target`` is left untouched.

    Parameters
    ----------
    target : str or Path
        Final folder.
    """

    def __init__(self, target):
        self.target = Path(target)
        self.tmp = self.target.with_name(f"{self.target.name}.partial-{os.getpid()}")

    def __enter__(self):
        _remove_stale_partials(self.target)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if self.target.exists():
            old = self.target.with_name(f"{self.target.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


class StageWriter:
    """Write one stage's artifact folder atomically.

    Use as a context manager; inside, write outputs under ``writer.path`` and record metrics with
    :meth:`add_metric`. On a clean exit the metrics, then the marker, are written and the folder is renamed into
    place.

    Parameters
    ----------
    config : StageConfig
        The resolved stage config (its ``STAGE`` and ``profile`` pick the folder).
    target : str or Path, optional
        Override the folder (default :func:`neurorecon.paths.stage_dir`).
    """

    def __init__(self, config, target=None):
        self.config = config
        self.stage = config.STAGE
        self.target = Path(target) if target else paths.stage_dir(self.stage, config.profile)
        self._atomic = atomic_dir(self.target)
        self.rows = []
        self.path = None
        self._t0 = None

    def __enter__(self):
        self.path = self._atomic.__enter__()
        self._t0 = time.time()
        (self.path / "config.yaml").write_text(self.config.to_yaml())
        return self

    def add_metric(self, method, subject, split, metric, value):
        """Record one tidy metric row (``subject`` may be ``"all"`` or an int)."""
        value = float(value)
        self.rows.append(dict(stage=self.stage, method=str(method), subject=str(subject), split=str(split),
                              metric=str(metric), value=value))

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            with open(self.path / "metrics.csv", "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
                w.writeheader()
                for row in self.rows:
                    w.writerow({**row, "value": repr(row["value"]) if math.isfinite(row["value"]) else "nan"})
            profile = self.config.profile
            upstream = {dep: _run_id(m) for dep in STAGE_DEPENDS.get(self.stage, ())
                        if (m := read_marker(dep, profile)) is not None}  # the ones present: those it could read
            marker = dict(stage=self.stage, profile=profile, digest=self.config.digest(),
                          finished=time.strftime("%Y-%m-%dT%H:%M:%S"), seconds=round(time.time() - self._t0, 2),
                          run_id=uuid.uuid4().hex, upstream=upstream)
            (self.path / MARKER).write_text(json.dumps(marker, indent=1))
        return self._atomic.__exit__(exc_type, exc, tb)


def read_marker(stage, profile):
    """The completion marker of a stage as a dict, or None if the stage is not complete."""
    marker = paths.stage_dir(stage, profile) / MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def _run_id(marker):
    return marker.get("run_id") or f"{marker.get('digest')}@{marker.get('finished')}"  # markers before run ids


def stale_upstream(stage, profile, marker=None):
    """The upstream stage that changed since ``stage`` was built (re-made, removed, or itself stale), or None."""
    marker = read_marker(stage, profile) if marker is None else marker
    for dep, run_id in (marker or {}).get("upstream", {}).items():
        current = read_marker(dep, profile)
        if current is None or _run_id(current) != run_id or stale_upstream(dep, profile, current):
            return dep
    return None


def is_complete(stage, profile, digest=None):
    """True if the stage finished; with ``digest``, finished with that config *and* the upstream stages it was
    built from are unchanged (:func:`stale_upstream`), i.e. it may be reused as it is."""
    marker = read_marker(stage, profile)
    if marker is None or digest is None:
        return marker is not None
    return marker.get("digest") == digest and stale_upstream(stage, profile, marker) is None


def require_stage(stage, profile):
    """Return a complete stage's folder, or raise an error naming the notebook that makes it."""
    folder = paths.stage_dir(stage, profile)
    if not is_complete(stage, profile):
        notebook = STAGE_NOTEBOOKS.get(stage, "?")
        state = "is incomplete (no COMPLETE marker)" if folder.exists() else "is missing"
        raise MissingStageError(
            f"stage '{stage}' for profile '{profile}' {state} at {folder}: run notebooks/{notebook}.ipynb "
            f"first (or `make reproduce PROFILE={profile}`)"
        )
    return folder


def read_metrics(folder):
    """Read one stage folder's ``metrics.csv`` as a DataFrame."""
    return pd.read_csv(Path(folder) / "metrics.csv", dtype={"subject": str})


def collect_metrics(profile):
    """Every complete stage's metrics for a profile as one tidy DataFrame (stages in run order)."""
    frames = [read_metrics(paths.stage_dir(s, profile)) for s in STAGE_NOTEBOOKS if is_complete(s, profile)]
    if not frames:
        return pd.DataFrame(columns=list(METRIC_COLUMNS))
    return pd.concat(frames, ignore_index=True)
