"""Training data, targets, training (MixUp, ``neurorecon.training.fit``) and evaluation of the ViT3D encoder."""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..errors import DataError
from ..training import ArrayBatches, fit
from .vit3d import ViT3D

__all__ = ["TrialSet", "training_trials", "compute_targets", "streaming_moments", "image_means", "build_vit3d",
           "vit3d_loss", "train_vit3d", "retrieval_top1", "latent_correlation", "evaluate_vit3d", "test_voxels"]


@dataclass
class TrialSet:
    """Single training trials of several subjects on the common grid.

    Attributes
    ----------
    voxels : ndarray (N, V) float16
    image_ids, subjects : ndarray (N,)
    partners : ndarray (N, R) int64
        Trials showing the same image to the same subject (other repetitions first; padded with the trial itself).
    n_partners : ndarray (N,)
        Valid entries of ``partners`` (the other repetitions, or 1 = the trial itself if it has none).
    """

    voxels: np.ndarray
    image_ids: np.ndarray
    subjects: np.ndarray
    partners: np.ndarray
    n_partners: np.ndarray

    def __len__(self):
        return len(self.image_ids)

    def trials_of(self, image_ids):
        """For each image id, the rows of its trials (any subject) as a padded (n, R) array and counts."""
        order = np.argsort(self.image_ids, kind="stable")
        sorted_ids = self.image_ids[order]
        lo = np.searchsorted(sorted_ids, image_ids, "left")
        hi = np.searchsorted(sorted_ids, image_ids, "right")
        counts = hi - lo
        if (counts == 0).any():
            raise ValueError(f"no training trial for image ids {np.asarray(image_ids)[counts == 0][:5]}")
        rows = np.zeros((len(image_ids), counts.max()), dtype=np.int64)
        for i, (a, b) in enumerate(zip(lo, hi)):
            rows[i, : b - a] = order[a:b]
            rows[i, b - a:] = order[a]
        return rows, counts


def training_trials(store, subjects):
    """Every training trial of ``subjects`` (``train_common``), with MixUp partners."""
    arrays, ids, subs = [], [], []
    for s in subjects:
        sub = store.subject(s)
        if sub.train_common is None:
            raise DataError(sub.folder / "train_common.npy", "volumes on subject 1's grid (NV2L input)",
                            "no such file; re-run notebook 01 with volume data")
        arrays.append(sub.train_common)  # memory-mapped until copied into place below
        ids.append(np.asarray(sub.train_image_ids, dtype=np.int64))
        subs.append(np.full(len(ids[-1]), int(s), dtype=np.int64))
    # one float16 array filled subject by subject: a list of per-subject copies joined by np.concatenate held
    # every trial twice (about 10 GB per process for NV2L's four real-NSD subjects)
    voxels = np.empty((sum(len(a) for a in arrays), arrays[0].shape[1]), dtype=np.float16)
    start = 0
    for a in arrays:
        voxels[start:start + len(a)] = a
        start += len(a)
    image_ids, subjects_ = np.concatenate(ids), np.concatenate(subs)
    key = subjects_ * (10 ** 9) + image_ids
    order = np.argsort(key, kind="stable")
    uniq, start, counts = np.unique(key[order], return_index=True, return_counts=True)
    R = int(max(1, counts.max() - 1))
    partners = np.zeros((len(key), R), dtype=np.int64)
    n_partners = np.ones(len(key), dtype=np.int64)
    for a, c in zip(start, counts):
        group = order[a:a + c]
        for t in group:
            others = group[group != t]
            if len(others) == 0:
                partners[t] = t
                continue
            partners[t, :len(others)] = others
            partners[t, len(others):] = others[0]
            n_partners[t] = len(others)
    return TrialSet(voxels, image_ids, subjects_, partners, n_partners)


@torch.no_grad()
def compute_targets(fm, store, image_ids, batch_size=64, accelerator=None):
    """Raw (unnormalised) projected CLIP image embeddings and VAE latents of store images (NV2L's targets; the
    raw embedding is what Stable unCLIP is conditioned on).

    ``batch_size`` images go through the CLIP and the VAE at a time (the VAE at 512 px needs about 0.3 GB of
    activations per image). With several processes each rank encodes its :func:`~neurorecon.distributed.shard`
    of the images and every rank receives all of them, in order (what one process computes).

    Returns
    -------
    dict
        ``ids`` (n,), ``clip`` (n, E) float32, ``latent`` (n, C, h, w) float32.
    """
    from ..distributed import gather, shard

    clips, lats = [], []
    image_ids = np.asarray(image_ids)
    mine = image_ids[shard(len(image_ids), accelerator)]
    for a in range(0, len(mine), batch_size):
        images = store.get_images(mine[a:a + batch_size])
        clips.append(fm.image_embeds(images, normalize=False).float().cpu())
        lats.append(fm.encode_images(images).float().cpu())
    clip, lat = ((torch.cat(x) if x else torch.zeros((0,))) for x in (clips, lats))
    return {"ids": image_ids, "clip": gather(clip, accelerator).numpy(), "latent": gather(lat, accelerator).numpy()}


def _target_rows(targets, image_ids):
    rows = np.searchsorted(targets["ids"], image_ids)
    rows = np.minimum(rows, len(targets["ids"]) - 1)
    if not np.array_equal(targets["ids"][rows], image_ids):
        raise ValueError("targets do not cover every image id")
    return rows


def streaming_moments(x, chunk=4096):
    """Per-column mean and (population) standard deviation of a large (N, V) array in float32, a chunk of rows at
    a time (Chan et al.'s pairwise update of mean and sum of squared deviations): no float32/float64 copy of the
    whole array (the training trials of NSD are ~10^5 x 10^5 numbers).

    Returns
    -------
    mean, std : ndarray (V,) float32
    """
    n = 0
    mean = np.zeros(x.shape[1], dtype=np.float32)
    m2 = np.zeros(x.shape[1], dtype=np.float32)
    for a in range(0, len(x), chunk):
        b = np.asarray(x[a:a + chunk], dtype=np.float32)
        nb = len(b)
        mb = b.mean(0, dtype=np.float32)
        m2b = ((b - mb) ** 2).sum(0, dtype=np.float32)
        delta = mb - mean
        tot = n + nb
        mean += delta * (nb / tot)
        m2 += m2b + delta ** 2 * (n * nb / tot)
        n = tot
    if n == 0:
        raise ValueError("streaming_moments needs at least one row")
    return mean, np.sqrt(m2 / n)


def image_means(voxels, keys, chunk=4096):
    """Rows of ``voxels`` averaged per key (e.g. subject x image), accumulated in float32 a chunk at a time.

    Returns
    -------
    means : ndarray (n_keys, V) float32
    uniq : ndarray (n_keys,) the sorted keys
    """
    uniq, inverse = np.unique(np.asarray(keys), return_inverse=True)
    sums = torch.zeros(len(uniq), voxels.shape[1], dtype=torch.float32)
    inv = torch.from_numpy(inverse.reshape(-1))
    for a in range(0, len(voxels), chunk):
        sums.index_add_(0, inv[a:a + chunk], torch.from_numpy(np.asarray(voxels[a:a + chunk], dtype=np.float32)))
    counts = torch.from_numpy(np.bincount(inverse.reshape(-1), minlength=len(uniq))).float()[:, None]
    return (sums / counts).numpy(), uniq


def build_vit3d(store, targets, train_rows, trials, patch_size, width, depth, heads, mlp_ratio, head_hidden,
                dropout=0.0, seed=0):
    """A ViT3D for a store's grid with voxel and target standardisation from the training data."""
    torch.manual_seed(seed)
    grid = store.common_grid
    model = ViT3D(grid["shape"], grid["union_ijk"], patch_size=patch_size, width=width, depth=depth, heads=heads,
                  mlp_ratio=mlp_ratio, head_hidden=head_hidden, clip_dim=targets["clip"].shape[1],
                  latent_shape=targets["latent"].shape[1:], dropout=dropout)
    clip, lat = targets["clip"][train_rows], targets["latent"][train_rows].reshape(len(train_rows), -1)
    model.set_normalisation(voxel=streaming_moments(trials.voxels), clip=(clip.mean(0), clip.std(0)),
                            latent=(lat.mean(0), lat.std(0)))
    return model


def vit3d_loss(voxels, clip_z, latent_z, alpha, mixup=True):
    """``loss_fn`` for :func:`neurorecon.training.fit`: MSE(CLIP) + alpha * MSE(VAE), with MixUp.

    MixUp mixes each trial with another repetition of the same image by the same subject (lambda ~ U(0, 1)),
    keeping the image's targets.

    Parameters
    ----------
    voxels : Tensor (N, V)
        All training trials (raw units; float16 is fine).
    clip_z, latent_z : Tensor (n_images, E), (n_images, L)
        Standardised targets.
    alpha : float
    mixup : bool
    """

    cache = {}

    def on(device):
        if device not in cache:
            cache[device] = (clip_z.to(device), latent_z.to(device))
        return cache[device]

    def loss_fn(model, batch, gen):
        device = batch["row"].device
        rows = batch["row"].cpu()
        x = voxels[rows].float()
        if mixup:
            partners, n = batch["partners"].cpu(), batch["n_partners"].cpu()
            pick = (torch.rand(len(rows), generator=gen) * n).long().clamp(max=partners.shape[1] - 1)
            other = voxels[partners[torch.arange(len(rows)), pick]].float()
            lam = torch.rand(len(rows), 1, generator=gen)
            x = lam * x + (1 - lam) * other
        out = model(x.to(device))
        clip_t, lat_t = on(device)
        t = batch["target"]
        return F.mse_loss(out["clip"], clip_t[t]) + alpha * F.mse_loss(out["latent"], lat_t[t])

    return loss_fn


def train_vit3d(model, trials, targets, *, steps, batch_size, lr, alpha, mixup=True, weight_decay=0.05, seed=0,
                ckpt_dir=None, ckpt_every=0, mixed_precision="no", progress=True, grad_accum=1, accelerator=None):
    """Train the ViT3D on every trial with :func:`neurorecon.training.fit` (on ``accelerator``'s processes, if
    given); returns its ``TrainResult``."""
    rows = _target_rows(targets, trials.image_ids)
    clip = torch.from_numpy(targets["clip"]).float()
    lat = torch.from_numpy(targets["latent"].reshape(len(targets["ids"]), -1)).float()
    clip_z = (clip - model.clip_mean) / model.clip_std
    lat_z = (lat - model.latent_mean) / model.latent_std
    data = ArrayBatches(row=np.arange(len(trials)), partners=trials.partners, n_partners=trials.n_partners,
                        target=rows)
    loss_fn = vit3d_loss(torch.from_numpy(trials.voxels), clip_z, lat_z, alpha, mixup)
    return fit(model, loss_fn, data, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
               seed=seed, ckpt_dir=ckpt_dir, ckpt_every=ckpt_every, mixed_precision=mixed_precision,
               desc="ViT3D", progress=progress, log_every=max(1, steps // 100), grad_accum=grad_accum,
               accelerator=accelerator)


def retrieval_top1(pred, true):
    """Top-1 identification among all rows by cosine similarity: (brain→image, image→brain) accuracies."""
    sim = F.normalize(torch.as_tensor(pred).float(), dim=-1) @ F.normalize(torch.as_tensor(true).float(), dim=-1).T
    idx = torch.arange(len(sim))
    return float((sim.argmax(1) == idx).float().mean()), float((sim.argmax(0) == idx).float().mean())


def latent_correlation(pred, true):
    """Mean over images of the Pearson correlation between predicted and true latents (flattened)."""
    p = torch.as_tensor(pred).float().flatten(1)
    t = torch.as_tensor(true).float().flatten(1)
    p, t = p - p.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    r = (p * t).sum(1) / (p.norm(dim=1) * t.norm(dim=1)).clamp(min=1e-12)
    return float(r.mean())


def test_voxels(store, subject):
    """Repetition-averaged test volumes of a subject on the common grid, and their image ids."""
    sub = store.subject(subject)
    if sub.test_common is None:
        raise DataError(sub.folder / "test_trial_common.npy", "test volumes on subject 1's grid", "no such file")
    return np.asarray(sub.test_common, dtype=np.float32), np.asarray(sub.test_image_ids)


def evaluate_vit3d(model, store, subjects, targets):
    """Held-out retrieval and latent correlation per subject (test images, repetition-averaged fMRI).

    Returns
    -------
    pandas.DataFrame
        One row per subject: ``n_test``, ``top1_brain2image``, ``top1_image2brain``, ``chance``, ``clip_cosine``,
        ``latent_r``.
    """
    rows = []
    for s in subjects:
        x, ids = test_voxels(store, s)
        pred = model.predict(x)
        r = _target_rows(targets, ids)
        true_clip, true_lat = targets["clip"][r], targets["latent"][r]
        b2i, i2b = retrieval_top1(pred["clip"], true_clip)
        cos = float(F.cosine_similarity(pred["clip"], torch.from_numpy(true_clip), dim=-1).mean())
        rows.append(dict(subject=int(s), n_test=len(ids), top1_brain2image=b2i, top1_image2brain=i2b,
                         chance=1.0 / len(ids), clip_cosine=cos, latent_r=latent_correlation(pred["latent"], true_lat)))
    return pd.DataFrame(rows)
