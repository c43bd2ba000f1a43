import numpy as np
import pytest

from neurorecon.metrics import paired_pearson, pearson_matrix, retrieval_top1, two_way_identification
from reference_metrics import loop_two_way


def test_two_way_matches_loop_and_extremes():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(30, 4, 5))
    rec = gt + rng.normal(scale=2.0, size=gt.shape)
    fast, per = two_way_identification(gt, rec, return_per_item=True)
    assert fast == pytest.approx(loop_two_way(gt, rec), abs=1e-12)
    assert per.shape == (30,) and 0.5 < fast < 1.0
    assert two_way_identification(gt, gt) == 1.0
    # reversed order of reconstructions: far below chance for structured data
    assert two_way_identification(gt, rec[::-1]) < 0.7
    # random features hover around chance
    assert abs(two_way_identification(rng.normal(size=(200, 50)), rng.normal(size=(200, 50))) - 0.5) < 0.05


def test_two_way_is_strict_and_asymmetric_in_roles():
    gt = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    rec = gt.copy()
    # the two identical ground truths tie (r = r_jj): ties do not count as wins
    assert two_way_identification(gt, rec) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    r = pearson_matrix(gt, rec[[2, 0, 1]])
    assert r.shape == (3, 3)
    with pytest.raises(ValueError):
        two_way_identification(gt[:1], rec[:1])


def test_retrieval_top1():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 8))
    assert retrieval_top1(a, a) == (1.0, 1.0)
    i2t, t2i = retrieval_top1(a, rng.normal(size=(50, 8)))
    assert i2t < 0.2 and t2i < 0.2


def test_paired_pearson_matches_corrcoef():
    rng = np.random.default_rng(2)
    gt = rng.random((6, 8, 8, 3))
    rec = gt + rng.normal(scale=0.3, size=gt.shape)
    expected = np.mean([np.corrcoef(g.ravel(), r.ravel())[0, 1] for g, r in zip(gt, rec)])
    assert paired_pearson(gt, rec) == pytest.approx(expected, abs=1e-12)
    assert paired_pearson(gt, gt) == pytest.approx(1.0)


def test_one_implementation_of_each_helper():
    """savefig, PixCorr, SSIM and the derangement each live in one place; the other modules re-export them."""
    import ast
    from pathlib import Path

    pkg = Path(__file__).resolve().parents[1] / "neurorecon"
    defined = {}
    for f in pkg.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef) and node.col_offset == 0:
                defined.setdefault(node.name, []).append(str(f.relative_to(pkg)))
    assert defined["savefig"] == ["plotting.py"]
    assert defined["pixcorr"] == ["evaluation/lowlevel.py"] and "pixcorr_425" not in defined
    assert defined["derangement"] == ["metrics.py"]
    assert sorted(defined["ssim"]) == ["evaluation/lowlevel.py", "foundation/evaluate.py"]  # the latter calls it


def test_derangement_is_the_same_everywhere_and_refuses_n_below_2():
    from neurorecon.evaluation.reconstruction import derangement as d_eval
    from neurorecon.metrics import derangement
    from neurorecon.neuropictor.evaluate import derangement as d_np
    from neurorecon.nv2l.evaluate import derangement as d_nv

    assert d_eval is derangement and d_np is derangement and d_nv is derangement
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, 0)
