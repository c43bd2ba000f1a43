"""Neuro-Vision to Language (NV2L): ViT3D fMRI encoder, instruction data, brain LLaVA, concept localisation.

Modules: :mod:`.vit3d` (the encoder), :mod:`.encoder` (its data, MixUp training and evaluation),
:mod:`.instructions` (LLaVA instruction data), :mod:`.llava` (brain LLaVA: projector + LM, chat, generation),
:mod:`.captions` (pycocoevalcap caption metrics, reused by later stages), :mod:`.baselines` (ridge +
nearest-neighbour captions), :mod:`.evaluate` (QA), :mod:`.concepts` (GradCAM and the ablation check),
:mod:`.figures` and :mod:`.stage` (``run_language_stage``).
"""

from .captions import CaptionScorer, caption_scores
from .instructions import build_instruction_data, read_llava_json, write_llava_json
from .llava import BrainLlava
from .stage import LanguageConfig, run_language_stage
from .vit3d import PatchGrid, ViT3D

__all__ = ["BrainLlava", "CaptionScorer", "LanguageConfig", "PatchGrid", "ViT3D", "build_instruction_data",
           "caption_scores", "read_llava_json", "run_language_stage", "write_llava_json"]
