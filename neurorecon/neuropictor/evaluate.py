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


def reconstruct(pipe, maps, settings, control_scale=None, accelerator=None):
    """Float images (n, 3, H, W) in [0, 1] from flat maps (n, H, W), sampled in batches with per-image seeds.

    With an ``accelerator`` of several processes each samples its :func:`~neurorecon.distributed.shard` of the
    maps and every process gets all images back in order: the same images as one process (per-image seeds
    follow the image's index, not the batching).
    """
    from ..distributed import gather, shard

    if pipe.scheduler.__class__.__name__ != {"ddim": "DDIMScheduler", "dpm++": "DPMSolverMultistepScheduler"}[
            settings.scheduler]:
        pipe.use_scheduler(settings.scheduler)
    scale = settings.control_scale if control_scale is None else control_scale
    mine = shard(len(maps), accelerator)
    out = []
    for i in range(mine.start, mine.stop, settings.batch_size):
        chunk = np.asarray(maps[i:min(i + settings.batch_size, mine.stop)], dtype=np.float32)
        gens = seeded_generators(settings.seed, len(chunk), offset=i)
        out.append(pipe(chunk, num_inference_steps=settings.num_inference_steps,
                        guidance_scale=settings.guidance_scale, control_scale=scale, generator=gens).images.cpu())
    images = torch.cat(out) if out else torch.zeros((0,))  # an empty share: gather takes the others' shape
    return gather(images, accelerator)


def evaluate_reconstructions(fm, pipe, maps, gt_images, settings, shuffle_seed=None, accelerator=None):
    """Reconstruct and score. With ``shuffle_seed`` the maps are deranged first (the fMRI of another image is fed
    in each slot) and scored against the unshuffled ground truth: the metrics must fall to chance. With an
    ``accelerator`` the sampling is shared across processes (:func:`reconstruct`).

    Returns
    -------
    metrics : dict, images : Tensor (n, 3, H, W)
    """
    maps = np.asarray(maps)
    if shuffle_seed is not None:
        maps = maps[derangement(len(maps), shuffle_seed)]
    rec = reconstruct(pipe, maps, settings, accelerator=accelerator)
    return image_metrics(fm, gt_images, rec), rec


def control_sweep(fm, pipe, maps, gt_images, settings, scales):
    """Metrics and images for each control scale (0 → 1): ``{scale: (metrics, images)}``."""
    out = {}
    for s in scales:
        rec = reconstruct(pipe, maps, settings, control_scale=float(s))
        out[float(s)] = (image_metrics(fm, gt_images, rec), rec)
    return out
