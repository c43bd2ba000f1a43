import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from neurorecon.data.flatmap import FlatMap, load_flatmap
from neurorecon.data.resample import resample_mask, source_coords, trilinear_matrix
from neurorecon.errors import DataError


def test_trilinear_matches_scipy_map_coordinates():
    rng = np.random.default_rng(0)
    src_shape, dst_shape = (7, 5, 6), (9, 4, 11)
    vol = rng.normal(size=src_shape)
    mask = rng.random(src_shape) < 0.6
    vol[~mask] = 0  # betas are zero outside the mask
    dst_ijk = np.argwhere(np.ones(dst_shape, bool))
    m = trilinear_matrix(np.argwhere(mask), src_shape, dst_ijk, dst_shape)
    got = m @ vol[mask]
    coords = source_coords(src_shape, dst_ijk, dst_shape).T
    expected = map_coordinates(vol, coords, order=1, mode="nearest")
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_identity_and_mask_resampling():
    mask = np.zeros((5, 6, 7), bool)
    mask[1:4, 2:5, 3:6] = True
    assert np.array_equal(resample_mask(mask, mask.shape), mask)
    big = resample_mask(mask, (9, 11, 13))
    assert big.shape == (9, 11, 13) and 0.5 < big.sum() / (mask.sum() * 8) < 2.5


def test_flatmap_projection(tmp_path):
    fm = FlatMap(shape=(2, 3), pixel=np.array([0, 1, 4, 5]), hemi=np.array([0, 0, 1, 1], np.int8),
                 vertex=np.array([7, 2, 3, 3]))
    np.testing.assert_array_equal(fm.vertices("lh"), [2, 7])
    lh = np.array([[20.0, 70.0]])  # values at vertices 2, 7
    rh = np.array([[30.0]])
    out = fm.project(lh, rh, dtype=np.float32)
    np.testing.assert_array_equal(out[0], [[70, 20, 0], [0, 30, 30]])
    assert fm.mask.sum() == 4
    np.savez(tmp_path / "fm.npz", shape=[2, 3], pixel=fm.pixel, hemi=fm.hemi, vertex=fm.vertex)
    assert load_flatmap(tmp_path / "fm.npz").shape == (2, 3)
    np.savez(tmp_path / "bad.npz", shape=[2, 3], pixel=fm.pixel)
    with pytest.raises(DataError, match=r"bad\.npz: expected a flat-map .npz with keys"):
        load_flatmap(tmp_path / "bad.npz")
