"""Reconstruction metrics NeuroPictor's stages report (MindEye protocol, see docs/evaluation_protocol.md), built on the
shared :mod:`neurorecon.metrics`."""

import torch

from ..evaluation.lowlevel import pixcorr
from ..metrics import two_way_identification

__all__ = ["clip_two_way", "image_metrics"]


def clip_two_way(fm, gt_images, rec_images):
    """Two-way identification on the foundation's CLIP image embeddings (the demo CLIP metric)."""
    return two_way_identification(fm.image_embeds(gt_images), fm.image_embeds(rec_images))


def image_metrics(fm, gt_images, rec_images):
    """``{"two_way_clip": ..., "pixcorr": ...}`` for float (n, 3, H, W) images in [0, 1] (each side is resized
    by the metric itself: to the CLIP input, or to 425 px for the protocol's PixCorr)."""
    gt = torch.as_tensor(gt_images).float()
    rec = torch.as_tensor(rec_images).float()
    return {"two_way_clip": clip_two_way(fm, gt, rec), "pixcorr": pixcorr(gt, rec)}
