import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neurorecon.errors import NeuroreconError

import train_worker


def _same(a, b):
    return all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    full, res_full = train_worker.run(steps=12)
    _, res_killed = train_worker.run(steps=12, ckpt_dir=tmp_path / "ck", stop_after=6)  # "killed" after step 6
    assert res_killed.steps == 6 and (tmp_path / "ck/latest/step.json").is_file()  # last checkpoint: step 4
    resumed, res = train_worker.run(steps=12, ckpt_dir=tmp_path / "ck")
    assert res.resumed_from == 4
    assert _same(full, resumed)
    assert [s for s, _ in res.losses] == list(range(1, 13))
    assert res.losses[-1][1] < res.losses[0][1]  # it learns
    fresh, _ = train_worker.run(steps=12, ckpt_dir=tmp_path / "ck2", ckpt_every=0)
    assert _same(full, fresh)


def test_corrupted_checkpoint_gives_a_clear_error(tmp_path):
    train_worker.run(steps=4, ckpt_dir=tmp_path / "ck", ckpt_every=2)
    for f in (tmp_path / "ck/latest").glob("*.safetensors"):
        f.write_bytes(b"garbage")
    for f in (tmp_path / "ck/latest").glob("*.bin"):
        f.write_bytes(b"garbage")
    with pytest.raises(NeuroreconError, match=r"ck/latest: expected a complete training checkpoint"):
        train_worker.run(steps=8, ckpt_dir=tmp_path / "ck")


@pytest.mark.slow
def test_two_cpu_processes_end_identical(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).parent / "train_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    single = train_worker.Toy().state_dict()
    assert not all(torch.equal(a[k], single[k]) for k in a)  # it trained
