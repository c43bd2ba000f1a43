"""``neurorecon prepare --layout neuropictor``: a tiny tree in NeuroPictor's released data layout, written here."""

import numpy as np
import pytest
from PIL import Image

from neurorecon.cli import main
from neurorecon.data import open_store
from neurorecon.data.neuropictor_layout import prepare_neuropictor
from neurorecon.encoding import visual_mask
from neurorecon.errors import DataError

SHAPE = (16, 16)
TRAIN = {0: [3, 5, 7, 9], 1: [2, 4, 6]}     # subject index (0-based) -> training ids
SHARED = np.array([10, 11, 12, 13])         # test ids; subject 2 saw 10 and 12 only
LABELS = {1: [3, 10, 5, 7, 11, 3, 9, 10, 14],  # 14: in neither list (a trial the release does not use)
          2: [2, 12, 4, 6, 2, 10, 12]}


def write_release(root, bad_pickle=False):
    nsd = root / "NSD"
    fmri = nsd / "fmri_npy"
    g = np.random.default_rng(0)
    inside = np.zeros(SHAPE, bool)
    inside[4:12, 2:14] = True
    for s, labels in LABELS.items():
        (fmri / f"{s:02d}_norm").mkdir(parents=True)
        np.save(fmri / f"{s:02d}_label.npy", np.array(labels, np.int64))
        for j, image in enumerate(labels):
            m = np.where(inside, g.normal(size=SHAPE) + image, 0).astype(np.float32)
            np.save(fmri / f"{s:02d}_norm" / f"surf_{j:06d}.npy", m)
    payload = {k: set(v) for k, v in TRAIN.items()}
    if bad_pickle:
        payload[0] = __import__("fractions").Fraction(1, 3)
    np.save(nsd / "unique_triallabel.npy", np.array(payload, dtype=object), allow_pickle=True)
    np.save(nsd / "sub1257_shared_triallabel.npy", SHARED)
    caps = np.full((20, 5), "", dtype=object)
    for i in range(20):
        caps[i, :2] = [f"a photo of thing {i}", f" thing {i} again "]
    np.save(nsd / "COCO_73k_annots_curated.npy", caps, allow_pickle=True)
    images = nsd / "nsddata_stimuli/stimuli/images"
    images.mkdir(parents=True)
    for i in range(20):
        Image.fromarray(np.full((12, 12, 3), 10 * i, np.uint8)).save(images / f"image_{i:06d}.png")
    return root, inside


def test_released_layout_becomes_a_store(tmp_path):
    root, inside = write_release(tmp_path / "release")
    store = open_store(prepare_neuropictor(root, tmp_path / "store", progress=False))
    assert store.subjects == [1, 2] and store.meta["flat_shape"] == list(SHAPE) and store.meta["image_size"] == 12
    s1 = store.subject(1)
    np.testing.assert_array_equal(s1.train_image_ids, [3, 5, 7, 3, 9])  # every trial, in trial order
    np.testing.assert_array_equal(s1.test_trial_image_ids, [10, 11, 10])
    np.testing.assert_array_equal(s1.test_image_ids, [10, 11])
    assert s1.info["n_unused_trials"] == 1 and s1.train_flat.dtype == np.float16
    raw = np.load(root / "NSD/fmri_npy/01_norm/surf_000002.npy")  # trial 2 = image 5 = train row 1
    np.testing.assert_allclose(np.asarray(s1.train_flat[1], np.float32), raw, atol=1e-2)
    trials = [np.load(root / f"NSD/fmri_npy/01_norm/surf_{j:06d}.npy") for j in (1, 7)]  # image 10
    np.testing.assert_allclose(s1.test_flat[0], np.mean(trials, 0), atol=1e-2)  # repetition average
    np.testing.assert_array_equal(store.subject(2).test_image_ids, [10, 12])
    np.testing.assert_array_equal(visual_mask(store), inside)
    assert store.annotations[5]["captions"] == ["a photo of thing 5", "thing 5 again"]
    np.testing.assert_array_equal(store.get_images([9])[0, 0, 0], [90, 90, 90])
    assert "0 voxels" in repr(s1)


def test_cli_and_clear_errors(tmp_path, capsys):
    root, _ = write_release(tmp_path / "release")
    assert main(["prepare", "--layout", "neuropictor", str(root / "NSD"), "--out", str(tmp_path / "s"),
                 "--subjects", "2", "--image-size", "8", "--quiet"]) == 0
    store = open_store(tmp_path / "s")
    assert store.subjects == [2] and store.images.shape[1:] == (8, 8, 3)
    np.save(root / "NSD/fmri_npy/02_norm/surf_000003.npy", np.zeros((8, 8), np.float32))
    assert main(["prepare", "--layout", "neuropictor", str(root), "--out", str(tmp_path / "s"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "surf_000003.npy" in err and "(16, 16)" in err
    assert open_store(tmp_path / "s").subjects == [2]  # the earlier store survives
    assert main(["prepare", "--layout", "neuropictor", str(root), "--flatmap", "x.npz", "--out", "y"]) == 2
    assert "not used with --layout neuropictor" in capsys.readouterr().err


def test_pickles_with_code_are_refused(tmp_path):
    root, _ = write_release(tmp_path / "release", bad_pickle=True)
    with pytest.raises(DataError, match="fractions.Fraction is not a plain data type.*--trust-pickle"):
        prepare_neuropictor(root, tmp_path / "store", progress=False)
    with pytest.raises(DataError, match="subject 1's training image ids"):  # unpickled when trusted, then checked
        prepare_neuropictor(root, tmp_path / "store", allow_pickle=True, progress=False)
    with pytest.raises(DataError, match="no fmri_npy folder"):
        prepare_neuropictor(root / "NSD/nsddata_stimuli", tmp_path / "store2", progress=False)


def test_data_stage_reads_the_released_layout(tmp_path, monkeypatch):
    from neurorecon.artifacts import read_metrics
    from neurorecon.config import load_config
    from neurorecon.data.stage import DataConfig, run_data_stage, store_path
    from neurorecon.errors import ConfigError

    monkeypatch.setenv("NEURORECON_HOME", str(tmp_path / "home"))
    root, _ = write_release(tmp_path / "release")
    cfg = load_config(DataConfig, "smoke", overrides=dict(layout="neuropictor", nsd_root=str(root), subjects=[1, 2]))
    store = open_store(run_data_stage(cfg, progress=False))
    assert store.meta["layout"] == "neuropictor" and store.folder == store_path("smoke")
    m = read_metrics(store.folder.parent)
    assert set(m[m.metric == "n_trials"].subject) == {"1", "2"} and "n_voxels" not in set(m.metric)
    with pytest.raises(ConfigError, match="needs nsd_root"):
        run_data_stage(load_config(DataConfig, "smoke", overrides=dict(layout="neuropictor")), force=True)
    with pytest.raises(ConfigError, match="layout must be"):
        run_data_stage(load_config(DataConfig, "smoke", overrides=dict(layout="hcp")))


def test_official_one_trial_per_image_sampling(tmp_path):
    from neurorecon.neuropictor.data import subject_pairs

    root, _ = write_release(tmp_path / "release")
    store = open_store(prepare_neuropictor(root, tmp_path / "store", progress=False))
    maps, ids = subject_pairs(store, 1, "last")  # subject 1 trains on images 3, 5, 7, 3, 9 (trials 0, 2, 3, 5, 6)
    np.testing.assert_array_equal(ids, [5, 7, 3, 9])  # in trial order of their last repetitions
    raw = np.load(root / "NSD/fmri_npy/01_norm/surf_000005.npy")  # image 3's last trial is file 5
    np.testing.assert_allclose(np.asarray(maps[list(ids).index(3)], np.float32), raw, atol=1e-2)
    avg_maps, avg_ids = subject_pairs(store, 1, "average")
    np.testing.assert_array_equal(avg_ids, [3, 5, 7, 9])


@pytest.mark.parametrize("repetitions", ["average", "last"])
def test_training_maps_are_written_once_and_memory_mapped(tmp_path, repetitions):
    """Pretraining's per-image maps go to one .npy per subject that every rank memory-maps (held per process,
    real NSD's would be 9.4 GB on each rank); the files equal the in-memory maps and are reused, not rewritten."""
    from neurorecon.neuropictor.data import subject_pairs, training_maps

    root, _ = write_release(tmp_path / "release")
    store = open_store(prepare_neuropictor(root, tmp_path / "store", progress=False))
    maps, ids = training_maps(store, store.subjects, repetitions, tmp_path / "cache")
    for s, m, i in zip(store.subjects, maps, ids):
        want_maps, want_ids = subject_pairs(store, s, repetitions)
        assert isinstance(m, np.memmap) and m.dtype == want_maps.dtype
        np.testing.assert_array_equal(i, want_ids)
        np.testing.assert_array_equal(np.asarray(m), want_maps)
    files = sorted((tmp_path / "cache").glob(f"flat_{repetitions}_subj*.npy"))
    assert len(files) == 2 * len(store.subjects) and not list((tmp_path / "cache").glob("*.partial*"))
    stamp = {p: p.stat().st_mtime_ns for p in files}
    training_maps(store, store.subjects, repetitions, tmp_path / "cache")
    assert {p: p.stat().st_mtime_ns for p in files} == stamp  # reused
    s = store.subjects[0]
    np.save(tmp_path / "cache" / f"flat_{repetitions}_subj{s:02d}_ids.npy", np.array([1, 2]))  # not this store's
    maps, ids = training_maps(store, [s], repetitions, tmp_path / "cache")
    np.testing.assert_array_equal(ids[0], subject_pairs(store, s, repetitions)[1])  # rebuilt


def test_gradient_clipping_option_reaches_fit(monkeypatch):
    import types

    from neurorecon.neuropictor import stage

    seen = {}
    monkeypatch.setattr(stage, "fit", lambda *a, **k: seen.update(k))
    model = types.SimpleNamespace(semantic_weight=0.0)
    stage.train_neuropictor(model, None, None, steps=1, batch_size=1, lr=1e-4, weight_decay=0.0, seed=0,
                            ckpt_dir=None, ckpt_every=0, max_grad_norm=0.0)
    assert seen["max_grad_norm"] == 0.0


def test_parallel_branch_initialisations():
    import torch

    from neurorecon.neuropictor import FMRIConditioner

    torch.manual_seed(0)
    cond = FMRIConditioner(map_size=16, patch=8, width=16, depth=1, heads=2, text_len=4, text_dim=8, semantic_mid=3)
    maps = torch.randn(2, 16, 16)
    before = torch.get_rng_state()
    for init in ("copy", "random"):
        r = cond.with_residual(init, seed=1)
        with torch.no_grad():
            _, ctx, main = r(maps)
        assert torch.equal(ctx, main)  # the zero output conv: both start neutral
        same = torch.equal(r.residual_head.proj.weight, cond.semantic.proj.weight)
        assert same == (init == "copy")
    assert torch.equal(torch.get_rng_state(), before)  # seeded without touching the global generator
    again = cond.with_residual("random", seed=1)
    assert torch.equal(again.residual_head.proj.weight, r.residual_head.proj.weight)
    with pytest.raises(ValueError, match="copy' or 'random"):
        cond.with_residual("zeros")


def test_trial_caps_are_refused_where_they_would_be_ignored(tmp_path):
    """max_sessions / max_trials cap raw NSD's preparation; with the released arrays (layout neuropictor) they would
    do nothing, so the data stage says so instead of ignoring them; below 1 they are refused for either layout."""
    import pytest

    from neurorecon.config import load_config
    from neurorecon.data.stage import DataConfig, run_data_stage
    from neurorecon.errors import ConfigError

    for key in ("max_sessions", "max_trials"):
        cfg = load_config(DataConfig, "smoke", overrides=dict(layout="neuropictor", nsd_root=str(tmp_path), **{key: 5}))
        with pytest.raises(ConfigError, match=f"{key} must be null with layout neuropictor.*found 5"):
            run_data_stage(cfg, force=True, progress=False)
        cfg = load_config(DataConfig, "smoke", overrides={key: 0})
        with pytest.raises(ConfigError, match=f"{key} must be null or >= 1, found 0"):
            run_data_stage(cfg, force=True, progress=False)
