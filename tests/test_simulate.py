"""Tests of the NSD-mini simulator (smoke profile; the simulation runs once per module and format/seed)."""

import json
import re

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io

from neurorecon.config import load_config
from neurorecon.errors import ConfigError
from neurorecon.simulate import SimConfig, core, scenes, simulate

SUBJECTS = (1, 2)
BETAS = "betas_fithrf_GLMdenoise_RR"


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("nsdmini")
    return dict(a=simulate(base / "a", profile="smoke", seed=0, progress=False),
                nifti=simulate(base / "nifti", profile="smoke", seed=0, betas_format="nifti", progress=False),
                other=simulate(base / "other", profile="smoke", seed=1, progress=False))


@pytest.fixture(scope="module")
def root(trees):
    return trees["a"]


@pytest.fixture(scope="module")
def cfg():
    return load_config(SimConfig, "smoke")


def _design(root):
    m = scipy.io.loadmat(root / "nsddata/experiments/nsd/nsd_expdesign.mat")
    return (m["masterordering"].astype(np.int64), m["subjectim"].astype(np.int64), m["sharedix"].astype(np.int64))


def _hdf5_betas(root, s, ses):
    with h5py.File(root / f"nsddata_betas/ppdata/subj{s:02d}/func1pt8mm/{BETAS}/betas_session{ses:02d}.hdf5") as f:
        return f["betas"][:]


def _nii(root, s, name):
    return np.asarray(nib.load(root / f"nsddata/ppdata/subj{s:02d}/func1pt8mm/{name}").dataobj)


def _trials(root, cfg, s):
    """All of a subject's betas (T, X, Y, Z) in psc, z-scored per voxel within each session, and 1-based ids."""
    mo, si, _ = _design(root)
    out = []
    for ses in range(1, cfg.sessions[s - 1] + 1):
        b = _hdf5_betas(root, s, ses).transpose(0, 3, 2, 1).astype(np.float64) / 300
        out.append((b - b.mean(0)) / (b.std(0) + 1e-9))
    betas = np.concatenate(out)
    return betas, si[s - 1, mo[0, :len(betas)] - 1]


def _categories(root):
    """cocoId -> set of category ids; cocoId -> list of instance annotations; cocoId -> captions."""
    cats, inst, caps = {}, {}, {}
    for split in ("train2017", "val2017"):
        d = json.loads((root / f"nsddata_stimuli/stimuli/nsd/annotations/instances_{split}.json").read_text())
        for a in d["annotations"]:
            cats.setdefault(a["image_id"], set()).add(a["category_id"])
            inst.setdefault(a["image_id"], []).append(a)
        d = json.loads((root / f"nsddata_stimuli/stimuli/nsd/annotations/captions_{split}.json").read_text())
        for a in d["annotations"]:
            caps.setdefault(a["image_id"], []).append(a["caption"])
    return cats, inst, caps


def test_config_profiles():
    smoke, demo, full = (load_config(SimConfig, p).validate() for p in ("smoke", "demo", "full"))
    assert smoke.subjects == (1, 2) and smoke.n_sessions_total == 3 and smoke.image_size == 32
    assert demo.subjects == tuple(range(1, 9)) and demo.n_sessions_total == 10
    assert [s < demo.n_sessions_total for s in demo.sessions] == [False, False, True, True, False, True, False, True]
    assert full.to_dict() | {"profile": "demo"} == demo.to_dict()
    with pytest.raises(ConfigError, match="trials_per_session"):
        load_config(SimConfig, "smoke", overrides={"trials_per_session": 50}).validate()
    with pytest.raises(ConfigError, match="betas_format"):
        simulate("/nonexistent/never", profile="smoke", betas_format="mat")


def test_paths_exist(root, cfg):
    files = ["nsddata/experiments/nsd/nsd_expdesign.mat", "nsddata/experiments/nsd/nsd_stim_info_merged.csv",
             "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5", "neurorecon_flatmap.npz", "nsdmini_truth.json"]
    files += [f"nsddata_stimuli/stimuli/nsd/annotations/{k}_{s}.json" for k in ("captions", "instances")
              for s in ("train2017", "val2017")]
    for s in SUBJECTS:
        func = f"nsddata/ppdata/subj{s:02d}/func1pt8mm"
        files += [f"{func}/brainmask.nii.gz"] + [f"{func}/roi/{r}.nii.gz" for r in
                                                 ("nsdgeneral", "prf-visualrois", "streams")]
        files += [f"nsddata_betas/ppdata/subj{s:02d}/func1pt8mm/{BETAS}/ncsnr.nii.gz"]
        files += [f"nsdmini_resting/subj{s:02d}/{h}.resting.mgh" for h in ("lh", "rh")]
        for ses in range(1, cfg.sessions[s - 1] + 1):
            files.append(f"nsddata_betas/ppdata/subj{s:02d}/func1pt8mm/{BETAS}/betas_session{ses:02d}.hdf5")
            files += [f"nsddata_betas/ppdata/subj{s:02d}/fsaverage/{BETAS}/{h}.betas_session{ses:02d}.mgh"
                      for h in ("lh", "rh")]
    missing = [f for f in files if not (root / f).is_file()]
    assert not missing
    assert not (root / "nsddata/ppdata/subj03").exists()
    assert not list(root.parent.glob("*.partial-*"))
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 5e6


def test_volumes_and_betas(trees, cfg):
    root, nifti = trees["a"], trees["nifti"]
    truth = json.loads((root / "nsdmini_truth.json").read_text())
    shapes = set()
    for s in SUBJECTS:
        gen = _nii(root, s, "roi/nsdgeneral.nii.gz")
        brain = _nii(root, s, "brainmask.nii.gz")
        prf, streams = _nii(root, s, "roi/prf-visualrois.nii.gz"), _nii(root, s, "roi/streams.nii.gz")
        img = nib.load(root / f"nsddata/ppdata/subj{s:02d}/func1pt8mm/roi/nsdgeneral.nii.gz")
        np.testing.assert_allclose(np.diag(img.affine)[:3], 1.8)
        shape = gen.shape
        shapes.add(shape)
        assert list(shape) == truth["subjects"][f"subj{s:02d}"]["volume_shape"]
        assert set(np.unique(gen)) == {-1, 0, 1} and ((gen >= 0) == (brain == 1)).all()
        assert cfg.nsdgeneral_voxels[0] <= (gen == 1).sum() < cfg.nsdgeneral_voxels[1]
        assert set(np.unique(prf)) == set(range(-1, 8)) and set(np.unique(streams)) == set(range(-1, 8))
        assert (prf[gen < 1] <= 0).all() and (streams[gen == 1] >= 1).all()
        for ses in range(1, cfg.sessions[s - 1] + 1):
            b = _hdf5_betas(root, s, ses)
            assert b.dtype == np.int16 and b.shape == (cfg.trials_per_session,) + shape[::-1]
            v = np.asarray(nib.load(nifti / f"nsddata_betas/ppdata/subj{s:02d}/func1pt8mm/{BETAS}/"
                                            f"betas_session{ses:02d}.nii.gz").dataobj)
            assert v.dtype == np.int16 and v.shape == shape + (cfg.trials_per_session,)
            np.testing.assert_array_equal(v, b.transpose(3, 2, 1, 0))
            assert (b[:, brain.T == 0] == 0).all() and (b[:, brain.T == 1] != 0).mean() > 0.95
            psc = b[:, gen.T == 1] / 300
            assert 0.5 < psc.std() < 10
        ncsnr = np.asarray(nib.load(root / f"nsddata_betas/ppdata/subj{s:02d}/func1pt8mm/{BETAS}/ncsnr.nii.gz")
                           .dataobj)
        assert ncsnr.dtype == np.float32 and (ncsnr[gen < 1] == 0).all() and (ncsnr[gen == 1] > 0).all()
        for h in ("lh", "rh"):
            m = nib.load(root / f"nsddata_betas/ppdata/subj{s:02d}/fsaverage/{BETAS}/{h}.betas_session01.mgh")
            assert m.shape == (cfg.n_vertices, 1, 1, cfg.trials_per_session) and m.get_data_dtype().str[1:] == "f4"
            r = nib.load(root / f"nsdmini_resting/subj{s:02d}/{h}.resting.mgh")
            assert r.shape == (cfg.n_vertices, 1, 1, cfg.n_rest)
            assert np.isfinite(r.get_fdata()).all()
    assert len(shapes) == len(SUBJECTS)  # subjects differ


def test_expdesign_and_stim_info(root, cfg):
    mo, si, shared = _design(root)
    n_img = cfg.n_images
    assert mo.shape == (1, 3 * n_img) and si.shape == (8, n_img) and shared.shape == (1, cfg.n_shared)
    assert mo.min() == 1 and mo.max() == n_img and (np.bincount(mo[0])[1:] == 3).all()
    assert (si[:, :cfg.n_shared] == shared).all()
    own = si[:, cfg.n_shared:]
    assert len(np.unique(own)) == own.size and not np.isin(own, shared).any()
    info = pd.read_csv(root / "nsddata/experiments/nsd/nsd_stim_info_merged.csv", index_col=0)
    with h5py.File(root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5") as f:
        brick = f["imgBrick"]
        assert brick.dtype == np.uint8 and brick.shape == (len(info), 32, 32, 3) and brick.chunks[0] == 1
    assert len(info) >= si.max() and (info.nsdId == np.arange(len(info))).all() and info.cocoId.is_unique
    assert set(info.cocoSplit) == {"train2017", "val2017"} and (info.cropBox == "(0, 0, 0, 0)").all()
    assert set(np.flatnonzero(info.shared1000) + 1) == set(shared[0])
    first_test_trial = np.flatnonzero(np.isin(si[0, mo[0] - 1], shared))[0]
    assert first_test_trial < cfg.trials_per_session  # test images appear in the first session too
    for s in range(1, 9):
        assert set(np.flatnonzero(info[f"subject{s}"]) + 1) == set(si[s - 1])
        n_trials = cfg.sessions[s - 1] * cfg.trials_per_session
        for r in range(3):
            reps = info[f"subject{s}_rep{r}"].to_numpy()
            shown = np.flatnonzero(reps)
            assert len(shown) == n_img  # smoke subjects are complete
            assert (reps[shown] <= n_trials).all()
            assert (si[s - 1, mo[0, reps[shown] - 1] - 1] == shown + 1).all()  # the trial shows that image
        assert (info[f"subject{s}_rep0"] < info[f"subject{s}_rep1"])[info[f"subject{s}"]].all()


def test_determinism(trees):
    a, b, c = trees["a"], trees["nifti"], trees["other"]

    def arrays(root):
        with h5py.File(root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5") as f:
            out = dict(brick=f["imgBrick"][:])
        out.update(zip(("mo", "si", "shared"), _design(root)))
        out["ncsnr"] = np.asarray(nib.load(root / f"nsddata_betas/ppdata/subj01/func1pt8mm/{BETAS}/ncsnr.nii.gz")
                                  .dataobj)
        out["surf"] = nib.load(root / f"nsddata_betas/ppdata/subj02/fsaverage/{BETAS}/rh.betas_session03.mgh"
                               ).get_fdata()
        out["rest"] = nib.load(root / "nsdmini_resting/subj01/lh.resting.mgh").get_fdata()
        out.update({f"flat_{k}": v for k, v in np.load(root / core.FLATMAP_FILE).items()})
        return out

    x, y, z = arrays(a), arrays(b), arrays(c)
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    for k in ("brick", "mo", "si", "ncsnr", "surf", "rest"):
        assert x[k].shape != z[k].shape or not np.array_equal(x[k], z[k]), k
    ba, bc = _hdf5_betas(a, 1, 1), _hdf5_betas(c, 1, 1)
    assert ba.shape != bc.shape or not np.array_equal(ba, bc)
    assert ((a / "nsddata/experiments/nsd/nsd_stim_info_merged.csv").read_text()
            == (b / "nsddata/experiments/nsd/nsd_stim_info_merged.csv").read_text())


def test_annotations_match_scenes(root, cfg):
    info = pd.read_csv(root / "nsddata/experiments/nsd/nsd_stim_info_merged.csv", index_col=0)
    cats, inst, caps = _categories(root)
    names = {c["id"]: c["name"] for c in scenes.coco_categories()}
    colour_words = set(scenes.COLORS)
    cat_words = {w: c for c in scenes.CATEGORIES for w in (c, scenes.PLURALS[c])}
    S = cfg.image_size
    for split in ("train2017", "val2017"):
        d = json.loads((root / f"nsddata_stimuli/stimuli/nsd/annotations/instances_{split}.json").read_text())
        ids = {im["id"] for im in d["images"]}
        assert ids == set(info.cocoId[info.cocoSplit == split])
        assert all(im["background"] in scenes.BACKGROUNDS and im["width"] == S for im in d["images"])
    for coco_id, objs in inst.items():
        assert 1 <= len(objs) <= 3 and len(caps[coco_id]) == 5
        colours = {o["attributes"]["color"] for o in objs}
        categories = {names[o["category_id"]] for o in objs}
        for o in objs:
            x, y, w, h = o["bbox"]
            assert 0 <= x and 0 <= y and x + w <= S and y + h <= S and w > 1 and h > 1
            assert o["area"] > 0 and o["iscrowd"] == 0 and len(o["segmentation"][0]) % 2 == 0
            assert o["attributes"]["shape"] == scenes.CATEGORY_SHAPES[names[o["category_id"]]]
            assert o["attributes"]["size"] in scenes.SIZES and o["attributes"]["position"] in scenes.POSITIONS
        for text in caps[coco_id]:
            words = re.findall(r"[a-z]+", text.lower())
            assert {w for w in words if w in colour_words} <= colours, text
            assert {cat_words[w] for w in words if w in cat_words} <= categories, text
        mentioned = {cat_words[w] for t in caps[coco_id] for w in re.findall(r"[a-z]+", t.lower()) if w in cat_words}
        assert mentioned == categories


def test_relations_and_positions_are_true():
    rng = np.random.default_rng(5)
    for _ in range(200):
        scene = scenes.sample_scene(rng)
        img, polys = scenes.render_scene(scene, 32, rng)
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
        for obj, p in zip(scene["objects"], polys):
            pts = np.concatenate(p)
            cx, cy = (pts.min(0) + pts.max(0)) / 2 / 32
            ex, ey = scenes.POSITION_CENTERS[obj["position"]]
            assert abs(cx - ex) < 0.1 and abs(cy - ey) < 0.1
        for text in scenes.scene_captions(scene, rng):
            m = re.search(r"an? (?:(small|large) )?(\w+) (\w+) (to the left of|to the right of|above|below) "
                          r"an? (?:(small|large) )?(\w+) (\w+)", text.lower())
            if m:
                def find(size, colour, category):
                    found = [o for o in scene["objects"] if (o["color"], o["category"]) == (colour, category)
                             and size in (None, o["size"])]
                    assert len(found) == 1, text  # the caption names one object unambiguously
                    return found[0]

                (ax, ay), (bx, by) = find(*m.group(1, 2, 3))["center"], find(*m.group(5, 6, 7))["center"]
                assert {"to the left of": ax < bx, "to the right of": ax > bx, "above": ay < by,
                        "below": ay > by}[m.group(4)], text


def _split_half(betas, ids, shared):
    """Per-voxel correlation over test images between their first and second presentations."""
    test = [i for i in shared if (ids == i).sum() >= 2]
    r1 = np.stack([betas[np.flatnonzero(ids == i)[0]] for i in test])
    r2 = np.stack([betas[np.flatnonzero(ids == i)[1]] for i in test])
    r1, r2 = r1 - r1.mean(0), r2 - r2.mean(0)
    return (r1 * r2).sum(0) / np.sqrt((r1 ** 2).sum(0) * (r2 ** 2).sum(0) + 1e-12)


def test_brain_carries_reliable_signal(root, cfg):
    _, _, shared = _design(root)
    early, outside = [], []
    for s in SUBJECTS:
        betas, ids = _trials(root, cfg, s)
        rel = _split_half(betas.reshape(len(betas), -1), ids, shared[0])
        gen, prf = _nii(root, s, "roi/nsdgeneral.nii.gz").ravel(), _nii(root, s, "roi/prf-visualrois.nii.gz").ravel()
        early.append(rel[(gen == 1) & (prf > 0)])
        outside.append(rel[gen == 0])
    early, outside = np.concatenate(early), np.concatenate(outside)
    assert np.median(early) > 0.15
    assert abs(np.median(outside)) < 0.08
    assert np.median(early) > np.median(outside) + 0.12


def test_category_decoding_beats_chance(root, cfg):
    _, _, shared = _design(root)
    cats, _, _ = _categories(root)
    aucs = []
    for s in SUBJECTS:
        betas, ids = _trials(root, cfg, s)
        gen = _nii(root, s, "roi/nsdgeneral.nii.gz").ravel() == 1
        x = betas.reshape(len(betas), -1)[:, gen]
        y = np.array([[c + 1 in cats[100000 + i] for c in range(len(scenes.CATEGORIES))] for i in ids], float)
        test = np.isin(ids, shared)
        w = np.linalg.solve(x[~test].T @ x[~test] + 10 * x.shape[1] * np.eye(x.shape[1]),
                            x[~test].T @ (y[~test] - y[~test].mean(0)))
        test_ids = np.unique(ids[test])
        pred = np.stack([x[ids == i].mean(0) for i in test_ids]) @ w
        truth = np.stack([y[ids == i][0] for i in test_ids])
        for c in range(truth.shape[1]):
            pos, neg = pred[truth[:, c] == 1, c], pred[truth[:, c] == 0, c]
            if len(pos) and len(neg):
                aucs.append((pos[:, None] > neg[None]).mean())
    assert np.mean(aucs) > 0.6  # chance is 0.5 (seed 0: 0.66, seeds 1-7: 0.74-0.86)


def test_flatmap(root, cfg):
    fm = np.load(root / core.FLATMAP_FILE)
    H, W = fm["shape"]
    assert (H, W) == (cfg.flatmap_size, cfg.flatmap_size)
    pixel, hemi, vertex = fm["pixel"], fm["hemi"], fm["vertex"]
    assert pixel.dtype == np.int64 and hemi.dtype == np.int8 and vertex.dtype == np.int64
    assert len(pixel) == len(hemi) == len(vertex) and len(np.unique(pixel)) == len(pixel)
    assert 0 <= pixel.min() and pixel.max() < H * W and 0.5 * H * W < len(pixel) < H * W
    col = pixel % W
    assert (col[hemi == 0] < W // 2).all() and (col[hemi == 1] >= W // 2).all()
    assert 0 <= vertex.min() and vertex.max() < cfg.n_vertices
    for h in (0, 1):
        assert set(vertex[hemi == h]) == set(range(cfg.n_vertices))  # every vertex is sampled
    mgh = nib.load(root / f"nsddata_betas/ppdata/subj01/fsaverage/{BETAS}/lh.betas_session01.mgh").get_fdata()
    flat = np.zeros(H * W)
    flat[pixel[hemi == 0]] = mgh[vertex[hemi == 0], 0, 0, 0]
    assert np.count_nonzero(flat) > 0.2 * H * W


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(core, "_write_volume_session", boom)
    out = tmp_path / "nsd"
    with pytest.raises(RuntimeError, match="disk full"):
        simulate(out, profile="smoke", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_noise_free_responses_are_affine_in_the_scene_features(root, cfg):
    """The premise of the decoding ceiling (neurorecon.simulate.ceiling): the scene features drawn again from the
    tree's seed are the simulator's, and every noise-free response is an affine function of them."""
    from neurorecon.simulate import brain
    from neurorecon.simulate.ceiling import scene_feature_matrix, scene_features_of

    with h5py.File(root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5", "r") as f:
        ids = np.arange(len(f["imgBrick"]))
    parts = scene_features_of(root, ids)
    cats, _, _ = _categories(root)
    nc = len(scenes.CATEGORIES)
    assert all(set(np.flatnonzero(parts["high"][k, :nc]) + 1) == cats.get(100000 + i + 1, set())  # cocoId = 100001 + id
               for k, i in enumerate(ids))
    F = scene_feature_matrix(root, ids)
    sd = F.std(0)
    assert F.shape == (len(ids), sum(p[0].size for p in parts.values())) and np.allclose(sd[sd > 0], 1)
    # the response model is affine in the features (shown on random feature vectors: more of them than features)
    rng = np.random.default_rng(0)
    feats = brain.random_features(rng, 1200, cfg.feature_grid)
    u, v, hemi = rng.random(40), rng.random(40), rng.integers(0, 2, 40)
    resp = brain.Tuning(0, cfg.feature_grid, subject=1).responses(feats, u, v, hemi)
    F = np.c_[np.concatenate([feats[k].reshape(1200, -1) for k in ("low", "colpos", "shapepos", "high")], 1),
              np.ones(1200)]
    assert len(F) > 2 * F.shape[1]  # more samples than features: a perfect fit is not automatic
    coef, *_ = np.linalg.lstsq(F, resp, rcond=None)
    r2 = 1 - ((F @ coef - resp) ** 2).sum(0) / ((resp - resp.mean(0)) ** 2).sum(0)
    assert r2.min() > 0.999
    # and a noisy response is not (the test could not fail otherwise)
    noisy = resp + rng.normal(size=resp.shape)
    coef, *_ = np.linalg.lstsq(F, noisy, rcond=None)
    assert (1 - ((F @ coef - noisy) ** 2).sum(0) / ((noisy - noisy.mean(0)) ** 2).sum(0)).max() < 0.999
