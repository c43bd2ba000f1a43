"""Normalisation statistics and per-image means of the training trials, streamed in float32 (no copy of every
trial in float32 or float64: at NSD scale that is tens of GB)."""

import tracemalloc

import numpy as np

from neurorecon.nv2l.encoder import image_means, streaming_moments


def _trials(n=20000, v=400, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, v)) * rng.uniform(0.5, 3, v) + rng.uniform(-50, 50, v)).astype(np.float16)


def test_streaming_moments_match_float64_and_copy_nothing_whole(tmp_path):
    x = _trials()
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")  # the store's arrays are memory-mapped
    tracemalloc.start()
    mean, std = streaming_moments(mm, chunk=1024)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    ref = x.astype(np.float64)
    assert mean.dtype == std.dtype == np.float32
    np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(std, ref.std(0), rtol=1e-4)
    assert peak < 0.2 * x.size * 4, peak  # a few chunks, never the whole array in float32
    # chunks that do not divide the rows, and a single chunk
    for chunk in (777, 10 ** 6):
        m, s = streaming_moments(x, chunk)
        np.testing.assert_allclose(m, mean, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(s, std, rtol=1e-4)


def test_image_means_in_float32():
    x = _trials(3000, 50)
    keys = np.random.default_rng(1).integers(0, 400, len(x))
    means, uniq = image_means(x, keys, chunk=500)
    assert means.dtype == np.float32 and np.array_equal(uniq, np.unique(keys))
    ref = np.stack([x[keys == k].astype(np.float64).mean(0) for k in uniq])
    np.testing.assert_allclose(means, ref, rtol=1e-5, atol=1e-3)
