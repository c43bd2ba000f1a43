"""Shared fixtures: every test runs with its own NEURORECON_HOME and figures folder; a smoke data store to share;
one torch thread for the modules that ask for it."""

import contextlib
import os

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURORECON_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NEURORECON_FIGURES", str(tmp_path / "figures"))
    monkeypatch.delenv("NEURORECON_PROFILE", raising=False)
    monkeypatch.delenv("NEURORECON_CONFIG", raising=False)


@contextlib.contextmanager
def _home_set_to(home):
    """NEURORECON_HOME = ``home`` inside the block, restored (or unset) after it: for fixtures wider than one test,
    which cannot use ``monkeypatch``."""
    old = os.environ.get("NEURORECON_HOME")
    os.environ["NEURORECON_HOME"] = str(home)
    try:
        yield home
    finally:
        if old is None:
            os.environ.pop("NEURORECON_HOME", None)
        else:
            os.environ["NEURORECON_HOME"] = old


@pytest.fixture(scope="session")
def home_set_to():
    """The context manager ``home_set_to(home)``: NEURORECON_HOME = ``home`` inside the block, as it was after."""
    return _home_set_to


@pytest.fixture(scope="session")
def new_smoke_home(tmp_path_factory):
    """``new_smoke_home(name)``: a fresh home (a temporary folder named after ``name``) with the smoke data stage
    (NSD-mini simulated and prepared), for a module that writes its own stages into it."""
    from neurorecon.config import load_config
    from neurorecon.data.stage import DataConfig, run_data_stage

    def make(name):
        home = tmp_path_factory.mktemp(name)
        with _home_set_to(home):
            run_data_stage(load_config(DataConfig, "smoke"), progress=False)
        return home

    return make


@pytest.fixture(scope="session")
def smoke_data_home(new_smoke_home):
    """A home with the smoke data stage, shared by the stage tests of the whole session."""
    return new_smoke_home("np_home")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the module (tiny models, or convnets on a CPU shared with other jobs: more threads
    spin-wait and run slower), restored after it. Ask for it with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
