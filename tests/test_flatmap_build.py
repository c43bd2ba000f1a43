"""Building the vertex -> pixel flat map for real NSD (fsaverage betas) and the mesh check against the betas."""

import nibabel as nib
import numpy as np
import pytest

from neurorecon.data import build_flatmap, load_flatmap, save_flatmap
from neurorecon.data.betas import read_surface
from neurorecon.errors import DataError


def disc_mesh(n=40, seed=0):
    """Flat coordinates of a jittered grid of vertices, the vertices of a disc of radius 1 marked 'visual'."""
    g = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1.5, 1.5, n), np.linspace(-1.5, 1.5, n))
    xy = np.stack([x.ravel(), y.ravel()], 1) + g.normal(scale=0.005, size=(n * n, 2))
    return xy, np.hypot(xy[:, 0], xy[:, 1]) <= 1.0


def test_build_crops_the_visual_vertices_side_by_side(tmp_path):
    lh, lm = disc_mesh()
    rh, rm = disc_mesh(seed=1)
    fm = build_flatmap(lh, rh, shape=(32, 64), lh_mask=lm, rh_mask=rm, gap=0.3)
    assert fm.n_vertices == (1600, 1600) and fm.shape == (32, 64)
    cols = fm.pixel % 64
    assert cols[fm.hemi == 0].max() <= cols[fm.hemi == 1].min()  # left hemisphere on the left
    assert lm[fm.vertex[fm.hemi == 0]].all() and rm[fm.vertex[fm.hemi == 1]].all()  # visual vertices only
    m = fm.mask
    assert m[16, 16] and m[16, 48] and not m[0, 0] and not m[16, 32]  # disc centres in, corners and gap out
    assert 0.6 < m.sum() / m.size < 0.85  # two discs stretched onto the grid (pi/4 of each half, ~.785)
    # each pixel samples its nearest vertex: projecting x gives a map increasing left to right in each half
    flat = fm.project(lh[:, 0][None], rh[:, 0][None], dtype=np.float64)[0]
    row = flat[16, 2:30]
    assert np.all(np.diff(row[row != 0]) >= -1e-9)
    again = load_flatmap(save_flatmap(fm, tmp_path / "map.npz"))
    assert again.n_vertices == fm.n_vertices and np.array_equal(again.pixel, fm.pixel)


def _mgh(path, n_vertices, trials=3):
    data = np.random.default_rng(0).normal(100, 1, size=(n_vertices, 1, 1, trials)).astype(np.float32)
    nib.save(nib.MGHImage(data, np.eye(4)), str(path))
    return path


def test_betas_on_another_mesh_are_a_clear_error(tmp_path):
    lh, lm = disc_mesh(n=101)  # 10201 vertices: a mesh of its own
    fm = load_flatmap(save_flatmap(build_flatmap(lh, lh, shape=(16, 16), lh_mask=lm, rh_mask=lm),
                                   tmp_path / "map.npz"))
    verts = fm.vertices("lh")
    assert read_surface(_mgh(tmp_path / "ok.mgh", 10201), verts, fm, "lh").shape == (3, len(verts))
    with pytest.raises(DataError, match=r"flat map's mesh \(10201 vertices.*fsaverage, 163842 vertices"):
        read_surface(_mgh(tmp_path / "fsavg.mgh", 163842), verts, fm, "lh")


def test_an_fsaverage5_map_reads_fsaverage_betas(tmp_path):
    from neurorecon.data.flatmap import FlatMap

    fm = FlatMap((4, 4), np.arange(4), np.zeros(4, np.int8), np.array([0, 5, 9, 10241]), "m", (10242, 10242))
    assert read_surface(_mgh(tmp_path / "b.mgh", 163842), fm.vertices("lh"), fm, "lh").shape == (3, 4)
    with pytest.raises(DataError, match="fsaverage6, 40962 vertices"):
        FlatMap((4, 4), np.arange(4), np.zeros(4, np.int8), np.arange(4), "m", (163842, 163842)).check_mesh(
            "lh", 40962, tmp_path / "b.mgh")


def test_flatmap_command_from_gifti_meshes_and_mgz_masks(tmp_path, capsys):
    from neurorecon.cli import main

    xy, m = disc_mesh(n=30)
    paths = {}
    for h in ("lh", "rh"):
        coords = np.concatenate([xy, np.zeros((len(xy), 1))], 1).astype(np.float32)
        img = nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(coords, intent="NIFTI_INTENT_POINTSET")])
        nib.save(img, str(tmp_path / f"{h}.flat.gii"))
        nib.save(nib.MGHImage(m.astype(np.float32).reshape(-1, 1, 1), np.eye(4)), str(tmp_path / f"{h}.vis.mgz"))
        paths[h] = (tmp_path / f"{h}.flat.gii", tmp_path / f"{h}.vis.mgz")
    out = tmp_path / "map.npz"
    assert main(["flatmap", "--lh-flat", str(paths["lh"][0]), "--rh-flat", str(paths["rh"][0]), "--lh-mask",
                 str(paths["lh"][1]), "--rh-mask", str(paths["rh"][1]), "--size", "32", "--out", str(out)]) == 0
    fm = load_flatmap(out)
    assert fm.shape == (32, 32) and fm.n_vertices == (900, 900) and m[fm.vertex].all()
    assert "written to" in capsys.readouterr().out
    np.save(tmp_path / "short.npy", m[:10])
    assert main(["flatmap", "--lh-flat", str(paths["lh"][0]), "--rh-flat", str(paths["rh"][0]), "--lh-mask",
                 str(tmp_path / "short.npy"), "--out", str(out)]) == 2
    assert "one value per vertex of the flat mesh (900 vertices)" in capsys.readouterr().err
