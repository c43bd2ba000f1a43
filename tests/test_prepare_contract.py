"""The prepare contract on a hand-written raw NSD tree (independent of our simulator)."""

import numpy as np
import pytest

from neurorecon.data import load_prepared, open_store, prepare
from neurorecon.data.store import average_by_image

from rawnsd import SESSIONS, write_tree


def expected_subject(truth, subject):
    """Compute the contract's arrays with plain loops, independently of neurorecon.data.prepare."""
    mask = truth["masks"][subject]
    ijk = np.argwhere(mask)
    shared = set(truth["shared"].tolist())
    train_ids, train_rows, test = [], [], {}
    t = 0
    for vol in truth["raw"][subject]:
        psc = np.stack([vol[i, j, k, :] for i, j, k in ijk], axis=1).astype(np.float64) / 300.0  # (T, V)
        ids = [truth["subjectim"][subject - 1, truth["masterordering"][t + n]] for n in range(vol.shape[3])]
        is_train = np.array([i not in shared for i in ids])
        mu = psc[is_train].mean(0)
        sd = psc[is_train].std(0, ddof=0)
        z = (psc - mu) / sd
        for n, image in enumerate(ids):
            if is_train[n]:
                train_ids.append(image)
                train_rows.append(z[n])
            else:
                test.setdefault(image, []).append(z[n])
        t += vol.shape[3]
    test_ids = sorted(test)
    return dict(ijk=ijk, train_ids=np.array(train_ids), train=np.array(train_rows),
                test_ids=np.array(test_ids), test=np.array([np.mean(test[i], 0) for i in test_ids]))


@pytest.mark.parametrize("fmt,slab_bytes", [("hdf5", 2**30), ("hdf5", 1), ("nifti", 2**30)])
def test_contract_on_handwritten_tree(tmp_path, monkeypatch, fmt, slab_bytes):
    monkeypatch.setattr("neurorecon.data.betas._SLAB_BYTES", slab_bytes)  # 1 byte: one z-slice per slab
    truth = write_tree(tmp_path / "nsd", fmt=fmt)
    out = prepare(tmp_path / "nsd", tmp_path / "store", subjects=[1, 3], progress=False)
    for s in (1, 3):
        got = load_prepared(out, s)
        exp = expected_subject(truth, s)
        np.testing.assert_array_equal(got.voxel_ijk, exp["ijk"])
        np.testing.assert_array_equal(got.train_image_ids, exp["train_ids"])
        np.testing.assert_array_equal(got.test_image_ids, exp["test_ids"])
        assert got.train_betas.dtype == np.float32 and got.test_betas.dtype == np.float32
        np.testing.assert_allclose(got.train_betas, exp["train"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got.test_betas, exp["test"], rtol=1e-4, atol=1e-4)
        assert len(got.train_image_ids) + len(got.test_trial_image_ids) == sum(SESSIONS[s])
        assert not set(got.train_image_ids) & set(truth["shared"].tolist())


def test_store_images_annotations_and_common_grid(tmp_path):
    truth = write_tree(tmp_path / "nsd")
    out = prepare(tmp_path / "nsd", tmp_path / "store", subjects=[1, 3], progress=False)
    store = open_store(out)
    s1, s3 = store.subject(1), store.subject(3)
    ids = np.union1d(np.union1d(s1.train_image_ids, s1.test_image_ids), np.union1d(s3.train_image_ids, s3.test_image_ids))
    np.testing.assert_array_equal(store.image_ids, ids)
    np.testing.assert_array_equal(store.get_images(ids[:3]), truth["brick"][ids[:3]])
    ann = store.annotations[int(ids[0])]
    assert ann["captions"] == [f"image {ids[0]} caption 0", f"image {ids[0]} caption 1"]
    # cropBox (top=0.1, bottom=0, left=0, right=0.2) of a 100 x 50 COCO image into 13 px: x (40 - 0) / 80 * 13
    box = ann["instances"][0]
    assert box["category"] == "dog"
    np.testing.assert_allclose(box["bbox"], [6.5, (10 - 5) / 45 * 13, 20 / 80 * 13, 30 / 45 * 13], atol=0.01)
    # common grid = subject 1's grid; subject 1's own data maps onto it unchanged (the union's other voxels:
    # tests/test_resample_volume.py)
    grid = store.common_grid
    assert grid["shape"] == truth["masks"][1].shape
    union = {v: c for c, v in enumerate(map(tuple, grid["union_ijk"]))}
    assert set(map(tuple, s1.voxel_ijk)) <= set(union)
    cols = [union[v] for v in map(tuple, s1.voxel_ijk)]
    np.testing.assert_allclose(np.asarray(s1.train_common, np.float32)[:, cols], s1.train_betas, atol=2e-2)
    assert s3.train_common.shape == (len(s3.train_image_ids), len(grid["union_ijk"]))


def _raw_from_nsdmini(root, subject):
    """Read NSD-mini's raw files with plain h5py/nibabel/scipy into the write_tree truth format."""
    import h5py
    import nibabel as nib
    import scipy.io

    mat = scipy.io.loadmat(root / "nsddata/experiments/nsd/nsd_expdesign.mat")
    mask = nib.load(root / f"nsddata/ppdata/subj{subject:02d}/func1pt8mm/roi/nsdgeneral.nii.gz").get_fdata() == 1
    bdir = root / f"nsddata_betas/ppdata/subj{subject:02d}/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    raws = []
    for path in sorted(bdir.glob("betas_session*.hdf5")):
        with h5py.File(path, "r") as f:
            raws.append(f["betas"][()].transpose(3, 2, 1, 0))  # back to NIfTI order
    return dict(shared=mat["sharedix"].ravel().astype(int) - 1, subjectim=mat["subjectim"].astype(int) - 1,
                masterordering=mat["masterordering"].ravel().astype(int) - 1, raw={subject: raws},
                masks={subject: mask})


def test_contract_on_nsdmini_both_formats(tmp_path):
    from neurorecon.simulate import simulate

    simulate(tmp_path / "h5", profile="smoke", seed=1, betas_format="hdf5", progress=False)
    simulate(tmp_path / "nii", profile="smoke", seed=1, betas_format="nifti", progress=False)
    a = prepare(tmp_path / "h5", tmp_path / "store_h5", progress=False)
    b = prepare(tmp_path / "nii", tmp_path / "store_nii", progress=False)
    for s in (1, 2):
        exp = expected_subject(_raw_from_nsdmini(tmp_path / "h5", s), s)
        for store in (a, b):
            got = load_prepared(store, s)
            np.testing.assert_array_equal(got.voxel_ijk, exp["ijk"])
            np.testing.assert_array_equal(got.train_image_ids, exp["train_ids"])
            np.testing.assert_array_equal(got.test_image_ids, exp["test_ids"])
            np.testing.assert_allclose(got.train_betas, exp["train"], atol=1e-4)
            np.testing.assert_allclose(got.test_betas, exp["test"], atol=1e-4)
        np.testing.assert_array_equal(load_prepared(a, s).train_flat, load_prepared(b, s).train_flat)


def _average_whole(values, image_ids):
    """The per-image mean the straightforward way: every row to float64 at once."""
    ids, inverse, counts = np.unique(image_ids, return_inverse=True, return_counts=True)
    out = np.zeros((len(ids),) + values.shape[1:], dtype=np.float64)
    np.add.at(out, inverse.reshape(-1), np.asarray(values, dtype=np.float64))
    out /= counts.reshape((-1,) + (1,) * (values.ndim - 1))
    return ids, out.astype(np.float32)


@pytest.mark.parametrize("chunk_bytes", [1, 3 * 8 * 17 * 13 * 5, 2 ** 27])
def test_average_by_image_in_blocks_equals_the_whole_average(tmp_path, chunk_bytes):
    rng = np.random.default_rng(7)
    ids = rng.choice(np.arange(100, 160, 3), size=203)  # 20 images, odd and uneven repetition counts
    values = np.lib.format.open_memmap(tmp_path / "v.npy", "w+", np.float16, (203, 17, 13))
    values[:] = rng.standard_normal((203, 17, 13))
    want_ids, want = _average_whole(values, ids)
    got_ids, got = average_by_image(values, ids, chunk_bytes=chunk_bytes)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_array_equal(got, want)  # the same float64 sums, in the same order
    _, half = average_by_image(values, ids, dtype=np.float16, chunk_bytes=chunk_bytes)
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, want.astype(np.float16))


def test_average_by_image_memory_stays_at_the_output_plus_a_block(tmp_path):
    import tracemalloc

    n, shape = 600, (64, 64)
    values = np.lib.format.open_memmap(tmp_path / "v.npy", "w+", np.float16, (n, *shape))
    values[:] = 1.0
    ids = np.repeat(np.arange(n // 3), 3)
    out_bytes = (n // 3) * 64 * 64 * 2  # float16 means
    tracemalloc.start()
    average_by_image(values, ids, dtype=np.float16, chunk_bytes=2 ** 20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    whole = n * 64 * 64 * 8  # the float64 copy of every row that a one-shot average makes (19.7 MB)
    assert peak < out_bytes + 4 * 2 ** 20 < whole / 3, (peak, out_bytes, whole)
