import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from neurorecon.errors import ConfigError, NeuroreconError
from neurorecon.training import checkpoint_key, resolve_steps, steps_for

import train_worker

HERE = Path(__file__).parent


def _same(a, b):
    return all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def _close(a, b):
    return all(torch.allclose(a.state_dict()[k], b.state_dict()[k], atol=1e-6) for k in a.state_dict())


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    full, res_full = train_worker.run(steps=12)
    _, res_killed = train_worker.run(steps=12, ckpt_dir=tmp_path / "ck", stop_after=6)  # "killed" after step 6
    assert res_killed.steps == 6 and (tmp_path / "ck/latest/step.json").is_file()  # last checkpoint: step 4
    resumed, res = train_worker.run(steps=12, ckpt_dir=tmp_path / "ck")
    assert res.resumed_from == 4
    assert _same(full, resumed)
    assert [s for s, _ in res.losses] == list(range(1, 13))
    assert res.losses[-1][1] < res.losses[0][1]  # it learns
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["latest", "step-000000012"]
    fresh, _ = train_worker.run(steps=12, ckpt_dir=tmp_path / "ck2", ckpt_every=0)
    assert _same(full, fresh)


def test_cosine_schedule_warms_up_decays_and_resumes_on_the_same_curve(tmp_path):
    from neurorecon.training import lr_at

    rate = lr_at(1.0, 100, "cosine", 0.1)
    curve = [rate(s) for s in range(100)]
    assert curve[0] < curve[5] < curve[9] <= 1.0  # linear warm-up over 10 steps
    assert curve[10] == pytest.approx(1.0) and all(a >= b for a, b in zip(curve[10:], curve[11:]))
    assert curve[55] == pytest.approx(0.5) and curve[-1] < 0.001  # cosine to zero
    assert [lr_at(1.0, 100)(s) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    for bad in (dict(schedule="linear"), dict(warmup_ratio=1.0)):
        with pytest.raises(ConfigError, match="lr_schedule|warmup_ratio"):
            lr_at(1.0, 100, **bad)
    full, _ = train_worker.run(steps=12, schedule="cosine")
    train_worker.run(steps=12, ckpt_dir=tmp_path / "ck", stop_after=6, schedule="cosine")
    resumed, res = train_worker.run(steps=12, ckpt_dir=tmp_path / "ck", schedule="cosine")
    assert res.resumed_from == 4 and _same(full, resumed)  # the rate is a function of the step: same curve
    constant, _ = train_worker.run(steps=12)
    assert not _same(full, constant)


def test_length_grouped_batches_pad_less_and_cover_every_sample_once():
    from neurorecon.training import LengthGroupedBatches, epoch_order, length_grouped_order

    lengths = np.random.default_rng(3).integers(5, 200, size=1003)  # odd-sized
    order = length_grouped_order(lengths, seed=0, epoch=0, global_batch=16)
    assert sorted(order.tolist()) == list(range(1003))
    full = 1003 // 16 * 16

    def padded(o):
        return int(lengths[o[:full]].reshape(-1, 16).max(1).sum() * 16)

    grouped, shuffled = padded(order), padded(epoch_order(1003, 0, 0))
    assert grouped < 0.75 * shuffled  # random batches pad to ~1.75x the tokens here
    assert not np.array_equal(order, length_grouped_order(lengths, seed=0, epoch=1, global_batch=16))
    np.testing.assert_array_equal(order, length_grouped_order(lengths, seed=0, epoch=0, global_batch=16))
    batches = lengths[order[:full]].reshape(-1, 16).max(1)
    assert not np.all(np.diff(batches) >= 0)  # the batches themselves are shuffled, not longest last
    data = LengthGroupedBatches(lengths, x=np.zeros((1003, 2), np.float32))
    np.testing.assert_array_equal(data.epoch_order(0, 0, 16), order)
    with pytest.raises(ValueError, match="lengths"):
        LengthGroupedBatches(lengths[:5], x=np.zeros((1003, 2), np.float32))


def test_a_second_phase_on_the_same_accelerator_holds_only_its_own_model_and_optimizer(tmp_path):
    import gc
    import weakref

    from neurorecon.training import fit, make_accelerator

    acc = make_accelerator()
    opts = []
    real_adamw = torch.optim.AdamW

    def tracked(*args, **kwargs):
        opt = real_adamw(*args, **kwargs)
        opts.append(weakref.ref(opt))
        return opt

    first, second = train_worker.Toy(0.1), train_worker.Toy(0.1)
    loss = lambda m, b, g: m(b["x"], b["y"], g)  # noqa: E731
    torch.optim.AdamW = tracked
    try:
        fit(first, loss, train_worker.toy_data(), steps=3, batch_size=4, lr=1e-2, accelerator=acc, progress=False)
        gc.collect()
        assert opts[0]() is None  # the first phase's AdamW moments are gone once it returns
        fit(second, loss, train_worker.toy_data(), steps=2, batch_size=4, lr=1e-2, accelerator=acc, progress=False,
            ckpt_dir=tmp_path / "second")
    finally:
        torch.optim.AdamW = real_adamw
    saved = sorted(p.name for p in (tmp_path / "second" / "latest").iterdir() if "optimizer" in p.name
                   or p.name.startswith("model"))
    assert len([n for n in saved if "optimizer" in n]) == 1, saved  # the second phase's checkpoint: its own only
    assert len([n for n in saved if n.startswith("model")]) == 1, saved


def _frozen_first_layer_run(ckpt_dir, steps=12, stop_after=None, freeze=("net.0.",)):
    """The toy with its first layer frozen (as the SD UNet under ControlNet training, the LLM under LoRA)."""
    from neurorecon.training import fit

    model = train_worker.Toy()
    for n, p in model.named_parameters():
        p.requires_grad_(not n.startswith(freeze))
    res = fit(model, lambda m, b, g: m(b["x"], b["y"], g), train_worker.toy_data(), steps=steps, batch_size=4,
              lr=1e-2, ckpt_dir=ckpt_dir, ckpt_every=4, stop_after=stop_after, progress=False)
    return model, res


def test_checkpoints_hold_the_trained_parameters_and_not_the_frozen_ones(tmp_path):
    from safetensors import safe_open

    full, _ = _frozen_first_layer_run(None)
    _frozen_first_layer_run(tmp_path / "ck", stop_after=6)
    latest = tmp_path / "ck" / "latest"
    with safe_open(str(latest / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["net.2.bias", "net.2.weight"]
    assert json.loads((latest / "step.json").read_text())["frozen_omitted"] == 2
    resumed, res = _frozen_first_layer_run(tmp_path / "ck")
    assert res.resumed_from == 4 and _same(full, resumed)
    assert torch.equal(resumed.net[0].weight, train_worker.Toy().net[0].weight)  # frozen: as built
    # a run that trains other parameters cannot resume from it (the strict check strict=False would lose)
    _frozen_first_layer_run(tmp_path / "ck2", stop_after=6)
    with pytest.raises(NeuroreconError, match=r"model.safetensors: this checkpoint does not hold .*net\.0\.weight"):
        _frozen_first_layer_run(tmp_path / "ck2", freeze=("net.2.",))


def test_steps_follow_epochs_processes_and_accumulation():
    # the paper's pretraining: 80 epochs of ~67k pairs at 6 GPUs x 16 (not 336,000 steps, which is ~480 epochs)
    assert steps_for(80, 67000, 16, 6) == 55834
    assert steps_for(80, 67000, 16, 3, grad_accum=2) == 55834  # same global batch, same steps
    assert steps_for(80, 67000, 16, 1) == 335000
    assert steps_for(0.01, 10, 32) == 1
    n, rec = resolve_steps(None, 2.0, 100, 4, num_processes=2, grad_accum=3)
    assert n == 9 and rec["global_batch"] == 24 and rec["steps_from_epochs"] == 1.0
    assert rec["epochs"] == pytest.approx(9 * 24 / 100)
    n, rec = resolve_steps(7, 2.0, 100, 4)
    assert n == 7 and rec["steps_from_epochs"] == 0.0
    with pytest.raises(ConfigError, match="set either steps or the matching epochs"):
        resolve_steps(None, None, 100, 4)
    with pytest.raises(ConfigError, match="grad_accum must be at least 1"):
        steps_for(1, 100, 4, grad_accum=0)


def test_gradient_accumulation_matches_the_large_batch_and_resumes_exactly(tmp_path):
    big, _ = train_worker.run(steps=8, batch_size=4, noise=0.0)
    acc2, res = train_worker.run(steps=8, batch_size=2, grad_accum=2, noise=0.0)
    assert _close(big, acc2) and not _same(big, train_worker.Toy())
    assert res.losses[-1][1] < res.losses[0][1]
    full, _ = train_worker.run(steps=10, batch_size=2, grad_accum=3)
    train_worker.run(steps=10, batch_size=2, grad_accum=3, ckpt_dir=tmp_path / "ck", stop_after=6)
    resumed, r = train_worker.run(steps=10, batch_size=2, grad_accum=3, ckpt_dir=tmp_path / "ck")
    assert r.resumed_from == 4 and _same(full, resumed)
    train_worker.run(steps=10, batch_size=2, grad_accum=3, ckpt_dir=tmp_path / "ck2", stop_after=6)
    with pytest.raises(NeuroreconError, match=r"global batch of 6 .*this run uses 12"):
        train_worker.run(steps=10, batch_size=2, grad_accum=6, ckpt_dir=tmp_path / "ck2")


def test_checkpoint_of_the_earlier_layout_still_resumes(tmp_path):
    full, _ = train_worker.run(steps=12)
    train_worker.run(steps=12, ckpt_dir=tmp_path / "ck", stop_after=6)
    ck = tmp_path / "ck"
    os.replace(ck / "step-000000004", ck / "old")  # the earlier layout: a real folder named latest
    (ck / "latest").unlink()
    os.replace(ck / "old", ck / "latest")
    (ck / "latest.partial-999999").mkdir()  # what non-main ranks used to leave behind
    resumed, res = train_worker.run(steps=12, ckpt_dir=ck)
    assert res.resumed_from == 4 and _same(full, resumed)
    assert sorted(p.name for p in ck.iterdir()) == ["latest", "step-000000012"]


KILL_IN_SAVE = """
import json, os, signal, sys
sys.path.insert(0, {here!r})
import train_worker  # imports torch once; no torch op runs here, so forking is safe
import neurorecon.training as T
import accelerate.checkpointing as C

status = {{}}
for phase in {phases!r}:
    pid = os.fork()
    if pid == 0:  # the child trains and is SIGKILLed inside one window of its second checkpoint write (step 8)
        seen = []
        if phase == "inside-save-state":  # the 4th file accelerate writes: the optimizer state of step 8
            original = C.save

            def save(obj, f, *a, **k):
                seen.append(f)
                if len(seen) == 4:
                    open(f, "wb").write(b"half a file")
                    os.kill(os.getpid(), signal.SIGKILL)
                return original(obj, f, *a, **k)

            C.save = save
        else:
            def die(name):
                if name == phase:
                    seen.append(name)
                    if len(seen) == 2:
                        os.kill(os.getpid(), signal.SIGKILL)

            T._phase = die
        train_worker.run(steps=12, ckpt_dir=os.path.join({root!r}, phase), ckpt_every=4)
        os._exit(0)
    _, code = os.waitpid(pid, 0)
    status[phase] = os.WIFSIGNALED(code) and os.WTERMSIG(code) == signal.SIGKILL
print(json.dumps(status))
"""

PHASES = {"inside-save-state": 4, "state-written": 4, "step-json-written": 4, "link-made": 4,
          "latest-flipped": 8}


def test_a_kill_at_any_point_of_a_checkpoint_write_leaves_a_loadable_latest(tmp_path):
    """Real ``SIGKILL``s of training processes inside every window of a checkpoint write (one forked process per
    window). Each leaves ``latest`` pointing at a complete checkpoint, and the rerun resumes from it to the
    weights of an uninterrupted run."""
    code = KILL_IN_SAVE.format(here=str(HERE), phases=list(PHASES), root=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {p: True for p in PHASES}  # each was killed
    full, _ = train_worker.run(steps=12)
    for p, step in PHASES.items():
        ck = tmp_path / p
        assert json.loads((ck / "latest/step.json").read_text())["step"] == step, p
        resumed, res = train_worker.run(steps=12, ckpt_dir=ck)
        assert res.resumed_from == step and _same(full, resumed), p
        assert sorted(x.name for x in ck.iterdir()) == ["latest", "step-000000012"], p


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
    """A real ``SIGKILL`` of a training process at whatever point it is: the rerun resumes from the last complete
    checkpoint and ends with the weights of an uninterrupted run."""
    ckpt = tmp_path / "ck"
    code = SLOW_RUN.format(here=str(HERE), ckpt=str(ckpt))
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


def test_checkpoint_key_ignores_fields_that_do_not_change_training(tmp_path, monkeypatch):
    import dataclasses

    from neurorecon.config import load_config
    from neurorecon.encoding.stage import EncodingConfig
    from neurorecon.neuropictor.stage import PretrainConfig, RefineConfig
    from neurorecon.nv2l.stage import LanguageConfig

    monkeypatch.setenv("NEURORECON_HOME", str(tmp_path))
    for cls, inert, active in ((PretrainConfig, dict(eval_batch=3, num_threads=2, n_eval=5, ckpt_every=7),
                                dict(lr=0.5)),
                               (RefineConfig, dict(eval_batch=3, control_scales=[1.0], guidance_scale=2.0),
                                dict(semantic_weight=0.5)),
                               (EncodingConfig, dict(eval_batch=3, num_threads=2), dict(batch_size=3)),
                               (LanguageConfig, dict(caption_tokens=3, torch_threads=2, meteor=False),
                                dict(stage2_lr=0.5))):
        cfg = load_config(cls, "smoke")
        assert checkpoint_key(dataclasses.replace(cfg, **inert)) == checkpoint_key(cfg), cls
        assert checkpoint_key(dataclasses.replace(cfg, **active)) != checkpoint_key(cfg), cls
        assert checkpoint_key(dataclasses.replace(cfg, grad_accum=2)) != checkpoint_key(cfg), cls


def test_editing_evaluation_settings_resumes_a_stage_instead_of_restarting(new_smoke_home, home_set_to):
    """Pretraining stopped after step 3 (checkpoint at 2), rerun with other evaluation/thread settings: it resumes
    from step 2 (the checkpoint key ignores those fields) and records that in its metrics."""
    from neurorecon.artifacts import read_metrics
    from neurorecon.neuropictor.train import main
    from neurorecon.paths import stage_dir

    base = ["--stage", "pretrain", "--profile", "smoke", "--foundation", "tiny", "--no-progress", "--force",
            "--set", "ckpt_every=2", "--set", "steps=4", "--set", "batch_size=4", "--set", "n_eval=2",
            "--set", "num_inference_steps=1", "--set", "eval_subjects=[1]"]
    with home_set_to(new_smoke_home("resume_home")):
        main(["--stage", "encoding", "--profile", "smoke", "--set", "steps=2", "--no-progress"])
        main(base + ["--set", "eval_batch=2", "--stop-after", "3"])
        main(base + ["--set", "eval_batch=1", "--set", "num_threads=2", "--set", "guidance_scale=2.0"])
        m = read_metrics(stage_dir("pretrain", "smoke")).set_index("metric").value
    assert m["resumed_from"] == 2 and m["steps"] == 4 and m["steps_from_epochs"] == 0


ACCELERATE_CONFIGS = HERE.parent / "neurorecon" / "configs" / "accelerate"


def test_shipped_accelerate_configs_parse_and_are_named_in_the_readme():
    from accelerate.commands.config.config_args import load_config_from_file

    readme = (HERE.parent / "README.md").read_text()
    want = {"ddp_8gpu.yaml": (1, 8), "ddp_2gpu.yaml": (1, 2), "ddp_multinode.yaml": (2, 16)}
    for name, (machines, processes) in want.items():
        cfg = load_config_from_file(str(ACCELERATE_CONFIGS / name))
        assert (cfg.num_machines, cfg.num_processes, cfg.distributed_type) == (machines, processes, "MULTI_GPU"), name
        assert cfg.mixed_precision == "no", name  # the stage configs decide
        assert f"configs/accelerate/{name}" in readme, name
    script = ACCELERATE_CONFIGS / "slurm_multinode.sh"
    assert "ddp_multinode.yaml" in script.read_text() and "configs/accelerate/slurm_multinode.sh" in readme
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_a_multi_process_launch_that_accelerate_runs_as_one_process_is_an_error(monkeypatch):
    from neurorecon.training import make_accelerator

    make_accelerator()  # this process's (single-process) accelerate state, as a rank that fell back would have
    monkeypatch.setenv("WORLD_SIZE", "2")  # e.g. FSDP asked for on a machine without GPUs: each rank alone
    with pytest.raises(NeuroreconError, match=r"the launcher started 2 processes .* set up 1"):
        make_accelerator()


def test_single_process_stages_refuse_a_multi_process_launch(monkeypatch):
    from neurorecon.config import load_config
    from neurorecon.evaluation.reconstruction import ReconstructionConfig, run_reconstruction_stage

    # (the language stage runs under a multi-process launch: tests/test_nv2l_train.py)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="the reconstruction stage runs as one process"):
        run_reconstruction_stage(load_config(ReconstructionConfig, "smoke"), force=True)


@pytest.mark.slow
def test_two_cpu_processes_end_identical(tmp_path):
    """Two real gloo ranks (``accelerate launch`` with the shipped DDP config, which falls back to gloo on CPU):
    2 processes × batch 2 × 2 micro-batches end identical, equal to one process accumulating 4 micro-batches of
    2; one checkpoint folder holding both ranks' RNG state and no pid-named leftovers; sharded work gathered in
    the single-process order (latents cached by both ranks, NeuroPictor's validation images, the encoding stage's
    test reconstructions, NV2L's ViT3D targets)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ACCELERATE_CONFIGS / "ddp_8gpu.yaml"), "--num_processes", "2", str(HERE / "train_worker.py"),
           str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    single, _ = train_worker.run(steps=8, batch_size=2, grad_accum=4, noise=0.0)
    assert all(torch.allclose(a[k], single.state_dict()[k], atol=1e-6) for k in a)
    assert not all(torch.equal(a[k], train_worker.Toy().state_dict()[k]) for k in a)  # it trained
    assert json.loads((tmp_path / "ckpt.json").read_text()) == ["latest", "step-000000008"]
    files = json.loads((tmp_path / "ranks.json").read_text())
    assert {"random_states_0.pkl", "random_states_1.pkl", "step.json"} <= set(files)
    got = torch.load(tmp_path / "gathered.pt")
    assert got["n0"].numel() == 0
    for n in (1, 5, 8):  # rank 1 holds nothing for n = 1
        assert torch.equal(got[f"n{n}"], torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)), n
    want = train_worker.latent_cache_check(tmp_path / "single", 0)
    assert got["latents"].shape == (7, 1, 4, 4) and torch.equal(got["latents"], want)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["latent_ids.npy", "latents.npy"]
    images = train_worker.sampled_images()  # one process samples all 5 (3 + 2 when shared)
    assert got["images"].shape == images.shape == (5, 3, 32, 32)
    assert torch.allclose(got["images"], images, atol=1e-5)
    targets = train_worker.nv2l_targets()  # one process encodes all 7 (4 + 3 when shared)
    assert got["targets"]["clip"].shape == (7, 2) and got["targets"]["latent"].shape == (7, 1, 4, 4)
    assert all(torch.equal(got["targets"][k], targets[k]) for k in ("ids", "clip", "latent"))
    recon = train_worker.autoencoder_reconstructions()
    assert recon.shape == got["autoencoder"].shape == (5, 16, 16)
    assert torch.allclose(got["autoencoder"], recon, atol=1e-6)


ENDING = """
import sys, torch.distributed as dist
from neurorecon.distributed import end_process_group, ending_process_group
end_process_group()  # no group yet: nothing to do
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
try:
    with ending_process_group():
        raise RuntimeError("the block failed")
except RuntimeError:
    pass
print("initialized after the block:", dist.is_initialized())
"""


def test_entry_points_end_their_process_group(tmp_path):
    """A rank that exits with a live gloo group can abort at interpreter shutdown (SIGABRT after the work is done,
    seen once in CI on the two-process test): ``ending_process_group`` destroys it, also when the block raises,
    and every launchable entry point and test worker runs inside it."""
    proc = subprocess.run([sys.executable, "-c", ENDING, str(tmp_path / "store")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "initialized after the block: False" in proc.stdout
    root = HERE.parent
    for path in ("neurorecon/nv2l/train.py", "neurorecon/neuropictor/train.py", "tests/train_worker.py",
                 "tests/fsdp_worker.py"):
        main_block = (root / path).read_text().split('if __name__ == "__main__":')[-1]
        assert "with ending_process_group():" in main_block, path
