"""ViT3D: cube extraction, persistence, MixUp partners, training through fit, GradCAM localisation."""

import numpy as np
import pytest
import torch

from neurorecon.nv2l.concepts import ablation_check, gradcam, voxel_map
from neurorecon.nv2l.encoder import (TrialSet, latent_correlation, retrieval_top1, training_trials, vit3d_loss)
from neurorecon.nv2l.vit3d import PatchGrid, ViT3D
from neurorecon.training import ArrayBatches, fit


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _blob_mask(shape=(9, 10, 7), seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    mask[2:6, 1:7, 1:5] = True
    mask &= rng.random(shape) < 0.8
    return np.argwhere(mask)


def test_patch_grid_keeps_exactly_the_cubes_touching_the_mask():
    shape, P = (9, 10, 7), 4
    ijk = _blob_mask(shape)
    g = PatchGrid(shape, ijk, P)
    assert g.padded_shape == (12, 12, 8) and g.n_cubes == (3, 3, 2)
    # dense reference: zero-padded volume cut into cubes
    vals = np.arange(1, len(ijk) + 1, dtype=float)
    vol = np.zeros(g.padded_shape)
    vol[tuple(ijk.T)] = vals
    cubes = vol.reshape(3, P, 3, P, 2, P).transpose(0, 2, 4, 1, 3, 5).reshape(-1, P ** 3)
    touching = np.flatnonzero((cubes != 0).any(1))
    assert g.n_patches == len(touching)
    row = np.append(vals, 0.0)
    np.testing.assert_array_equal(row[g.index], cubes[touching])
    # every voxel appears exactly once, in the cube it belongs to
    assert sorted(g.index[g.index < len(ijk)].tolist()) == list(range(len(ijk)))
    np.testing.assert_array_equal(g.patch_ijk[g.voxel_patch], ijk // P)
    with pytest.raises(ValueError, match="outside the grid"):
        PatchGrid((4, 4, 4), np.array([[0, 0, 5]]), 2)


def test_vit3d_shapes_and_save_load_round_trip(tmp_path):
    ijk = _blob_mask()
    m = ViT3D((9, 10, 7), ijk, patch_size=4, width=32, depth=3, heads=2, head_hidden=16, clip_dim=8,
              latent_shape=(2, 3, 3))
    rng = np.random.default_rng(0)
    m.set_normalisation(voxel=(rng.normal(size=len(ijk)), rng.uniform(0.5, 2, len(ijk))),
                        clip=(np.ones(8), 2 * np.ones(8)), latent=(np.zeros(18), np.ones(18)))
    x = torch.randn(5, len(ijk))
    out = m(x)
    assert out["clip"].shape == (5, 8) and out["latent"].shape == (5, 18)
    assert m.features(x).shape == (5, m.n_tokens, 32)
    torch.testing.assert_close(m.features(x, layer=-1), m.run_blocks(m.embed(x)))
    pred = m.predict(x.numpy())
    assert pred["latent"].shape == (5, 2, 3, 3)
    torch.testing.assert_close(pred["clip"], out["clip"].detach() * 2 + 1)
    m.save_pretrained(tmp_path / "vit")
    m2 = ViT3D.from_pretrained(tmp_path / "vit")
    torch.testing.assert_close(m2.predict(x.numpy())["clip"], pred["clip"])


class _Sub:
    def __init__(self, x, ids):
        self.train_common, self.train_image_ids = x, ids


class _Store:
    def __init__(self, subs):
        self.subs = subs

    def subject(self, s):
        return self.subs[s]


def test_mixup_partners_are_other_repetitions_of_the_same_image_and_subject():
    rng = np.random.default_rng(0)
    store = _Store({1: _Sub(rng.normal(size=(7, 4)), np.array([5, 6, 5, 7, 5, 6, 8])),
                    2: _Sub(rng.normal(size=(3, 4)), np.array([5, 5, 9]))})
    t = training_trials(store, [1, 2])
    assert len(t) == 10 and t.voxels.dtype == np.float16
    np.testing.assert_array_equal(t.voxels, np.concatenate([store.subs[1].train_common,
                                                            store.subs[2].train_common]).astype(np.float16))
    for i in range(len(t)):
        part = t.partners[i, : t.n_partners[i]]
        same = [j for j in range(len(t)) if j != i and t.subjects[j] == t.subjects[i]
                and t.image_ids[j] == t.image_ids[i]]
        assert sorted(part.tolist()) == (same or [i])
    rows, counts = t.trials_of(np.array([5, 9]))
    assert counts.tolist() == [5, 1] and set(rows[0].tolist()) == {0, 2, 4, 7, 8}


def test_retrieval_and_latent_correlation_metrics():
    true = torch.eye(4) + 0.01
    assert retrieval_top1(true, true) == (1.0, 1.0)
    assert retrieval_top1(true[[1, 0, 2, 3]], true) == (0.5, 0.5)
    z = torch.randn(3, 2, 4, 4)
    assert latent_correlation(z, z) == pytest.approx(1.0)
    assert latent_correlation(-z, z) == pytest.approx(-1.0)


def _toy(seed=0, n=512):
    """An 8x8x8 grid of 8 cubes (4^3): a latent factor drives every voxel of cube 5 and the CLIP target's first
    dimension; an unrelated factor drives cube 2; everything else is noise."""
    rng = np.random.default_rng(seed)
    ijk = np.argwhere(np.ones((8, 8, 8), bool))
    g = PatchGrid((8, 8, 8), ijk, 4)
    x = rng.normal(size=(n, len(ijk))).astype(np.float32)
    signal = rng.normal(size=n).astype(np.float32)
    x[:, g.voxel_patch == 5] += signal[:, None]
    x[:, g.voxel_patch == 2] += rng.normal(size=(n, 1)).astype(np.float32)
    u = np.zeros(6, np.float32)
    u[0] = 1
    clip = np.outer(signal, u) + 0.05 * rng.normal(size=(n, 6)) + np.eye(6)[1]
    return ijk, x, clip.astype(np.float32), u


def test_vit3d_learns_through_fit_and_gradcam_finds_the_informative_cube():
    torch.manual_seed(0)
    ijk, x, clip, u = _toy()
    m = ViT3D((8, 8, 8), ijk, patch_size=4, width=32, depth=2, heads=2, head_hidden=32, clip_dim=6,
              latent_shape=(1, 2, 2))
    n_train = 384
    m.set_normalisation(voxel=(x.mean(0), x.std(0)), clip=(clip.mean(0), clip.std(0)))
    # pairs of "repetitions" (trial i and i ^ 1 show the same image): MixUp mixes them, targets are shared
    partners = (np.arange(n_train) ^ 1)[:, None]
    clip_shared = clip.copy()
    clip_shared[:n_train] = (clip[:n_train] + clip[np.arange(n_train) ^ 1]) / 2
    loss_fn = vit3d_loss(torch.from_numpy(x), (torch.from_numpy(clip_shared) - m.clip_mean) / m.clip_std,
                         torch.zeros(len(x), 4), alpha=0.1, mixup=True)
    data = ArrayBatches(row=np.arange(n_train), partners=partners, n_partners=np.ones(n_train, np.int64),
                        target=np.arange(n_train))
    res = fit(m, loss_fn, data, steps=150, batch_size=32, lr=2e-3, progress=False, log_every=10)
    assert res.losses[-1][1] < 0.7 * res.losses[0][1]
    test = np.arange(n_train, len(x))
    pred = m.predict(x[test])["clip"].numpy()
    assert np.corrcoef(pred[:, 0], clip[test, 0])[0, 1] > 0.3  # held out
    present = test[clip[test, 0] > 0.5]  # GradCAM localises positive evidence: cases where the "concept" is there
    xt = torch.from_numpy(x[present])
    n = len(xt)
    assert n >= 10
    cam = gradcam(m, xt, torch.from_numpy(u)[None])
    assert cam.shape == (n, 8) and (cam >= 0).all()
    share = cam.mean(0) / cam.mean()
    assert share.argmax() == 5 and share[5] > 2  # the cube that carries the signal
    assert voxel_map(m, cam).shape == (n, 512)
    res = ablation_check(m, xt, torch.from_numpy(u)[None].expand(n, -1), fraction=0.125, n_random=3)
    assert res.drop_located.mean() > 0.05 and res.drop_located.mean() > 2 * max(res.drop_random.mean(), 0.01)
    assert (res.drop_located > res.drop_random).mean() > 0.6


def test_trialset_reports_missing_images():
    t = TrialSet(np.zeros((2, 3), np.float16), np.array([1, 2]), np.array([1, 1]), np.zeros((2, 1), np.int64),
                 np.ones(2, np.int64))
    with pytest.raises(ValueError, match="no training trial"):
        t.trials_of(np.array([3]))


def test_training_trials_hold_the_trials_once(tmp_path):
    import tracemalloc

    subs = {}
    for s, n in ((1, 300), (2, 257)):
        x = np.lib.format.open_memmap(tmp_path / f"s{s}.npy", "w+", np.float16, (n, 2000))
        x[:] = s
        subs[s] = _Sub(x, np.arange(n) % 97)
    tracemalloc.start()
    t = training_trials(_Store(subs), [1, 2])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1.3 * t.voxels.nbytes, (peak, t.voxels.nbytes)  # per-subject copies + concatenate: 2x
    assert t.voxels[:300].min() == 1 and t.voxels[300:].max() == 2
