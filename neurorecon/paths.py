"""Where things live: every path resolves through here, never relative to the working directory.

``NEURORECON_HOME`` sets the data and artifacts home (default: ``neurorecon_home/`` in the
repository checkout, which git ignores, or ``~/.neurorecon`` for an installed package).
``NEURORECON_FIGURES`` sets where figures go (default: ``figures/`` in the checkout).
"""

import contextlib
import os
from pathlib import Path

__all__ = [
    "repo_root",
    "home",
    "artifacts_dir",
    "stage_dir",
    "simulated_nsd_dir",
    "figures_dir",
    "notebooks_dir",
    "environ",
]

_PKG = Path(__file__).resolve().parent


def repo_root():
    """The source checkout holding the package, or None for an installed (non-editable) package."""
    root = _PKG.parent
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None


def home():
    """The data and artifacts home (``$NEURORECON_HOME``)."""
    env = os.environ.get("NEURORECON_HOME")
    if env:
        return Path(env).expanduser().resolve()
    root = repo_root()
    return (root / "neurorecon_home") if root else Path("~/.neurorecon").expanduser()


def artifacts_dir(profile):
    """Folder holding every stage's artifacts for one profile."""
    return home() / "artifacts" / profile


def stage_dir(stage, profile):
    """Artifacts folder of one stage (see :mod:`neurorecon.artifacts`)."""
    return artifacts_dir(profile) / stage


def simulated_nsd_dir(profile):
    """Where the NSD-mini simulator writes its raw NSD tree for a profile."""
    return home() / "nsd-mini" / profile


def figures_dir(profile):
    """Folder for a profile's figures (``$NEURORECON_FIGURES`` or ``figures/`` in the checkout).

    The demo profile writes straight into ``figures/`` (the README shows these); other profiles
    write into a subfolder named after the profile.
    """
    env = os.environ.get("NEURORECON_FIGURES")
    if env:
        base = Path(env).expanduser().resolve()
    else:
        root = repo_root()
        base = (root / "figures") if root else home() / "figures"
    out = base if profile == "demo" else base / profile
    out.mkdir(parents=True, exist_ok=True)
    return out


def notebooks_dir():
    """The numbered notebooks (in the source checkout)."""
    root = repo_root()
    if root is None:
        raise FileNotFoundError("notebooks/ is only available in a source checkout of neurorecon")
    return root / "notebooks"


@contextlib.contextmanager
def environ(**values):
    """Set (a string) or unset (``None``) environment variables inside the block; restore them after it."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
