"""NSD-mini: a simulated Natural Scenes Dataset written in the raw NSD file layout.

Procedural scenes with true-by-construction captions and COCO annotations, an NSD-like design, and eight
simulated brains (a tuned cortical sheet sampled by volume voxels and by a common surface) with realistic noise.

Examples
--------
>>> from neurorecon.simulate import simulate
>>> simulate("nsd_mini", profile="smoke", seed=0)  # doctest: +SKIP
"""

from . import brain, design, scenes
from .config import SimConfig
from .core import BETAS_DIR, BETAS_FORMATS, FLATMAP_FILE, TRUTH_FILE, simulate

__all__ = ["SimConfig", "simulate", "scenes", "brain", "design", "BETAS_DIR", "BETAS_FORMATS", "FLATMAP_FILE",
           "TRUTH_FILE"]
