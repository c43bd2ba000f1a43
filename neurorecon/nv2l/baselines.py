"""The nearest-neighbour caption baseline: ridge regression from fMRI to the CLIP image embedding, then the caption
of the training image whose CLIP embedding is nearest (cosine)."""

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["RidgeMap", "fit_ridge", "nearest_captions"]


class RidgeMap:
    """A fitted linear map ``y = (x - x_mean) / x_std @ W + y_mean``."""

    def __init__(self, W, x_mean, x_std, y_mean, alpha):
        self.W, self.x_mean, self.x_std, self.y_mean, self.alpha = W, x_mean, x_std, y_mean, alpha

    def predict(self, x):
        x = (np.asarray(x, dtype=np.float64) - self.x_mean) / self.x_std
        return (x @ self.W + self.y_mean).astype(np.float32)


class _Gram:
    """Gram matrix of a standardised design: ridge solutions for several penalties by Cholesky solves (primal
    ``X'X`` when samples outnumber features, dual ``XX'`` otherwise). Runs in torch (float64) so it follows
    ``torch.set_num_threads``."""

    def __init__(self, x, y):
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
        y = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float64))
        self.primal = self.x.shape[0] >= self.x.shape[1]
        self.gram = self.x.T @ self.x if self.primal else self.x @ self.x.T
        self.rhs = self.x.T @ y if self.primal else y

    def weights(self, alpha):
        eye = torch.eye(len(self.gram), dtype=self.gram.dtype)
        chol = torch.linalg.cholesky(self.gram + alpha * eye)
        coef = torch.cholesky_solve(self.rhs, chol)
        return (coef if self.primal else self.x.T @ coef).numpy()


def fit_ridge(x, y, alphas=(1e1, 1e2, 1e3, 1e4, 1e5), groups=None, val_fraction=0.2, seed=0):
    """Ridge regression with the penalty chosen on a held-out split (by group, e.g. image id, so repetitions of
    one image never straddle the split), then refit on everything. Features and targets are centred, features
    scaled to unit variance.

    Parameters
    ----------
    x : ndarray (n, V)
    y : ndarray (n, E)
    alphas : sequence of float
    groups : ndarray (n,), optional
        Samples of one group go to the same side of the validation split.
    val_fraction : float
    seed : int

    Returns
    -------
    RidgeMap
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    groups = np.arange(len(x)) if groups is None else np.asarray(groups)
    uniq = np.unique(groups)
    val_groups = np.random.default_rng(seed).choice(uniq, max(1, int(len(uniq) * val_fraction)), replace=False)
    val = np.isin(groups, val_groups)
    xm, xs, ym = x[~val].mean(0), x[~val].std(0) + 1e-6, y[~val].mean(0)
    gram = _Gram((x[~val] - xm) / xs, y[~val] - ym)
    xv = (x[val] - xm) / xs
    scores = [float(np.mean(np.sum(_unit(xv @ gram.weights(a) + ym) * _unit(y[val]), 1))) for a in alphas]
    best_alpha = alphas[int(np.argmax(scores))]
    xm, xs, ym = x.mean(0), x.std(0) + 1e-6, y.mean(0)
    W = _Gram((x - xm) / xs, y - ym).weights(best_alpha)
    return RidgeMap(W, xm, xs, ym, best_alpha)


def _unit(a):
    return a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)


def nearest_captions(pred_embeds, bank_embeds, bank_captions):
    """For each predicted embedding, the caption of the nearest bank image (cosine similarity)."""
    sim = F.normalize(torch.as_tensor(np.asarray(pred_embeds)).float(), dim=-1) @ \
        F.normalize(torch.as_tensor(np.asarray(bank_embeds)).float(), dim=-1).T
    return [bank_captions[i] for i in sim.argmax(1).tolist()]
