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


SLOW_RUN = """
import sys, time
sys.path.insert(0, {here!r})
import train_worker
from neurorecon.training import fit

model = train_worker.Toy()

def slow_loss(m, b, g):
    time.sleep(0.05)  # slow enough to be killed mid-run; the numbers are those of train_worker.run
    return m(b["x"], b["y"], g)

fit(model, slow_loss, train_worker.toy_data(), steps=40, batch_size=4, lr=1e-2, ckpt_dir={ckpt!r}, ckpt_every=4,
    progress=False)
"""


def test_sigkilled_training_process_resumes_to_the_same_weights(tmp_path):
    """A real ``SIGKILL`` of a training process (at whatever point it is, possibly mid-checkpoint): the rerun
    resumes from the last complete checkpoint and ends with the weights of an uninterrupted run."""
    import signal
    import time

    ckpt = tmp_path / "ck"
    code = SLOW_RUN.format(here=str(Path(__file__).parent), ckpt=str(ckpt))
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 120
    while not (ckpt / "latest" / "step.json").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # a few more steps, maybe into the next checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    full, _ = train_worker.run(steps=40)
    resumed, res = train_worker.run(steps=40, ckpt_dir=ckpt)
    assert 4 <= res.resumed_from < 40 and res.resumed_from % 4 == 0
    assert _same(full, resumed)


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
