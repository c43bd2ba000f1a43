"""The common-grid arrays resample each subject's whole betas volume (NV2L), not only its nsdgeneral voxels."""

import json
import tracemalloc

import numpy as np
from scipy.ndimage import map_coordinates

import rawnsd
from neurorecon.data import load_prepared, open_store, prepare
from neurorecon.data.resample import source_coords, trilinear_matrix, trilinear_support


def test_support_is_what_interpolation_reads():
    rng = np.random.default_rng(1)
    src_shape, dst_shape = (7, 5, 6), (9, 4, 11)
    vol = rng.normal(size=src_shape)
    dst_ijk = np.argwhere(rng.random(dst_shape) < 0.3)
    support = trilinear_support(src_shape, dst_ijk, dst_shape)
    assert 0 < support.sum() < support.size
    got = trilinear_matrix(np.argwhere(support), src_shape, dst_ijk, dst_shape) @ vol[support]
    coords = source_coords(src_shape, dst_ijk, dst_shape).T
    np.testing.assert_allclose(got, map_coordinates(vol, coords, order=1, mode="nearest"), atol=1e-10)
    # identity grid: interpolation at integer coordinates reads exactly the target voxels
    assert np.array_equal(np.argwhere(trilinear_support(src_shape, dst_ijk[:5] % 4, src_shape)),
                          np.unique(dst_ijk[:5] % 4, axis=0))


def zscored_trials(truth, subject):
    """Every trial of a subject as a z-scored whole volume (per voxel and session, training trials' mean and
    population std), in trial order, with its train flag: (T, X, Y, Z) float64 and (T,) bool."""
    shared = set(truth["shared"].tolist())
    vols, flags, t = [], [], 0
    for raw in truth["raw"][subject]:
        psc = np.moveaxis(raw, 3, 0).astype(np.float64) / 300.0
        ids = [truth["subjectim"][subject - 1, truth["masterordering"][t + n]] for n in range(len(psc))]
        train = np.array([i not in shared for i in ids])
        sd = psc[train].std(0)
        sd[sd == 0] = 1.0
        vols.append((psc - psc[train].mean(0)) / sd)
        flags.append(train)
        t += len(psc)
    return np.concatenate(vols), np.concatenate(flags)


def test_union_voxels_outside_the_own_mask_get_the_interpolated_volume(tmp_path):
    truth = rawnsd.write_tree(tmp_path / "nsd")
    out = prepare(tmp_path / "nsd", tmp_path / "store", subjects=[1, 3], progress=False)
    store = open_store(out)
    grid = store.common_grid
    union = grid["union_ijk"]
    for s in (1, 3):
        sub = load_prepared(out, s)
        vols, train = zscored_trials(truth, s)
        coords = source_coords(vols.shape[1:], union, grid["shape"]).T
        expected = np.stack([map_coordinates(v, coords, order=1, mode="nearest") for v in vols])
        for got, rows in ((sub.train_common, train), (np.load(sub.folder / "test_trial_common.npy"), ~train)):
            np.testing.assert_allclose(np.asarray(got, np.float32), expected[rows], rtol=2e-3, atol=2e-3)
        # the union voxels whose interpolation reads voxels outside the subject's own mask: there the old map
        # (nsdgeneral voxels only, zeros elsewhere) pulls toward zero and the volume's value differs
        mask = truth["masks"][s]
        own = trilinear_matrix(np.argwhere(mask), mask.shape, union, grid["shape"])
        outside = np.asarray(own.sum(1)).ravel() < 1 - 1e-9
        assert outside.sum() >= 5, outside.sum()
        old = (own @ np.stack([v[mask] for v in vols[train]]).T).T
        assert np.abs(old[:, outside] - expected[train][:, outside]).mean() > 0.2
        info = json.loads((sub.folder / "subject.json").read_text())
        support = trilinear_support(mask.shape, union, grid["shape"])
        assert info["common_resampling"] == "volume" and info["common_source_voxels"] == int(support.sum())
        assert info["common_source_voxels_outside_nsdgeneral"] == int((support & ~mask).sum()) > 0
    # subject 1's grid is the common grid: its common arrays are its z-scored volume at the union voxels
    vols, train = zscored_trials(truth, 1)
    np.testing.assert_allclose(np.asarray(load_prepared(out, 1).train_common, np.float32),
                               vols[train][:, union[:, 0], union[:, 1], union[:, 2]], rtol=2e-3, atol=2e-3)
    assert store.meta["common_resampling"] == "volume"


def test_memory_of_preparing_does_not_grow_with_sessions(tmp_path, monkeypatch):
    """Sessions are streamed: the memory held when each session's read starts stays flat (keeping a session's
    voxels would add one session's worth each time), and preparing four sessions peaks no higher than one."""
    import neurorecon.data.preparation as preparation

    monkeypatch.setattr(rawnsd, "SHAPES", {1: (40, 44, 36), 3: (38, 46, 34)})
    monkeypatch.setattr(rawnsd, "SESSIONS", {1: [10] * 4, 3: [10] * 4})
    rawnsd.write_tree(tmp_path / "nsd")
    held, read = [], preparation.read_session

    def traced_read(*args, **kwargs):
        held.append(tracemalloc.get_traced_memory()[0])
        return read(*args, **kwargs)

    monkeypatch.setattr(preparation, "read_session", traced_read)
    peaks = {}
    for n in (1, 4):
        held.clear()
        tracemalloc.start()
        out = prepare(tmp_path / "nsd", tmp_path / f"store{n}", subjects=[3], progress=False, max_sessions=n)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    info = load_prepared(out, 3).info
    assert info["sessions"] == [1, 2, 3, 4] and len(held) == 4
    session_bytes = 10 * (info["n_voxels"] + info["common_source_voxels_outside_nsdgeneral"]) * 4
    assert max(held) - min(held) < 0.25 * session_bytes, (held, session_bytes)
    assert peaks[4] - peaks[1] < 0.25 * session_bytes, (peaks, session_bytes)


def test_stores_prepared_before_the_change_are_rebuilt_not_reused():
    """The data stage's digest carries its RECIPE, so a data stage (and the stages built on it) made by the code
    that resampled only nsdgeneral voxels no longer counts as complete; stages without a RECIPE keep digests."""
    import hashlib

    from neurorecon.config import config_class, load_config

    def digest_before(cfg):
        return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]

    data = load_config(config_class("data"), "demo")
    assert data.RECIPE >= 1 and data.digest() != digest_before(data)
    foundation = load_config(config_class("foundation"), "demo")
    assert foundation.RECIPE == 0 and foundation.digest() == digest_before(foundation)


def test_max_trials_keeps_each_subjects_first_trials_normalised_over_whole_sessions(tmp_path, monkeypatch):
    """``max_trials`` (the dry run's cap) keeps the first trials of the prepared sessions, with the same values
    as the uncapped store (the z-scoring still uses each whole session); a cap with no test trial left is an
    error naming the subject and the cap."""
    import pytest

    from neurorecon.errors import DataError

    monkeypatch.setattr(rawnsd, "SHAPES", {1: (40, 44, 36), 3: (38, 46, 34)})
    monkeypatch.setattr(rawnsd, "SESSIONS", {1: [10] * 3, 3: [10] * 3})
    rawnsd.write_tree(tmp_path / "nsd")
    full = load_prepared(prepare(tmp_path / "nsd", tmp_path / "full", subjects=[3], progress=False), 3)
    capped = load_prepared(prepare(tmp_path / "nsd", tmp_path / "cap", subjects=[3], progress=False,
                                   max_trials=17), 3)
    n_train, n_test = capped.info["n_train_trials"], capped.info["n_test_trials"]
    assert n_train + n_test == 17 and n_test > 0 and n_train < full.info["n_train_trials"]
    assert np.array_equal(capped.train_image_ids, full.train_image_ids[:n_train])
    np.testing.assert_array_equal(capped.train_betas, full.train_betas[:n_train])
    np.testing.assert_array_equal(capped.test_trial_betas, full.test_trial_betas[:n_test])
    assert json.loads((tmp_path / "cap" / "store.json").read_text())["max_trials"] == 17
    with pytest.raises(DataError, match=r"subj03.*max_trials 1\b"):
        prepare(tmp_path / "nsd", tmp_path / "none", subjects=[3], progress=False, max_trials=1)
    assert not (tmp_path / "none").exists()
