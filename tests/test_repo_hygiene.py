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
    ids = [c.get("id") for c in data["cells"]]  # nbformat 4.5: missing ids will become an error
    assert all(ids) and len(set(ids)) == len(ids), "every cell has its own id"
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    assert 'os.environ.get("NEURORECON_PROFILE", "demo")' in "".join(params[0]["source"])
    from papermill.translators import PythonTranslator  # what papermill --help-notebook and -p see

    source = "".join(params[0]["source"])
    seen = {p.name for p in PythonTranslator.inspect({"source": source})}
    assert set(re.findall(r"^(\w+)\s*=", source, re.M)) <= seen, "papermill cannot parse a parameter line"
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


def test_docs_live_in_the_repository():
    """Nothing points at notes outside the repository; every ``docs/<name>.md`` the code names exists."""
    files = [p for p in ROOT.rglob("*") if p.is_file() and p.suffix in {".py", ".md", ".yaml", ".yml", ".ipynb"}
             and not {".git", ".venv", "neurorecon_home"} & set(p.relative_to(ROOT).parts)
             and not p.relative_to(ROOT).parts[0].startswith(".venv") and p != Path(__file__).resolve()]
    named = set()
    for p in files:
        text = p.read_text(errors="replace")
        rel = p.relative_to(ROOT)
        assert not re.search(r"shared/reference|\.\./shared/|evaluation/README", text), f"{rel} points outside"
        named |= set(re.findall(r"docs/([\w-]+\.md)", text))
    assert named and all((ROOT / "docs" / n).is_file() for n in named), sorted(n for n in named
                                                                               if not (ROOT / "docs" / n).is_file())
