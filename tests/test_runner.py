"""`make reproduce`: runs notebooks in order, stops at the first failure showing the cell, skips complete stages."""

import nbformat
import pytest

from neurorecon import paths, runner


def _nb(path, *cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('import os\nprofile = os.environ.get("NEURORECON_PROFILE", "demo")')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)


MAKE_DATA_STAGE = """
from neurorecon.artifacts import StageWriter
from neurorecon.config import load_config
from neurorecon.data.stage import DataConfig
with StageWriter(load_config(DataConfig, profile)) as w:
    w.add_metric("toy", 1, "all", "ran", 1)
"""


@pytest.fixture
def nbdir(tmp_path, monkeypatch):
    """An empty notebooks folder that the runner reads instead of the repository's."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    monkeypatch.setattr(paths, "notebooks_dir", lambda: folder)
    return folder


@pytest.mark.slow
def test_reproduce_stops_at_failure_and_resumes(nbdir, capsys):
    _nb(nbdir / "01_data_preparation.ipynb", MAKE_DATA_STAGE)
    _nb(nbdir / "02_foundation_models.ipynb", "x = 1", "raise ValueError('broken on purpose')")
    _nb(nbdir / "03_calibrated_encoding.ipynb", "open('ran03', 'w').write('yes')")
    assert runner.reproduce("smoke") == 1
    out = capsys.readouterr().out
    assert "[done] 01_data_preparation.ipynb" in out
    assert "raise ValueError('broken on purpose')" in out and "ValueError: broken on purpose" in out
    assert "[FAIL] 02_foundation_models.ipynb" in out
    assert not (nbdir / "ran03").exists()  # stopped at the first failure
    assert (paths.home() / "executed/smoke/02_foundation_models.ipynb").is_file()  # executed copy kept
    _nb(nbdir / "02_foundation_models.ipynb", "x = 1")
    assert runner.reproduce("smoke") == 0
    out = capsys.readouterr().out
    assert "[skip] 01_data_preparation.ipynb" in out  # complete with the same config
    assert "[done] 02_foundation_models.ipynb" in out and (nbdir / "ran03").exists()
    assert runner.reproduce("smoke", force=True) == 0
    assert "[done] 01_data_preparation.ipynb" in capsys.readouterr().out


@pytest.mark.slow
def test_reproduce_rechecks_a_complete_stage_whose_notebook_failed(nbdir, capsys):
    # the stage completes, then the notebook's own assertion on it fails
    _nb(nbdir / "01_data_preparation.ipynb", MAKE_DATA_STAGE, "assert False, 'result check failed'")
    assert runner.reproduce("smoke") == 1
    assert "AssertionError: result check failed" in capsys.readouterr().out
    _nb(nbdir / "01_data_preparation.ipynb", MAKE_DATA_STAGE, "open('checked01', 'w').write('yes')")
    assert runner.reproduce("smoke") == 0
    out = capsys.readouterr().out
    assert "[skip]" not in out and "re-checking the notebook" in out and (nbdir / "checked01").exists()
    (nbdir / "checked01").unlink()
    assert runner.reproduce("smoke") == 0  # passed under this config: now skipped
    assert "[skip] 01_data_preparation.ipynb" in capsys.readouterr().out
    assert not (nbdir / "checked01").exists()


@pytest.mark.slow
def test_reproduce_rebuilds_a_stage_whose_upstream_was_remade(nbdir, capsys):
    from neurorecon.artifacts import StageWriter
    from neurorecon.config import load_config
    from neurorecon.data.stage import DataConfig

    _nb(nbdir / "01_data_preparation.ipynb", MAKE_DATA_STAGE)
    _nb(nbdir / "02_foundation_models.ipynb", MAKE_DATA_STAGE.replace("data.stage import DataConfig",
                                                                       "foundation import FoundationConfig")
        .replace("DataConfig, profile", "FoundationConfig, profile"))
    assert runner.reproduce("smoke") == 0
    capsys.readouterr()
    with StageWriter(load_config(DataConfig, "smoke")):  # the data stage re-made outside the runner
        pass
    assert runner.reproduce("smoke") == 0
    out = capsys.readouterr().out
    assert "[skip] 01_data_preparation.ipynb" in out
    assert "stage 'foundation' was built on an older 'data': rebuilding it" in out
    assert runner.reproduce("smoke") == 0
    assert "[skip] 02_foundation_models.ipynb" in capsys.readouterr().out


@pytest.mark.slow
def test_a_killed_kernel_is_a_fail_line_not_a_traceback(nbdir, capsys):
    _nb(nbdir / "01_data_preparation.ipynb", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert runner.reproduce("smoke") == 1
    out = capsys.readouterr().out
    assert "[FAIL] 01_data_preparation.ipynb" in out and "kernel died" in out
