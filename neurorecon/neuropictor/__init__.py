"""NeuroPictor: fMRI flat maps → images through a frozen latent-diffusion model modulated at a high semantic level
(fMRI tokens as cross-attention context) and a low structural level (an fMRI ControlNet).

Stages ``pretrain`` (notebook 04) and ``refine`` (notebook 05); the calibrated encoder comes from stage
``encoding`` (notebook 03, :mod:`neurorecon.encoding`).
"""

from .controlnet import FMRIControlNetModel, FMRIHintMapper
from .evaluate import (SampleSettings, control_sweep, derangement, evaluate_reconstructions, load_pipeline,
                       pipeline_from_model, reconstruct, save_model)
from .heads import FMRIConditioner, SemanticHead
from .model import NeuroPictorModel, build_neuropictor
from .pipeline import NeuroPictorPipeline, make_scheduler, seeded_generators
from .stage import PretrainConfig, RefineConfig, run_pretrain_stage, run_refine_stage

__all__ = ["FMRIControlNetModel", "FMRIHintMapper", "FMRIConditioner", "SemanticHead", "NeuroPictorModel",
           "build_neuropictor", "NeuroPictorPipeline", "make_scheduler", "seeded_generators", "SampleSettings",
           "save_model", "load_pipeline", "pipeline_from_model", "reconstruct", "derangement",
           "evaluate_reconstructions", "control_sweep", "PretrainConfig", "RefineConfig", "run_pretrain_stage",
           "run_refine_stage"]
