"""``make reproduce``: run the numbered notebooks in order with papermill.

Executed copies go to ``$NEURORECON_HOME/executed/<profile>/``. A notebook is skipped when its stage is already
complete with the same config *and* the notebook itself last ran to the end under that config (a ``.passed`` file
beside its executed copy); a stage that is complete but whose notebook failed in a later cell (an assertion on the
results, a figure) is run again, which reuses the stage's outputs and re-checks the cells. The first failure stops
the run and prints the failing cell.
"""

import re
import time
from pathlib import Path

from . import paths
from .artifacts import STAGE_NOTEBOOKS, is_complete, read_marker, stale_upstream
from .config import STAGE_CONFIGS, config_class, load_config

__all__ = ["reproduce", "notebooks"]

_NB_RE = re.compile(r"^(\d\d)_.+\.ipynb$")


def notebooks():
    """The numbered notebooks, in order."""
    return sorted(p for p in paths.notebooks_dir().glob("*.ipynb") if _NB_RE.match(p.name))


def _stage_of(nb):
    return next((stage for stage, name in STAGE_NOTEBOOKS.items() if name == nb.stem), None)


def _config_digest(stage, profile, config_file=None):
    if stage not in STAGE_CONFIGS:
        return None
    return load_config(config_class(stage), profile, path=config_file).digest()


def _print_failure(err, executed):
    print(f"\n--- failing cell (execution count {getattr(err, 'exec_count', '?')}) ---")
    print(getattr(err, "source", "").rstrip())
    print(f"--- {getattr(err, 'ename', type(err).__name__)}: {getattr(err, 'evalue', err)}")
    tb = getattr(err, "traceback", None)
    if tb:
        print("\n".join(tb[-6:]))
    print(f"--- executed copy with all outputs: {executed}")


def reproduce(profile="demo", start=None, force=False, log=print, config_file=None, check_results=None):
    """Run every numbered notebook for a profile; returns 0 on success, 1 at the first failure.

    ``config_file`` is the user's run config (see :func:`neurorecon.config.load_config`): it is validated whole
    before anything runs, passed to every notebook's ``config_file`` parameter and set as
    ``$NEURORECON_CONFIG`` for the kernels. ``check_results=False`` turns the notebooks' assertions on the
    quality of the results off (:func:`neurorecon.config.quality_checks`; the plumbing runs: ``make dryrun`` and
    the tiny full-profile chain of the tests); their assertions on what was produced stay.
    """
    import papermill as pm

    if config_file:
        config_file = str(Path(config_file).expanduser().resolve())
        for section in STAGE_CONFIGS:  # every section checked now, not when its notebook is reached
            load_config(config_class(section), profile, path=config_file)
    params = {"profile": profile, "config_file": config_file}
    if check_results is not None:
        params["check_results"] = bool(check_results)
    with paths.environ(NEURORECON_PROFILE=profile, NEURORECON_CONFIG=config_file):  # what the kernels inherit
        return _run_notebooks(pm, profile, start, force, log, config_file, params)


def _run_notebooks(pm, profile, start, force, log, config_file, params):
    from nbclient.exceptions import DeadKernelError

    out_dir = paths.home() / "executed" / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = []
    for nb in notebooks():
        if start and nb.name[:2] < str(start)[:2]:
            continue
        stage = _stage_of(nb)
        digest = _config_digest(stage, profile, config_file) if stage else None
        executed = out_dir / nb.name
        passed = executed.with_suffix(".passed")
        complete = bool(digest) and is_complete(stage, profile, digest)
        if not force and complete and passed.is_file() and passed.read_text() == digest:
            log(f"[skip] {nb.name}: stage '{stage}' already complete with the same config")
            continue
        passed.unlink(missing_ok=True)
        note = " (stage complete: reusing it, re-checking the notebook)" if complete and not force else ""
        marker = read_marker(stage, profile) if digest and not force else None
        if marker and marker.get("digest") == digest and not complete:
            note = f" (stage '{stage}' was built on an older '{stale_upstream(stage, profile, marker)}': rebuilding it)"
        log(f"[run ] {nb.name} (profile {profile}) -> {executed}{note}")
        t0 = time.time()
        try:
            pm.execute_notebook(str(nb), str(executed), parameters=params,
                                kernel_name="python3", cwd=str(nb.parent), progress_bar=False)
        except pm.PapermillExecutionError as err:
            _print_failure(err, executed)
            log(f"[FAIL] {nb.name} after {time.time() - t0:.0f} s; fix it and rerun: completed stages are skipped")
            return 1
        except DeadKernelError as err:  # killed (out of memory, a signal): a failure line, not a traceback
            print(f"\n--- the kernel died ({err}); a kernel killed for lack of memory ends this way")
            log(f"[FAIL] {nb.name} after {time.time() - t0:.0f} s: kernel died; executed copy: {executed}")
            return 1
        if digest:
            passed.write_text(digest)
        timings.append((nb.name, time.time() - t0))
        log(f"[done] {nb.name} in {timings[-1][1]:.0f} s")
    with open(out_dir / "timings.csv", "a") as fh:
        for name, sec in timings:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')},{name},{sec:.1f}\n")
    log(f"all notebooks done for profile {profile}; `neurorecon results --profile {profile}` prints the metrics")
    return 0
