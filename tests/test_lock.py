"""The environment files agree: pyproject.toml (ranges), environment.yml (conda, the same ranges, torch pinned)
and the locks requirements/lock-{cuda,cpu}.txt (exact versions, installed by ``make`` unless ``LOCK=0``)."""

import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "requirements"))
import freeze  # noqa: E402  (requirements/freeze.py writes the locks)

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DECLARED = PROJECT["dependencies"] + PROJECT["optional-dependencies"]["dev"]
ENV = yaml.safe_load((ROOT / "environment.yml").read_text())
ENV_PIP = next(d["pip"] for d in ENV["dependencies"] if isinstance(d, dict))
LOCKS = {kind: (ROOT / "requirements" / f"lock-{kind}.txt").read_text() for kind in ("cuda", "cpu")}
PINNED = {"torch", "torchvision"}  # pinned in environment.yml and the Makefile's TORCH_SPEC, ranges in pyproject


def _names(reqs):
    return [canonicalize_name(Requirement(r).name) for r in reqs]


def _by_name(reqs):
    return {canonicalize_name(Requirement(r).name): Requirement(r) for r in reqs}


@pytest.mark.parametrize("where, reqs", [("pyproject.toml", DECLARED),
                                         ("environment.yml", [r for r in ENV_PIP if not r.startswith("-e")])])
def test_no_package_listed_twice(where, reqs):
    names = _names(reqs)
    assert sorted({n for n in names if names.count(n) > 1}) == [], f"{where} lists these twice"


def test_environment_yml_matches_pyproject():
    assert "-e ." in ENV_PIP
    env = _by_name(r for r in ENV_PIP if not r.startswith("-e"))
    wanted = _by_name(DECLARED)
    assert set(env) == set(wanted)
    for name, req in env.items():
        if name in PINNED:
            assert str(req.specifier).startswith("=="), f"environment.yml: pin {name}"
            assert req.specifier.contains(freeze.parse_lock(LOCKS["cuda"])[name]), f"{name}: pin != lock"
        else:
            assert req.specifier == wanted[name].specifier, f"environment.yml: {req} but pyproject.toml: {wanted[name]}"


def test_environment_yml_has_java_and_the_tested_python():
    conda = [d for d in ENV["dependencies"] if isinstance(d, str)]
    assert any(re.fullmatch(r"openjdk(=\d+)?", d) for d in conda), "pycocoevalcap's PTB tokenizer and METEOR need Java"
    python = next(d for d in conda if d.startswith("python="))
    assert SpecifierSet(PROJECT["requires-python"]).contains(python.split("=")[1] + ".0")


def test_requires_python_matches_what_the_tests_use():
    assert SpecifierSet(PROJECT["requires-python"]) == SpecifierSet(">=3.11")  # the tests import tomllib (3.11)
    for text in LOCKS.values():
        locked = re.search(r"Python (\d+\.\d+\.\d+)", text).group(1)
        assert SpecifierSet(PROJECT["requires-python"]).contains(locked)


@pytest.mark.parametrize("kind", sorted(LOCKS))
def test_lock_pins_every_declared_package_within_its_range(kind):
    locked = freeze.parse_lock(LOCKS[kind])  # raises on a malformed line or a package locked twice
    for name, req in _by_name(DECLARED).items():
        assert name in locked, f"lock-{kind}.txt lacks {name}"
        assert req.specifier.contains(Version(locked[name]), prereleases=True), \
            f"lock-{kind}.txt: {name}=={locked[name]} is outside pyproject.toml's {req}"
    assert "neurorecon" not in locked


def test_cpu_lock_is_the_cuda_lock_with_cpu_torch():
    assert freeze.parse_lock(LOCKS["cpu"]) == freeze.parse_lock(freeze.cpu_lock(LOCKS["cuda"]))
    cpu = freeze.parse_lock(LOCKS["cpu"])
    assert cpu["torch"].endswith("+cpu") and not any(freeze.cuda_only(n) for n in cpu)
    assert f"--extra-index-url {freeze.CPU_INDEX}" in LOCKS["cpu"]
    assert any(n.startswith("nvidia-") for n in freeze.parse_lock(LOCKS["cuda"]))  # PyPI's torch is a CUDA build


def test_makefile_installs_the_lock_by_default():
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^LOCK \?= 1$", make, re.M) and re.search(r"^TORCH \?= cuda$", make, re.M)
    assert "pip install --quiet -r $(LOCKFILE)" in make
    spec = re.search(r"^TORCH_SPEC \?= (.*)$", make, re.M).group(1).split()
    locked = freeze.parse_lock(LOCKS["cuda"])
    assert spec == [f"{n}=={locked[n]}" for n in ("torch", "torchvision")]


def test_parse_lock_rejects_duplicates_and_ranges():
    with pytest.raises(ValueError, match="twice"):
        freeze.parse_lock("numpy==2.0\nNumPy==2.1\n")
    with pytest.raises(ValueError, match="name==version"):
        freeze.parse_lock("numpy>=2.0\n")
