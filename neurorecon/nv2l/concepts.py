"""Concept localisation: GradCAM on ViT3D tokens against a concept's CLIP text embedding, and its ablation check.

The *evidence* for a concept is the cosine similarity between the ViT3D's predicted CLIP image embedding and
the CLIP text embedding of the concept (``fm.text_embeds([prompt])``). GradCAM takes the tokens entering the last
transformer block (the penultimate layer's output), weights each channel by the gradient of the evidence averaged
over patch tokens, sums over channels and keeps the positive part: one value per 3-D cube, which every voxel of
the cube inherits.

The ablation check zeroes (in z-scored units, i.e. sets to the training mean) the voxels with the largest map
values and, for comparison, the same number of random voxels; located voxels should remove more evidence.
"""

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..devices import to_module

__all__ = ["concept_evidence", "gradcam", "voxel_map", "ablate", "ablation_check", "volume_from_voxels"]


def concept_evidence(model, voxels, text_embeds):
    """Cosine(predicted CLIP embedding, text embedding) per row (differentiable)."""
    pred = model.unstandardise(model(to_module(voxels, model)))["clip"]
    return F.cosine_similarity(pred, text_embeds.to(pred.device, pred.dtype), dim=-1)


def gradcam(model, voxels, text_embeds):
    """GradCAM maps over the kept patches.

    Parameters
    ----------
    model : ViT3D
    voxels : Tensor (b, V)
        Raw (unnormalised) voxel rows.
    text_embeds : Tensor (b, E) or (1, E)

    Returns
    -------
    Tensor (b, n_patches), non-negative
    """
    model.eval()
    x = to_module(voxels, model)  # on the model's device and in its dtype, wherever the voxels came from
    depth = len(model.blocks)
    with torch.enable_grad():
        h = model.run_blocks(model.embed(x), 0, depth - 1).detach().requires_grad_(True)
        out = model.unstandardise(model.heads(model.run_blocks(h, depth - 1)))["clip"]
        score = F.cosine_similarity(out, text_embeds.to(out.device, out.dtype).expand_as(out), dim=-1).sum()
        (grad,) = torch.autograd.grad(score, h)
    weights = grad[:, 1:].mean(1, keepdim=True)
    return torch.relu((weights * h[:, 1:]).sum(-1)).detach()


def voxel_map(model, cam):
    """Per-patch maps (b, n_patches) → per-voxel maps (b, V)."""
    return cam[:, torch.as_tensor(model.grid.voxel_patch, device=cam.device)]


def ablate(model, voxels, mask):
    """Set voxels where ``mask`` (b, V) is true to their training mean (zero after z-scoring)."""
    x = to_module(voxels, model)
    return torch.where(mask.to(x.device), model.voxel_mean.to(x.dtype).expand_as(x), x)


def _top_mask(maps, k, rng):
    # ties (all voxels of a cube share a value) are broken at random
    jitter = torch.from_numpy(rng.random(maps.shape)).to(maps.device, maps.dtype) * 1e-9 * (maps.abs().max() + 1)
    idx = torch.topk(maps + jitter, k, dim=1).indices
    mask = torch.zeros_like(maps, dtype=torch.bool)
    mask.scatter_(1, idx, True)
    return mask


@torch.no_grad()
def ablation_check(model, voxels, text_embeds, fraction=0.1, n_random=5, seed=0):
    """Evidence before and after removing the located vs random voxels.

    Parameters
    ----------
    model : ViT3D
    voxels : Tensor (b, V)
        One fMRI row per (image, concept) case.
    text_embeds : Tensor (b, E)
        The concept of each case.
    fraction : float
        Share of the union voxels removed.
    n_random : int
        Random draws averaged for the control.

    Returns
    -------
    pandas.DataFrame
        Per case: ``evidence``, ``evidence_located``, ``evidence_random``, ``drop_located``, ``drop_random``.
    """
    rng = np.random.default_rng(seed)
    x = to_module(voxels, model)
    V = x.shape[1]
    k = max(1, int(round(fraction * V)))
    maps = voxel_map(model, gradcam(model, x, text_embeds))
    base = concept_evidence(model, x, text_embeds)
    located = concept_evidence(model, ablate(model, x, _top_mask(maps, k, rng)), text_embeds)
    rand = []
    for _ in range(n_random):
        mask = torch.zeros_like(maps, dtype=torch.bool)
        for r in range(len(mask)):
            mask[r, torch.from_numpy(rng.choice(V, k, replace=False)).to(mask.device)] = True
        rand.append(concept_evidence(model, ablate(model, x, mask), text_embeds))
    base, located, rand = (v.float().cpu() for v in (base, located, torch.stack(rand).mean(0)))
    return pd.DataFrame(dict(evidence=base.numpy(), evidence_located=located.numpy(), evidence_random=rand.numpy(),
                             drop_located=(base - located).numpy(), drop_random=(base - rand).numpy()))


def volume_from_voxels(values, grid_shape, union_ijk):
    """Per-voxel values (V,) → a dense (X, Y, Z) volume, NaN outside the union mask."""
    vol = np.full(tuple(grid_shape), np.nan, dtype=np.float32)
    ijk = np.asarray(union_ijk)
    vol[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = np.asarray(values, dtype=np.float32)
    return vol
