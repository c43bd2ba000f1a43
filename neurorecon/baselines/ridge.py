"""A ridge baseline in the style of Takagi & Nishimoto (CVPR 2023): linear maps from fMRI to the latent diffusion
model's image latent ``z`` and text conditioning ``c``, then images from the same diffusion model.

Recipe (every step through the :class:`~neurorecon.foundation.interface.Foundation` interface)
-----------------------------------------------------------------------------------------------
1. Targets of each training image: ``z = fm.encode_images(image)`` (the VAE posterior mean, scaled) and
   ``c = mean over the image's captions of fm.text_tokens(caption)`` (Takagi & Nishimoto average the text
   conditioning of an image's COCO captions).
2. Inputs: ``PreparedSubject.train_betas``, either averaged over an image's repetitions (``average=True``, one
   sample per training image, the default, as in Takagi & Nishimoto) or single trials (``average=False``, each
   trial a sample with its image's targets). Voxels: ``z`` from the early visual stream, ``c`` from the ventral
   stream (Takagi & Nishimoto: early / higher ventral visual cortex) when the store has those ROIs, otherwise all
   nsdgeneral voxels (``latent_rois=None``/``text_rois=None`` force all).
3. Ridge (:func:`fit_ridge`): inputs standardised with the training mean and std, outputs centred, closed form
   through the SVD of the design; the penalty ``alpha`` is chosen by K-fold cross-validation *on the training
   data only* (folds grouped by image so repetitions of one image never straddle a fold; score: held-out
   variance explained over all outputs), then the map is refit on all training samples.
4. Images: ``fm.sample(context=ĉ, init_latents=ẑ, strength=s, scheduler="ddim")``: the predicted latent is
   noised to ``strength`` of the DDIM schedule (img2img) and denoised with the foundation UNet conditioned on the
   predicted tokens, with classifier-free guidance against the empty prompt's tokens (``fm.empty_tokens``).

Memory: the closed form holds the SVD of the (samples × voxels) design and the (rank × outputs) coefficients in
float64; with real NSD (about 9,000 averaged samples, 15,724 voxels, SD's 4×64×64 latent and 77×1024 tokens) the
text map alone needs ~6 GB, so fit it on a machine with the memory for it (or restrict ``text_rois``).

Divergences: Takagi & Nishimoto use SD v1.4 and himalaya's ridge with per-target alphas; here one alpha per map,
chosen from a grid, and whatever diffusion model the foundation stage provides (the demo one on NSD-mini,
SD 2.1 in full).
"""

import dataclasses
from typing import Optional

import numpy as np
import torch

from ..data.store import average_by_image

__all__ = ["ALPHAS", "Ridge", "fit_ridge", "training_samples", "image_targets", "roi_columns", "RidgeReconstructor",
           "fit_ridge_reconstructor", "fit_subject_ridge"]

#: Default penalty grid (standardised inputs: alpha is on the scale of the number of samples × voxels' variance).
ALPHAS = tuple(10.0 ** k for k in range(-1, 7))


@dataclasses.dataclass
class Ridge:
    """A fitted ridge map ``y = ((x - x_mean) / x_std) @ W + y_mean`` with ``W = basis @ coef``.

    Attributes
    ----------
    x_mean, x_std : ndarray (V,)
    y_mean : ndarray (D,)
    basis : ndarray (V, r) or None
        Right singular vectors of the standardised design (None when ``coef`` is the full ``W``).
    coef : ndarray (r, D) or (V, D)
    alpha : float
        The chosen penalty.
    cv_scores : dict
        alpha → mean held-out variance explained across folds.
    """

    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: np.ndarray
    basis: Optional[np.ndarray]
    coef: np.ndarray
    alpha: float
    cv_scores: dict

    def predict(self, x):
        """Predictions (n, D) float32 for inputs (n, V)."""
        z = (np.asarray(x, dtype=np.float64) - self.x_mean) / self.x_std
        if self.basis is not None:
            z = z @ self.basis
        return (z @ self.coef + self.y_mean).astype(np.float32)

    @property
    def weights(self):
        """The (V, D) map on standardised inputs."""
        return self.coef if self.basis is None else self.basis @ self.coef


def _standardise(ref):
    m = ref.mean(0)
    s = ref.std(0)
    s = np.where(s > 1e-8, s, 1.0)
    return m, s


def _svd_solution(xs, yc):
    u, s, vt = np.linalg.svd(xs, full_matrices=False)
    return u, s, vt, u.T @ yc


def _variance_explained(pred, y):
    return 1.0 - float(((y - pred) ** 2).sum()) / max(float(((y - y.mean(0)) ** 2).sum()), 1e-12)


def _folds(groups, n_folds, seed):
    uniq = np.unique(groups)
    k = int(min(n_folds, len(uniq)))
    if k < 2:
        raise ValueError(f"cross-validation needs >= 2 distinct groups (images), got {len(uniq)}")
    perm = np.random.default_rng(seed).permutation(uniq)
    return [np.isin(groups, part) for part in np.array_split(perm, k)]


def fit_ridge(x, y, alphas=ALPHAS, n_folds=5, groups=None, seed=0):
    """Closed-form ridge with alpha chosen by grouped K-fold cross-validation on (x, y), then refit on all.

    Parameters
    ----------
    x : array (n, V)
        Inputs (standardised here with the training statistics of each fit).
    y : array (n, D)
        Targets (centred here).
    alphas : sequence of float
    n_folds : int
    groups : array (n,), optional
        Samples of one group (e.g. image id) stay in the same fold (default: every sample its own group).
    seed : int
        Fold assignment.

    Returns
    -------
    Ridge
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(len(x), -1)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} input rows but {len(y)} target rows")
    groups = np.arange(len(x)) if groups is None else np.asarray(groups)
    alphas = [float(a) for a in alphas]
    scores = {a: [] for a in alphas}
    if len(alphas) > 1:
        for held in _folds(groups, n_folds, seed):
            xm, xsd = _standardise(x[~held])
            ym = y[~held].mean(0)
            u, s, vt, uty = _svd_solution((x[~held] - xm) / xsd, y[~held] - ym)
            xv = ((x[held] - xm) / xsd) @ vt.T
            for a in alphas:
                pred = xv @ ((s / (s ** 2 + a))[:, None] * uty) + ym
                scores[a].append(_variance_explained(pred, y[held]))
    cv = {a: float(np.mean(v)) for a, v in scores.items() if v}
    best = max(cv, key=cv.get) if cv else alphas[0]
    xm, xsd = _standardise(x)
    ym = y.mean(0)
    u, s, vt, uty = _svd_solution((x - xm) / xsd, y - ym)
    coef = (s / (s ** 2 + best))[:, None] * uty
    basis = vt.T
    n_vox, rank, n_out = x.shape[1], len(s), y.shape[1]
    if n_vox * n_out <= rank * (n_vox + n_out):  # the full map is smaller than its factors
        coef, basis = basis @ coef, None
    return Ridge(xm, xsd, ym, basis, coef, best, cv)


def training_samples(betas, image_ids, average=True):
    """Ridge inputs from training trials.

    Parameters
    ----------
    betas : array (trials, V)
    image_ids : array (trials,)
    average : bool
        True: one sample per image, the mean of its repetitions (ids sorted); False: every trial.

    Returns
    -------
    x : ndarray (n, V) float32
    ids : ndarray (n,)
        The image of each sample.
    """
    betas = np.asarray(betas, dtype=np.float32)
    image_ids = np.asarray(image_ids)
    if average:
        ids, x = average_by_image(betas, image_ids)
        return x, ids
    return betas, image_ids


@torch.no_grad()
def image_targets(fm, images, captions, batch_size=64, text_batch=256):
    """Targets of each image: the VAE latent (n, C, h, w) and the mean of its captions' text tokens (n, L, D).

    Parameters
    ----------
    fm : Foundation
    images : uint8 (n, H, W, 3)
    captions : list of list of str
        Captions of each image.
    batch_size : int
        Images through the VAE at a time.
    text_batch : int
        Captions through the text tower at a time (its activations are small: the VAE's batch would make it
        run ~3x slower at the full profile's 4).
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} caption lists")
    lat = torch.cat([fm.encode_images(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    flat = [c for caps in captions for c in caps]
    counts = [len(caps) for caps in captions]
    if min(counts) < 1:
        raise ValueError("every image needs at least one caption")
    tok = torch.cat([fm.text_tokens(flat[i:i + text_batch]).float() for i in range(0, len(flat), text_batch)])
    split = torch.split(tok, counts)
    return lat.cpu().numpy(), torch.stack([t.mean(0) for t in split]).cpu().numpy()


def roi_columns(rois, names):
    """Sorted voxel columns of the named ROIs (``streams`` or ``prf-visualrois`` names) of a prepared subject,
    or None if ``names`` is None or any name is absent (then every voxel is used)."""
    if names is None:
        return None
    table = {k: v for group in rois.values() for k, v in group.items()}
    if not all(n in table for n in names):
        return None
    return np.unique(np.concatenate([np.asarray(table[n], dtype=np.int64) for n in names]))


@dataclasses.dataclass
class RidgeReconstructor:
    """fMRI → (latent, text tokens) ridge maps and reconstruction through the foundation diffusion model.

    Attributes
    ----------
    latent_map, text_map : Ridge
    latent_shape : tuple (C, h, w)
    text_shape : tuple (L, D)
    latent_columns, text_columns : ndarray or None
        Voxel columns each map reads (None: all).
    average : bool
        Whether the maps were fit on repetition-averaged betas.
    """

    latent_map: Ridge
    text_map: Ridge
    latent_shape: tuple
    text_shape: tuple
    latent_columns: Optional[np.ndarray] = None
    text_columns: Optional[np.ndarray] = None
    average: bool = True

    @staticmethod
    def _cols(x, cols):
        x = np.asarray(x, dtype=np.float32)
        return x if cols is None else x[:, cols]

    def predict(self, betas):
        """Predicted latents (n, C, h, w) and text tokens (n, L, D) as float32 tensors."""
        z = self.latent_map.predict(self._cols(betas, self.latent_columns)).reshape((-1,) + tuple(self.latent_shape))
        c = self.text_map.predict(self._cols(betas, self.text_columns)).reshape((-1,) + tuple(self.text_shape))
        return torch.from_numpy(z), torch.from_numpy(c)

    @torch.no_grad()
    def reconstruct(self, fm, betas, strength=0.8, num_steps=50, guidance_scale=5.0, seed=0, batch_size=32):
        """Images (n, 3, S, S) in [0, 1]: DDIM img2img from the noised predicted latents, conditioned on the
        predicted tokens, classifier-free guidance against ``fm.empty_tokens``. Deterministic given ``seed``."""
        z, c = self.predict(betas)
        return fm.sample(c.to(fm.device), negative_context=fm.empty_tokens(1), init_latents=z.to(fm.device),
                         strength=float(strength), guidance_scale=float(guidance_scale), num_steps=int(num_steps),
                         scheduler="ddim", seed=int(seed), batch_size=int(batch_size)).cpu()

    def decode_latents(self, fm, betas):
        """The predicted latents decoded directly by the VAE (the low-level stage alone)."""
        z, _ = self.predict(betas)
        return fm.decode_latents(z.to(fm.device)).cpu()


def fit_ridge_reconstructor(fm, betas, image_ids, get_images, get_captions, average=True, alphas=ALPHAS, n_folds=5,
                            seed=0, latent_columns=None, text_columns=None, batch_size=64, text_batch=256):
    """Fit both ridge maps on training data.

    Parameters
    ----------
    fm : Foundation
    betas : array (trials, V)
        Training betas (``PreparedSubject.train_betas``).
    image_ids : array (trials,)
    get_images : callable
        ids → uint8 (n, H, W, 3) (``store.get_images``).
    get_captions : callable
        id → list of str (``lambda i: store.annotations[i]["captions"]``).
    average : bool
        See :func:`training_samples`.
    alphas, n_folds, seed
        See :func:`fit_ridge`.
    latent_columns, text_columns : array of int, optional
        Voxel columns of each map (None: every voxel).
    batch_size : int
        Images through the VAE at a time: at 512 px its activations take ~0.3 GB per image.
    text_batch : int
        Captions through the text tower at a time. Images are read ``max(batch_size, 64)`` at a time (a
        subject's ~9,000 NSD training images are ~5 GB as uint8), so the text tower is not held to the VAE's batch.

    Returns
    -------
    RidgeReconstructor
    """
    x, ids = training_samples(betas, image_ids, average)
    uniq, inverse = np.unique(ids, return_inverse=True)
    read = max(int(batch_size), 64)
    parts = [image_targets(fm, get_images(chunk), [list(get_captions(int(i))) for i in chunk], batch_size, text_batch)
             for chunk in (uniq[a:a + read] for a in range(0, len(uniq), read))]
    lat, tok = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    lat, tok = lat[inverse], tok[inverse]
    pick = RidgeReconstructor._cols
    latent_map = fit_ridge(pick(x, latent_columns), lat.reshape(len(lat), -1), alphas, n_folds, ids, seed)
    text_map = fit_ridge(pick(x, text_columns), tok.reshape(len(tok), -1), alphas, n_folds, ids, seed)
    return RidgeReconstructor(latent_map, text_map, tuple(lat.shape[1:]), tuple(tok.shape[1:]), latent_columns,
                              text_columns, average)


def fit_subject_ridge(fm, store, subject, average=True, latent_rois=("early",), text_rois=("ventral",), **kw):
    """:func:`fit_ridge_reconstructor` on one subject of a prepared store (training trials only).

    ``latent_rois`` / ``text_rois``: stream or pRF ROI names whose voxels feed each map (all voxels if None or
    absent from the store). Other keywords go to :func:`fit_ridge_reconstructor`.
    """
    sub = store.subject(subject)
    return fit_ridge_reconstructor(fm, sub.train_betas, sub.train_image_ids, store.get_images,
                                   lambda i: store.annotations[int(i)]["captions"], average=average,
                                   latent_columns=roi_columns(sub.rois, latent_rois),
                                   text_columns=roi_columns(sub.rois, text_rois), **kw)
