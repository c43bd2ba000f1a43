"""A process killed while writing leaves no marker and no half-written artifact; older stores are refused."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from neurorecon.data import open_store, prepare
from neurorecon.errors import DataError

from rawnsd import write_tree

KILLED_WRITER = """
import sys, time
from pathlib import Path
from neurorecon.artifacts import atomic_dir
with atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "half.npy").write_bytes(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(60)
"""


def test_killed_writer_leaves_target_untouched_and_is_cleaned_up(tmp_path):
    target = tmp_path / "store"
    target.mkdir()
    (target / "old.txt").write_text("complete earlier version")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["store", f"store.partial-{proc.pid}"]
    assert (target / "old.txt").read_text() == "complete earlier version"
    from neurorecon.artifacts import atomic_dir

    with atomic_dir(target) as tmp:  # the next run removes the dead process's leftovers
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    assert (target / "new.txt").is_file() and not (target / "old.txt").exists()


def test_killed_prepare_leaves_no_store(tmp_path):
    write_tree(tmp_path / "nsd")
    code = ("import sys, signal, os\n"
            "import neurorecon.data.preparation as P\n"
            "orig = P._write_images\n"
            "def die(*a, **k):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
            "P._write_images = die\n"
            f"P.prepare({str(tmp_path / 'nsd')!r}, {str(tmp_path / 'store')!r}, subjects=[1, 3], progress=False)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "store").exists()
    prepare(tmp_path / "nsd", tmp_path / "store", subjects=[1, 3], progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nsd", "store"]


def test_store_of_an_older_format_version_is_refused(tmp_path):
    write_tree(tmp_path / "nsd")
    out = prepare(tmp_path / "nsd", tmp_path / "store", subjects=[1], progress=False)
    meta = json.loads((out / "store.json").read_text())
    meta["format_version"] = 0
    (out / "store.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"store\.json: expected a prepared store of format version 1, found version 0"):
        open_store(out)
