"""The `make bench` suites run end to end on tiny inputs (so they cannot rot) and return finite positive figures."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(autouse=True, scope="module")
def _torch_threads_restored():
    """The torch suites pin one thread (their figures are single-thread figures); restore it for later modules."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _check(rows, n):
    assert len(rows) == n
    for row in rows:
        assert {"figure", "value", "unit", "note"} <= set(row), row
        assert isinstance(row["value"], float) and math.isfinite(row["value"]) and row["value"] > 0, row


def test_registered_in_make_bench():
    import run

    assert {"bench_loading", "bench_train", "bench_sampling"} <= set(run.SUITES)


def test_bench_loading_tiny():
    import bench_loading

    rows = bench_loading.run(subjects=(1,), profile="smoke", batch_size=8, repeats=1,
                             overrides=dict(n_train=12, n_shared=4, trials_per_session=16, n_rest=8, image_size=16,
                                            supersample=1, n_vertices=60, flatmap_size=16, volume_shape=(8, 9, 8),
                                            nsdgeneral_voxels=(40, 80)))
    _check(rows, 2)


def test_bench_train_tiny():
    import bench_train

    rows = bench_train.run(profile="smoke", steps=2, warmup=1, repeats=1, unet_channels=[8, 16], unet_head_dim=4,
                           unet_batch=2, clip_width=16, context_length=8)
    _check(rows, 1)


def test_bench_sampling_tiny():
    import bench_sampling

    rows = bench_sampling.run(n_images=2, n_eval=4, cfg_steps=2, fast=("dpm++", 2), slow=("ddim", 3), repeats=1)
    _check(rows, 5)
    assert "untrained tiny_random_foundation" in rows[0]["note"]  # the test home has no demo foundation
