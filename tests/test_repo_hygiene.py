"""Repository conventions: clean notebooks, README commands (environment files: tests/test_lock.py)."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_committed_clean(nb):
    data = json.loads(nb.read_text())
    assert data["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in data["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip outputs"
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    assert 'os.environ.get("NEURORECON_PROFILE", "demo")' in "".join(params[0]["source"])
    for c in code:  # notebooks stay thin: logic lives in the package
        src = "".join(c["source"])
        assert not re.search(r"^\s*(class|def) ", src, re.M) and len(src.splitlines()) <= 25


def test_notebooks_numbered_in_order():
    assert NOTEBOOKS and [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(1, len(NOTEBOOKS) + 1)]


def test_readme_leads_with_the_two_commands_and_ci_calls_make_test():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert [c for c in commands if c][:2] == ["make reproduce", "make test"]
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_gitignore_keeps_home_out_of_git():
    assert "neurorecon_home/" in (ROOT / ".gitignore").read_text().split()
