"""Foundation models (CLIP, VAE, latent-diffusion UNets, causal LM) behind one interface.

Later stages call ``load_foundation(profile)`` and use the returned :class:`Foundation`; tests of later stages
use ``tiny_random_foundation()``.
"""

from .config import FoundationConfig
from .interface import Foundation, to_float_images
from .load import FoundationFilesError, load_foundation
from .tiny import tiny_random_foundation

__all__ = ["Foundation", "FoundationConfig", "FoundationFilesError", "load_foundation", "to_float_images",
           "tiny_random_foundation"]
