"""MindEye retrieval: top-1 accuracy between brain-predicted and image embeddings among random test subsets.

MindEye (``utils.seed_everything(42)`` then, 30 times, ``np.random.choice(n, 300, replace=False)``): cosine
similarity of L2-normalised embeddings within each draw, top-1 accuracy in both directions ("forward"
brain → image: for each brain embedding, is its own image the most similar; "backward" image → brain), then the
mean over draws and a normal 95% interval ``mean ± 1.96 · sd / sqrt(draws)`` (``scipy.stats.norm.interval``).
Draws come from a legacy ``numpy.random.RandomState(seed)``, the generator ``np.random.seed`` seeds. Chance is
1 / subset size.
"""

import dataclasses

import numpy as np
import torch

__all__ = ["RetrievalResult", "retrieval_draws", "mindeye_retrieval"]


@dataclasses.dataclass
class RetrievalResult:
    """Forward (brain → image) and backward (image → brain) top-1 accuracy over draws.

    Attributes
    ----------
    forward, backward : float
        Means over draws (fractions).
    forward_ci, backward_ci : (float, float)
        95% intervals of the means.
    forward_draws, backward_draws : ndarray (draws,)
    subset_size, n_draws, n_available : int
    note : str
        How the protocol was applied (e.g. every sample used because fewer than 300 exist).
    """

    forward: float
    backward: float
    forward_ci: tuple
    backward_ci: tuple
    forward_draws: np.ndarray
    backward_draws: np.ndarray
    subset_size: int
    n_draws: int
    n_available: int
    note: str

    @property
    def chance(self):
        return 1.0 / self.subset_size


def _unit(x):
    x = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    x = x.reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def retrieval_draws(n, size=300, draws=30, seed=42):
    """The index subsets of the protocol: ``draws`` arrays of ``min(size, n)`` indices without replacement.

    With ``n <= size`` every draw would be all samples: one draw of ``arange(n)`` is returned instead.
    """
    if n <= size:
        return [np.arange(n)]
    rng = np.random.RandomState(seed)
    return [rng.choice(np.arange(n), size=size, replace=False) for _ in range(draws)]


def _ci(values):
    m = float(np.mean(values))
    if len(values) < 2:
        return (m, m)
    half = 1.959963984540054 * float(np.std(values)) / np.sqrt(len(values))
    return (m - half, m + half)


def mindeye_retrieval(brain_embeds, image_embeds, size=300, draws=30, seed=42):
    """Top-1 retrieval in both directions, MindEye's protocol.

    Parameters
    ----------
    brain_embeds, image_embeds : array or Tensor (n, ...)
        Paired embeddings (row i of each belongs to test image i), flattened per row and L2-normalised here.
    size, draws, seed : int
        Subset size, number of draws, legacy numpy seed.

    Returns
    -------
    RetrievalResult
    """
    b, m = _unit(brain_embeds), _unit(image_embeds)
    if len(b) != len(m) or len(b) < 2:
        raise ValueError(f"retrieval needs >= 2 paired embeddings, got {len(b)} brain and {len(m)} image rows")
    subsets = retrieval_draws(len(b), size, draws, seed)
    fwd, bwd = [], []
    for idx in subsets:
        sim = b[idx] @ m[idx].T  # sim[k, l] = cos(brain_k, image_l)
        labels = np.arange(len(idx))
        fwd.append(float((sim.argmax(1) == labels).mean()))
        bwd.append(float((sim.T.argmax(1) == labels).mean()))
    fwd, bwd = np.array(fwd), np.array(bwd)
    if len(b) <= size:
        note = (f"fewer than {size} test samples: one draw of all {len(b)} (chance 1/{len(b)}), no interval")
    else:
        note = f"{draws} draws of {size} of {len(b)} test samples (seed {seed}), chance 1/{size}"
    return RetrievalResult(float(fwd.mean()), float(bwd.mean()), _ci(fwd), _ci(bwd), fwd, bwd,
                           int(min(size, len(b))), len(subsets), len(b), note)
