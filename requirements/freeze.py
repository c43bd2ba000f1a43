"""Write the two lock files from a working environment (run with that environment's Python).

``lock-cuda.txt`` is ``pip freeze`` of the environment (less neurorecon itself and pip): PyPI's Linux torch, which
is a CUDA build and pulls NVIDIA's runtime wheels. ``lock-cpu.txt`` is derived from it: the same versions, torch
and torchvision from PyTorch's CPU wheel index, without the CUDA-only packages. ``tests/test_lock.py`` checks that
both stay consistent with ``pyproject.toml`` and ``environment.yml``.

Usage: ``.venv/bin/python requirements/freeze.py`` (after installing the versions you mean to lock).
"""

import platform
import re
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["CPU_INDEX", "cuda_only", "cpu_lock", "parse_lock", "main"]

HERE = Path(__file__).resolve().parent
#: PyTorch's index of CPU-only wheels (versions carry a ``+cpu`` local tag).
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
_CUDA_ONLY = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")
_FROM_CPU_INDEX = ("torch", "torchvision")


def _norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def cuda_only(name):
    """True for packages that only the CUDA build of torch needs (NVIDIA runtime wheels, ``cuda-*``, triton)."""
    return bool(_CUDA_ONLY.match(_norm(name)))


def parse_lock(text):
    """``{normalised name: version}`` of the ``name==version`` lines of a lock file (comments and options skipped).

    Raises
    ------
    ValueError
        On a line that is neither, or on a package listed twice.
    """
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("--"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if not m:
            raise ValueError(f"lock line {n}: {line!r}; expected name==version")
        name = _norm(m.group(1))
        if name in out:
            raise ValueError(f"lock line {n}: {name} listed twice")
        out[name] = m.group(2)
    return out


def _header(kind, extra=""):
    return (f"# neurorecon lock ({kind}), written by requirements/freeze.py on {time.strftime('%Y-%m-%d')} from the\n"
            f"# environment the README's numbers came from: Python {platform.python_version()}, "
            f"{platform.system()} {platform.machine()}.\n# Install: pip install -r requirements/lock-{kind}.txt "
            f"&& pip install --no-deps -e .   (or: make TORCH={kind})\n{extra}")


def cpu_lock(cuda_text):
    """The CPU lock's text from the CUDA lock's: CUDA-only packages dropped, torch/torchvision ``+cpu``."""
    lines = [_header("cpu", f"--extra-index-url {CPU_INDEX}\n")]
    for name, version in parse_lock(cuda_text).items():
        if cuda_only(name):
            continue
        if name in _FROM_CPU_INDEX:
            version = version.split("+")[0] + "+cpu"
        lines.append(f"{name}=={version}\n")
    return "".join(lines)


def main():
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable", "--exclude", "neurorecon",
                             "--exclude", "pip"], check=True, capture_output=True, text=True).stdout
    pins = sorted(parse_lock(frozen).items())
    cuda = _header("cuda") + "".join(f"{n}=={v}\n" for n, v in pins)
    (HERE / "lock-cuda.txt").write_text(cuda)
    (HERE / "lock-cpu.txt").write_text(cpu_lock(cuda))
    print(f"wrote {HERE / 'lock-cuda.txt'} ({len(pins)} packages) and {HERE / 'lock-cpu.txt'}")


if __name__ == "__main__":
    main()
