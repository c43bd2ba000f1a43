"""How linear NSD-mini is: what a decoder reaches from the simulator's own, noise-free inputs.

The simulated voxel responses are affine in the scene features ``F`` of :mod:`neurorecon.simulate.brain`
(low-level image features on a coarse grid, colour x position, shape x position, category counts, object count
and background): every noise-free voxel is ``w . F + b`` before noise is added. So a linear decoder of noise-free
voxels can do no better than a linear map from ``F`` itself, and with enough voxels it does exactly as well:
ridge from ``F`` to a target is the *linear ceiling* of the simulation. A nonlinear regressor on the same ``F``
(RBF kernel ridge) bounds from below what a nonlinear decoder could add on top. Both are measured as two-way
identification of the held-out images in the target space, next to ridge from the real (noisy) fMRI, so the
demo's "deep model vs linear decoder" orderings can be read against them (``make seeds``; README).
"""

from pathlib import Path

import h5py
import numpy as np

from ..errors import DataError
from . import brain, scenes
from .core import TRUTH_FILE, _rng
from .truth import load_truth

__all__ = ["scene_features_of", "scene_feature_matrix", "rbf_kernel_ridge", "decoding_ceiling"]


def _truth(nsd_root):
    truth = load_truth(nsd_root)
    if truth is None:
        raise DataError(Path(nsd_root) / TRUTH_FILE, "NSD-mini's simulation record (the decoding ceiling exists only "
                                                    "for simulated data)", "no such file")
    return truth


def scene_features_of(nsd_root, image_ids):
    """The simulator's feature dict (``low``, ``colpos``, ``shapepos``, ``high``) of 0-based image ids of an
    NSD-mini tree: the scenes drawn again from the simulation's seed (the simulator draws each scene first, from
    its own random stream), the low-level features computed from the written stimuli."""
    truth = _truth(nsd_root)
    seed, cfg = int(truth["seed"]), truth["config"]
    if cfg.get("simulated_sessions") or cfg.get("simulated_trials"):
        raise DataError(Path(nsd_root) / TRUTH_FILE, "a fully simulated tree", "a sparse (dry-run) simulation")
    ids = np.asarray(image_ids, dtype=np.int64)
    drawn = [scenes.sample_scene(_rng(seed, 2, int(i))) for i in ids]
    with h5py.File(Path(nsd_root) / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5", "r") as f:
        order = np.argsort(ids)
        brick = np.empty((len(ids), *f["imgBrick"].shape[1:]), np.uint8)
        brick[order] = f["imgBrick"][ids[order]]
    parts = brain.scene_features(drawn)
    parts["low"] = brain.image_features(brick, int(cfg["feature_grid"]))
    return parts


def scene_feature_matrix(nsd_root, image_ids):
    """:func:`scene_features_of` as one (n, d) matrix, standardised over the given images."""
    parts = scene_features_of(nsd_root, image_ids)
    n = len(parts["high"])
    F = np.concatenate([parts[k].reshape(n, -1) for k in ("low", "colpos", "shapepos", "high")], 1)
    sd = F.std(0)
    return ((F - F.mean(0)) / np.where(sd > 0, sd, 1)).astype(np.float32)


def _rbf(a, b, gamma):
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
    return np.exp(-gamma * np.maximum(d2, 0))


def rbf_kernel_ridge(x, y, alphas=(0.1, 1.0, 10.0), gammas=(0.1, 0.3, 1.0), n_folds=5, seed=0):
    """RBF kernel ridge regression with ``alpha`` and ``gamma`` (in units of 1 / n_features) chosen by K-fold
    cross-validation (mean squared error); returns ``predict`` (a function of new rows), ``alpha``, ``gamma``."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d = x.shape[1]
    fold = np.random.default_rng(seed).permutation(len(x)) % n_folds
    best = None
    for g in gammas:
        K = _rbf(x, x, g / d)
        for alpha in alphas:
            err = 0.0
            for k in range(n_folds):
                tr, te = fold != k, fold == k
                mu = y[tr].mean(0)
                coef = np.linalg.solve(K[np.ix_(tr, tr)] + alpha * np.eye(int(tr.sum())), y[tr] - mu)
                err += float(((K[np.ix_(te, tr)] @ coef + mu - y[te]) ** 2).sum())
            if best is None or err < best[0]:
                best = (err, alpha, g)
    _, alpha, g = best
    mu = y.mean(0)
    coef = np.linalg.solve(_rbf(x, x, g / d) + alpha * np.eye(len(x)), y - mu)
    return dict(predict=lambda rows: _rbf(np.asarray(rows, np.float64), x, g / d) @ coef + mu, alpha=float(alpha),
                gamma=float(g / d))


def decoding_ceiling(nsd_root, train_ids, test_ids, train_targets, test_targets, seed=0):
    """Two-way identification of the test images from noise-free scene features: linear and RBF-kernel ridge.

    Parameters
    ----------
    nsd_root : str or Path
        The NSD-mini tree.
    train_ids, test_ids : array of int
        0-based image ids.
    train_targets, test_targets : array (n, D)
        The decoded quantity (e.g. CLIP image embeddings) of those images.
    seed : int
        Cross-validation folds.

    Returns
    -------
    dict
        ``linear`` and ``nonlinear`` two-way identification (chance 0.5), the chosen ``kernel_alpha`` /
        ``kernel_gamma`` and the feature count ``n_features``.
    """
    from ..baselines.ridge import fit_ridge
    from ..metrics import two_way_identification

    F = scene_feature_matrix(nsd_root, np.concatenate([train_ids, test_ids]))
    a, b = F[:len(train_ids)], F[len(train_ids):]
    y, y_test = np.asarray(train_targets, np.float64), np.asarray(test_targets, np.float64)
    linear = fit_ridge(a, y, seed=seed).predict(b)
    kernel = rbf_kernel_ridge(a, y, seed=seed)
    nonlinear = kernel["predict"](b)
    return dict(linear=float(two_way_identification(y_test, linear)),
                nonlinear=float(two_way_identification(y_test, nonlinear)),
                kernel_alpha=kernel["alpha"], kernel_gamma=kernel["gamma"], n_features=int(a.shape[1]))
