"""Config of the evaluation harness: where the metric networks' local weight files are, and protocol settings.

Loaded from ``neurorecon/configs/evaluation.yaml`` (sections ``defaults``, ``smoke``, ``demo``, ``full``) with
:func:`neurorecon.config.load_config`; a user's YAML of the same shape names local files for the full profile.
"""

import dataclasses
from typing import Optional

from ..config import StageConfig

__all__ = ["EvaluationConfig"]


@dataclasses.dataclass
class EvaluationConfig(StageConfig):
    """Settings of :mod:`neurorecon.evaluation` (comments in ``neurorecon/configs/evaluation.yaml``).

    Attributes
    ----------
    alexnet, inception, efficientnet, swav, clip : str or None
        Local weight files of the metric networks (None: the metric is reported unavailable).
    clip_model, clip_config : str, str or None
        open_clip model name, or a JSON model config, of the CLIP checkpoint.
    demo_clip : bool
        Also report the foundation's CLIP (``fm.image_embeds``) under the name ``demo-CLIP``.
    device : str
        ``cpu``, ``cuda`` or ``auto``.
    num_threads : int or None
        torch CPU threads while evaluating (None: torch's default; 1 is much faster on a CPU shared with other
        jobs).
    batch_size : int
        Images per forward pass of a metric network.
    antialias : bool
        ``antialias`` of every tensor ``Resize`` (False: MindEye's behaviour under torchvision < 0.17).
    retrieval_draws, retrieval_size, retrieval_seed : int
        MindEye retrieval: draws of ``retrieval_size`` test samples without replacement, legacy numpy seed.
    caption_meteor : bool
        Compute METEOR (pycocoevalcap, needs Java).
    caption_tokenizer : str
        ``ptb`` or ``simple``.
    clip_s_weight : float
        CLIP-S weight ``w`` (2.5 in Hessel et al.).
    clip_s_prefix : str
        Text put before each caption for CLIP-S ("A photo depicts " in Hessel et al.).
    """

    STAGE = "evaluation"
    NOTEBOOK = "07_reconstruction_and_evaluation"

    alexnet: Optional[str] = None
    inception: Optional[str] = None
    efficientnet: Optional[str] = None
    swav: Optional[str] = None
    clip: Optional[str] = None
    clip_model: str = "ViT-L-14-quickgelu"
    clip_config: Optional[str] = None
    demo_clip: bool = False
    device: str = "cpu"
    num_threads: Optional[int] = None
    batch_size: int = 32
    antialias: bool = False
    retrieval_draws: int = 30
    retrieval_size: int = 300
    retrieval_seed: int = 42
    caption_meteor: bool = True
    caption_tokenizer: str = "ptb"
    clip_s_weight: float = 2.5
    clip_s_prefix: str = "A photo depicts "
