"""The `make bench` suites run end to end on tiny inputs (so they cannot rot) and return finite positive figures."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(autouse=True, scope="module")
def _torch_threads_restored():
    """The torch suites pin one thread (their figures are single-thread figures); restore it for later modules."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _check(rows, n):
    assert len(rows) == n
    for row in rows:
        assert {"figure", "value", "unit", "note"} <= set(row), row
        assert isinstance(row["value"], float) and math.isfinite(row["value"]) and row["value"] > 0, row


def test_registered_in_make_bench():
    import run

    assert {"bench_loading", "bench_train", "bench_sampling"} <= set(run.SUITES)
    assert set(run.SUITES) == {p.stem for p in run.HERE.glob("bench_*.py")}


def test_committed_results_are_one_whole_run_in_the_written_format():
    """benchmarks/results.csv comes from one `make bench`: every row in run.py's format, every suite there, one
    date and machine (a hand-edited, spliced or older-format row fails here)."""
    import run

    rows = run.read_results()
    assert rows, "benchmarks/results.csv is empty"
    for n, row in enumerate(rows, 2):
        try:
            run.check_row(row)
        except ValueError as err:
            raise AssertionError(f"benchmarks/results.csv line {n}: {err}") from None
    assert {r["suite"] for r in rows} == set(run.SUITES)
    assert len({(r["date"], r["machine"]) for r in rows}) == 1
    assert len({r["figure"] for r in rows}) == len(rows), "a figure appears twice"


def test_check_row_rejects_other_formats():
    import run

    good = dict(date="2026-12-01", machine="x86_64, 2 cores, Python 3.11.7", load="1.50", suite="bench_eval",
                figure="eval: x", value="0.5", unit="s", note="n", command=".venv/bin/python benchmarks/run.py bench_eval")
    run.check_row(good)
    for bad in (dict(good, suite="bench_prep"), dict(good, value="nan"), dict(good, unit="ms"),
                dict(good, command=".venv/bin/python benchmarks/run.py bench_prep"), dict(good, machine="my laptop"),
                {k: v for k, v in good.items() if k != "load"}):
        with pytest.raises(ValueError):
            run.check_row(bad)


def test_a_partial_run_leaves_results_csv_alone(monkeypatch, capsys):
    import run

    before = run.RESULTS.read_bytes()
    monkeypatch.setitem(sys.modules, "bench_eval", type(sys)("bench_eval"))
    sys.modules["bench_eval"].run = lambda: [dict(figure="eval: fake", value=1.0, unit="s", note="fake")]
    rows = run.main(["bench_eval"])
    assert [r["figure"] for r in rows] == ["eval: fake"] and run.RESULTS.read_bytes() == before
    assert "left as it is" in capsys.readouterr().out


def test_bench_loading_tiny():
    import bench_loading

    rows = bench_loading.run(subjects=(1,), profile="smoke", batch_size=8, repeats=1,
                             overrides=dict(n_train=12, n_shared=4, trials_per_session=16, n_rest=8, image_size=16,
                                            supersample=1, n_vertices=60, flatmap_size=16, volume_shape=(8, 9, 8),
                                            nsdgeneral_voxels=(40, 80)))
    _check(rows, 2)


def test_bench_train_tiny():
    import bench_train

    rows = bench_train.run(profile="smoke", steps=2, warmup=1, repeats=1, unet_channels=[8, 16], unet_head_dim=4,
                           unet_batch=2, clip_width=16, context_length=8)
    _check(rows, 1)


def test_bench_sampling_tiny():
    import bench_sampling

    rows = bench_sampling.run(n_images=2, n_eval=4, cfg_steps=2, fast=("dpm++", 2), slow=("ddim", 3), repeats=1)
    _check(rows, 5)
    assert "untrained tiny_random_foundation" in rows[0]["note"]  # the test home has no demo foundation


def test_probe_language_reads_what_features_encode():
    """The language probes recover the asked attribute from features that encode it, and not from noise; the
    oracle codes of oracle_language.py hold the same answers."""
    import numpy as np

    import probe_language as P
    import torch

    from neurorecon.nv2l.evaluate import qa_items
    from neurorecon.simulate.scenes import COLORS, POSITIONS, SHAPES

    rng = np.random.default_rng(3)
    colors, shapes, size = list(COLORS), sorted(set(SHAPES)), 64
    corners = {"left": (4, 24), "right": (44, 24), "top": (24, 4), "bottom": (24, 44), "center": (24, 24)}
    ann = {}
    for i in range(257):
        where = rng.choice(POSITIONS, size=int(rng.integers(1, 4)), replace=False)
        ann[i] = {"instances": [dict(category="ball", bbox=[*corners[p], 16, 16],
                                     attributes=dict(position=str(p), color=colors[int(rng.integers(8))],
                                                     shape=shapes[int(rng.integers(len(shapes)))]))
                                for p in where]}
    ids = np.arange(257)
    labels = P.attribute_labels(ann, ids, size)
    col, shp, count = labels["color"][0], labels["shape"][0], labels["count"][0]
    assert col.shape == (257, 5) and (count == (col < len(colors)).sum(1)).all()
    onehot = np.concatenate([np.eye(len(colors) + 1)[col].reshape(257, -1),
                             np.eye(len(shapes) + 1)[shp].reshape(257, -1), np.eye(4)[count]], 1)
    x = onehot @ rng.normal(size=(onehot.shape[1], 90)) + 0.05 * rng.normal(size=(257, 90))
    train, test = ids[:200], ids[200:]
    tr_labels = {k: (v[0][train], v[1]) for k, v in labels.items()}
    items = qa_items(ann, test, size, seed=0)
    assert set(items.type) == {"color", "shape", "count"}
    encoded = P.probe_accuracy(x[train], tr_labels, x[test], test, items, train)
    noise = P.probe_accuracy(rng.normal(size=(200, 90)), tr_labels, rng.normal(size=(57, 90)), test, items, train)
    assert min(encoded.values()) > 0.9, encoded
    assert noise["color"] < 0.4 and noise["shape"] < 0.4, noise

    # the oracle of benchmarks/oracle_language.py holds the same answers in the ViT3D's token layout
    import oracle_language as O

    for layout in O.LAYOUTS:
        codes = O.oracle_codes(ann, ids, size, n_tokens=7, width=24, layout=layout)
        assert codes.shape == (257, 7 * 24) and codes.dtype == np.float32
        assert min(P.probe_accuracy(codes[train], tr_labels, codes[test], test, items, train).values()) > 0.9
    tokens = O.OracleEncoder(7, 24).features(torch.from_numpy(codes[:3]))
    # factorised: token p changes only with position p's object (token 5, the count; token 6, a signature)
    same = O.oracle_codes(ann, ids, size, 7, 24, "factorised").reshape(257, 7, 24)
    assert tokens.shape == (3, 7, 24) and np.allclose(same[:, 6], same[0, 6])
    empty = col[:, 0] == len(colors)
    assert np.allclose(same[empty, 0], same[empty][0, 0])
    with pytest.raises(ValueError, match="more than 5 tokens"):
        O.oracle_codes(ann, ids, size, 5, 24, "factorised")
