"""The evaluation harness's metrics against independent computations (loops, scipy, skimage directly)."""

import time

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
import torch
import torch.nn.functional as F
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity

from neurorecon.evaluation import (ANTIALIAS, correlation_distance, mindeye_retrieval, pixcorr, protocol_resize,
                                   protocol_settings, retrieval_draws, ssim, two_way_identification)
from reference_metrics import loop_two_way


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(seed, n=5, size=37):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    noisy = np.clip(base.astype(int) + rng.integers(-90, 90, base.shape), 0, 255).astype(np.uint8)
    return base, noisy


def _resize_ref(images, size):
    """Independent resize: torch.nn.functional.interpolate (bilinear, no antialias) of float images."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255.0
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False).float()


def test_resize_is_bilinear_without_antialias():
    gt, _ = _images(0, n=2, size=31)
    assert ANTIALIAS is False and protocol_settings()["antialias"] is False
    ours = protocol_resize(gt, 45)
    assert ours.shape == (2, 3, 45, 45)
    assert torch.allclose(ours, _resize_ref(gt, 45), atol=1e-5)
    # shrinking: the antialias switch matters and is honoured
    big = protocol_resize(gt, 97)
    assert not torch.allclose(protocol_resize(big, 29), protocol_resize(big, 29, antialias=True), atol=1e-3)


def test_pixcorr_matches_pearsonr_per_pair():
    gt, rec = _images(1, n=5, size=37)
    a, b = _resize_ref(gt, 425), _resize_ref(rec, 425)
    expected = np.mean([scipy.stats.pearsonr(x.numpy().ravel(), y.numpy().ravel())[0] for x, y in zip(a, b)])
    assert pixcorr(gt, rec) == pytest.approx(expected, abs=1e-6)
    assert pixcorr(gt, rec, chunk=2) == pytest.approx(expected, abs=1e-6)  # chunking does not change the mean
    assert 0.2 < expected < 0.95
    # float tensors of another odd size give the same as their uint8 form (bilinear up to 425)
    t = torch.from_numpy(rec).permute(0, 3, 1, 2).float() / 255
    assert pixcorr(gt, t) == pytest.approx(expected, abs=1e-6)


def test_ssim_matches_skimage_directly():
    gt, rec = _images(2, n=3, size=29)
    a = rgb2gray(_resize_ref(gt, 425).permute(0, 2, 3, 1).numpy())
    b = rgb2gray(_resize_ref(rec, 425).permute(0, 2, 3, 1).numpy())
    expected = np.mean([structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                              data_range=1.0) for x, y in zip(a, b)])
    assert ssim(gt, rec) == pytest.approx(expected, abs=1e-5)
    assert 0.05 < expected < 0.95


def test_identical_images_score_perfectly():
    gt, _ = _images(3, n=4, size=23)
    assert pixcorr(gt, gt) == pytest.approx(1.0, abs=1e-9)
    assert ssim(gt, gt) == pytest.approx(1.0, abs=1e-9)
    assert two_way_identification(gt, gt) == 1.0
    assert correlation_distance(gt, gt) == pytest.approx(0.0, abs=1e-9)


def test_two_way_matches_loop_on_odd_features():
    rng = np.random.default_rng(4)
    gt = rng.normal(size=(23, 7, 3))
    rec = gt + rng.normal(scale=1.5, size=gt.shape)
    assert two_way_identification(gt, rec) == pytest.approx(loop_two_way(gt, rec), abs=1e-12)
    assert two_way_identification(torch.from_numpy(gt).float(), torch.from_numpy(rec).float()) == pytest.approx(
        loop_two_way(gt, rec), abs=1e-12)


def test_shuffled_two_way_is_near_chance_and_correct_pairs_are_not():
    rng = np.random.default_rng(5)
    gt = rng.normal(size=(300, 40))
    rec = gt + rng.normal(scale=2.0, size=gt.shape)
    assert two_way_identification(gt, rec) > 0.85
    shuffled = rec[rng.permutation(len(rec))]
    assert abs(two_way_identification(gt, shuffled) - 0.5) < 0.05


def test_two_way_1000_is_fast():
    rng = np.random.default_rng(6)
    gt = rng.normal(size=(1000, 768)).astype(np.float32)
    rec = gt + rng.normal(size=gt.shape).astype(np.float32)
    t = time.perf_counter()
    two_way_identification(gt, rec)
    assert time.perf_counter() - t < 2.0  # ~0.1 s on 2 shared cores; generous for a loaded CI machine


def test_correlation_distance_matches_scipy():
    rng = np.random.default_rng(7)
    gt = rng.normal(size=(9, 13))
    rec = gt + rng.normal(size=gt.shape)
    expected = np.mean([scipy.spatial.distance.correlation(g, r) for g, r in zip(gt, rec)])
    assert correlation_distance(gt, rec) == pytest.approx(expected, abs=1e-12)
    assert correlation_distance(gt, rng.normal(size=gt.shape)) == pytest.approx(1.0, abs=0.35)
    with pytest.raises(ValueError, match="paired"):
        correlation_distance(gt, rec[:3])


def loop_retrieval(brain, image, size, draws, seed):
    np.random.seed(seed)  # MindEye: utils.seed_everything(42), then np.random.choice per draw
    fwd, bwd = [], []
    for _ in range(draws):
        idx = np.random.choice(np.arange(len(brain)), size=size, replace=False)
        b = brain[idx] / np.linalg.norm(brain[idx], axis=1, keepdims=True)
        m = image[idx] / np.linalg.norm(image[idx], axis=1, keepdims=True)
        f = sum(int(np.argmax(m @ b[k]) == k) for k in range(size)) / size  # brain k -> every image
        w = sum(int(np.argmax(b @ m[k]) == k) for k in range(size)) / size  # image k -> every brain
        fwd.append(f)
        bwd.append(w)
    return np.array(fwd), np.array(bwd)


def test_retrieval_follows_mindeye_draws_in_both_directions():
    rng = np.random.default_rng(8)
    image = rng.normal(size=(340, 16))
    brain = image + rng.normal(scale=1.6, size=image.shape)
    res = mindeye_retrieval(brain, image, size=300, draws=4, seed=42)
    fwd, bwd = loop_retrieval(brain, image, 300, 4, 42)
    np.testing.assert_array_equal(res.forward_draws, fwd)
    np.testing.assert_array_equal(res.backward_draws, bwd)
    assert res.forward == pytest.approx(fwd.mean()) and res.backward == pytest.approx(bwd.mean())
    assert not np.array_equal(fwd, bwd)  # the two directions are different questions
    half = 1.959963984540054 * fwd.std() / 2
    assert res.forward_ci == pytest.approx((fwd.mean() - half, fwd.mean() + half))
    assert res.chance == pytest.approx(1 / 300) and "4 draws of 300 of 340" in res.note
    # the draws are the protocol's: legacy numpy seed 42, without replacement
    d = retrieval_draws(340, 300, 4, 42)
    assert len(d) == 4 and all(len(np.unique(x)) == 300 for x in d)
    np.random.seed(42)
    np.testing.assert_array_equal(d[0], np.random.choice(np.arange(340), 300, replace=False))


def test_retrieval_with_fewer_samples_uses_all_and_says_so():
    rng = np.random.default_rng(9)
    e = rng.normal(size=(50, 8))
    res = mindeye_retrieval(e, e)
    assert (res.forward, res.backward, res.n_draws, res.subset_size) == (1.0, 1.0, 1, 50)
    assert "fewer than 300" in res.note and "all 50" in res.note
    chance = mindeye_retrieval(rng.normal(size=(50, 8)), e)
    assert chance.forward < 0.2 and chance.backward < 0.2


def test_the_vae_checks_rgb_ssim_is_the_protocol_function_at_native_size():
    import torch

    from neurorecon.evaluation.lowlevel import ssim as protocol_ssim
    from neurorecon.foundation.evaluate import ssim as vae_ssim

    rng = np.random.default_rng(4)
    a = torch.from_numpy(rng.random((3, 3, 24, 24))).float()
    b = (a + 0.1 * torch.from_numpy(rng.standard_normal((3, 3, 24, 24))).float()).clamp(0, 1)
    expected = np.mean([structural_similarity(x, y, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                              use_sample_covariance=False)
                        for x, y in zip(a.permute(0, 2, 3, 1).double().numpy(), b.permute(0, 2, 3, 1).double().numpy())])
    assert vae_ssim(a, b) == pytest.approx(expected, abs=1e-9)
    assert protocol_ssim(b, a, size=None, grey=False) == pytest.approx(expected, abs=1e-9)
    assert protocol_ssim(b, a) != pytest.approx(expected, abs=1e-3)  # the protocol's: grey at 425 px
