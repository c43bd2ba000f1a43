"""Shared fixtures: every test runs with its own NEURORECON_HOME and figures folder."""

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURORECON_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NEURORECON_FIGURES", str(tmp_path / "figures"))
    monkeypatch.delenv("NEURORECON_PROFILE", raising=False)
