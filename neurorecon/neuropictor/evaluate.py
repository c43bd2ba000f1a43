"""Saving, loading and evaluating NeuroPictor models: reconstructions of a subject's test images, their metrics,
the shuffled-fMRI control and the control-scale sweep."""

import dataclasses

import numpy as np
import torch

from ..devices import cast_module
from ..metrics import derangement
from .controlnet import FMRIControlNetModel
from .heads import FMRIConditioner
from .metrics import image_metrics
from .pipeline import NeuroPictorPipeline, make_scheduler, seeded_generators

__all__ = ["SampleSettings", "save_model", "load_pipeline", "pipeline_from_model", "reconstruct", "derangement",
           "evaluate_reconstructions", "control_sweep"]


@dataclasses.dataclass
class SampleSettings:
    """How validation images are sampled (one seed per image: ``seed + index``)."""

    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    control_scale: float = 1.0
    scheduler: str = "ddim"
    seed: int = 42
    batch_size: int = 50


def save_model(model, folder):
    """Write the trainable parts (``conditioner/``, ``controlnet/``) of a NeuroPictorModel."""
    model.conditioner.save_pretrained(folder / "conditioner")
    model.controlnet.save_pretrained(folder / "controlnet")


def pipeline_from_model(fm, conditioner, controlnet, scheduler="ddim"):
    """A :class:`NeuroPictorPipeline` from the foundation's VAE/UNet and trained fMRI parts.

    The trained parts are moved to the foundation's device explicitly (they keep their float32 weights; the
    pipeline feeds every model its inputs in its own dtype)."""
    pipe = NeuroPictorPipeline(vae=fm.vae, unet=fm.unet, controlnet=cast_module(controlnet, fm.device),
                               conditioner=cast_module(conditioner, fm.device),
                               scheduler=make_scheduler(scheduler, fm.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(fm, folder, scheduler="ddim"):
    """The pipeline of a model folder written by :func:`save_model`."""
    return pipeline_from_model(fm, FMRIConditioner.from_pretrained(folder / "conditioner"),
                               FMRIControlNetModel.from_pretrained(folder / "controlnet"), scheduler)


def reconstruct(pipe, maps, settings, control_scale=None):
    """Float images (n, 3, H, W) in [0, 1] from flat maps (n, H, W), sampled in batches with per-image seeds."""
    if pipe.scheduler.__class__.__name__ != {"ddim": "DDIMScheduler", "dpm++": "DPMSolverMultistepScheduler"}[
            settings.scheduler]:
        pipe.use_scheduler(settings.scheduler)
    scale = settings.control_scale if control_scale is None else control_scale
    out = []
    for i in range(0, len(maps), settings.batch_size):
        chunk = np.asarray(maps[i:i + settings.batch_size], dtype=np.float32)
        gens = seeded_generators(settings.seed, len(chunk), offset=i)
        out.append(pipe(chunk, num_inference_steps=settings.num_inference_steps,
                        guidance_scale=settings.guidance_scale, control_scale=scale, generator=gens).images.cpu())
    return torch.cat(out)


def evaluate_reconstructions(fm, pipe, maps, gt_images, settings, shuffle_seed=None):
    """Reconstruct and score. With ``shuffle_seed`` the maps are deranged first (the fMRI of another image is fed
    in each slot) and scored against the unshuffled ground truth: the metrics must fall to chance.

    Returns
    -------
    metrics : dict, images : Tensor (n, 3, H, W)
    """
    maps = np.asarray(maps)
    if shuffle_seed is not None:
        maps = maps[derangement(len(maps), shuffle_seed)]
    rec = reconstruct(pipe, maps, settings)
    return image_metrics(fm, gt_images, rec), rec


def control_sweep(fm, pipe, maps, gt_images, settings, scales):
    """Metrics and images for each control scale (0 → 1): ``{scale: (metrics, images)}``."""
    out = {}
    for s in scales:
        rec = reconstruct(pipe, maps, settings, control_scale=float(s))
        out[float(s)] = (image_metrics(fm, gt_images, rec), rec)
    return out
