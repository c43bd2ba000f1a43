"""The Takagi & Nishimoto-style ridge baseline on tiny random data and the tiny random foundation."""

import numpy as np
import pytest
import torch

from neurorecon.baselines import fit_ridge, fit_ridge_reconstructor, roi_columns, training_samples
from neurorecon.foundation import tiny_random_foundation


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ridge_recovers_a_planted_linear_map():
    rng = np.random.default_rng(0)
    x = rng.normal(loc=3.0, scale=2.0, size=(300, 25))
    w = rng.normal(size=(25, 7))
    m, s = x.mean(0), x.std(0)  # the map is planted on the inputs standardised as the fit standardises them
    y = ((x - m) / s) @ w + 0.05 * rng.normal(size=(300, 7)) + 1.0
    model = fit_ridge(x, y, groups=np.repeat(np.arange(100), 3))
    np.testing.assert_allclose(model.weights, w, atol=0.03)
    assert model.alpha <= 10.0 and max(model.cv_scores.values()) > 0.99
    x_new = rng.normal(loc=3.0, scale=2.0, size=(50, 25))
    np.testing.assert_allclose(model.predict(x_new), ((x_new - m) / s) @ w + 1.0, atol=0.1)
    # closed form: the solution of (XᵀX + αI) W = Xᵀ y on standardised inputs and centred outputs
    xs = (x - x.mean(0)) / x.std(0)
    direct = np.linalg.solve(xs.T @ xs + model.alpha * np.eye(25), xs.T @ (y - y.mean(0)))
    np.testing.assert_allclose(model.weights, direct, atol=1e-8)


def test_ridge_shrinks_hard_when_there_is_nothing_to_learn():
    rng = np.random.default_rng(1)
    model = fit_ridge(rng.normal(size=(120, 40)), rng.normal(size=(120, 5)))
    assert model.alpha >= 1e3 and max(model.cv_scores.values()) < 0.05


def test_training_samples_average_or_single_trials():
    betas = np.arange(12, dtype=np.float32).reshape(6, 2)
    ids = np.array([7, 3, 7, 3, 9, 9])
    x, got = training_samples(betas, ids, average=True)
    np.testing.assert_array_equal(got, [3, 7, 9])
    np.testing.assert_allclose(x, [[4, 5], [2, 3], [9, 10]])
    x, got = training_samples(betas, ids, average=False)
    assert x.shape == (6, 2) and list(got) == list(ids)
    rois = {"streams": {"early": [3, 1], "ventral": [0]}, "prf-visualrois": {"V1v": [1]}}
    np.testing.assert_array_equal(roi_columns(rois, ("early", "V1v")), [1, 3])
    assert roi_columns(rois, ("absent",)) is None and roi_columns(rois, None) is None


def test_reconstructor_shapes_and_determinism_on_the_tiny_foundation():
    fm = tiny_random_foundation(image_size=32, with_lm=False)
    rng = np.random.default_rng(2)
    n_img, reps, vox = 12, 3, 30
    images = rng.integers(0, 256, (n_img, 32, 32, 3), dtype=np.uint8)
    captions = {i: [f"a red ball number {i}", f"ball {i} on grass"] for i in range(n_img)}
    ids = np.tile(np.arange(n_img), reps)
    betas = rng.normal(size=(len(ids), vox)).astype(np.float32) + ids[:, None] * 0.1
    rec = fit_ridge_reconstructor(fm, betas, ids, lambda i: images[np.asarray(i)], lambda i: captions[i],
                                  average=True, n_folds=3, latent_columns=np.arange(10))
    assert rec.latent_shape == (4, 16, 16) and rec.text_shape == tuple(fm.text_shape)
    assert rec.latent_map.x_mean.shape == (10,) and rec.text_map.x_mean.shape == (vox,)
    z, c = rec.predict(betas[:4])
    assert z.shape == (4, 4, 16, 16) and c.shape == (4,) + tuple(fm.text_shape)
    a = rec.reconstruct(fm, betas[:2], strength=0.5, num_steps=4, guidance_scale=2.0, seed=3)
    b = rec.reconstruct(fm, betas[:2], strength=0.5, num_steps=4, guidance_scale=2.0, seed=3)
    other = rec.reconstruct(fm, betas[:2], strength=0.5, num_steps=4, guidance_scale=2.0, seed=4)
    assert a.shape == (2, 3, 32, 32) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.equal(a, other)
    assert rec.decode_latents(fm, betas[:2]).shape == (2, 3, 32, 32)
    single = fit_ridge_reconstructor(fm, betas, ids, lambda i: images[np.asarray(i)], lambda i: captions[i],
                                     average=False, alphas=(1.0,))
    assert single.average is False and single.latent_map.alpha == 1.0


def test_targets_read_and_encoded_a_batch_at_a_time():
    """batch_size (ridge_batch): the VAE encodes a few images at a time (at 512 px a batch of 64 outgrew the dry
    run's memory), the text tower its own larger batches of captions, and the maps are those of one pass."""
    fm = tiny_random_foundation(image_size=32, with_lm=False)
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    ids = np.tile(np.arange(7), 2)
    betas = rng.normal(size=(len(ids), 12)).astype(np.float32)
    reads = []

    def get_images(i):
        reads.append(len(i))
        return images[np.asarray(i)]

    kw = dict(average=True, n_folds=3, alphas=(1.0,))
    whole = fit_ridge_reconstructor(fm, betas, ids, get_images, lambda i: [f"ball {i}"], **kw)
    assert reads == [7]
    vae, text = [], []
    encode, tokens = fm.encode_images, fm.text_tokens
    fm.encode_images = lambda x: (vae.append(len(x)), encode(x))[1]
    fm.text_tokens = lambda t, **k: (text.append(len(t)), tokens(t, **k))[1]
    few = fit_ridge_reconstructor(fm, betas, ids, get_images, lambda i: [f"ball {i}"], batch_size=3, text_batch=2,
                                  **kw)
    # images are read 64 at a time; the VAE takes batch_size of them, the text tower text_batch captions
    assert reads[1:] == [7] and vae == [3, 3, 1] and text == [2, 2, 2, 1]
    (za, ca), (zb, cb) = whole.predict(betas[:3]), few.predict(betas[:3])
    np.testing.assert_allclose(np.asarray(zb), np.asarray(za), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(cb), np.asarray(ca), rtol=1e-5, atol=1e-5)
