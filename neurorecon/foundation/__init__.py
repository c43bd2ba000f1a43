"""Foundation models (CLIP, VAE, latent-diffusion UNets, causal LM) behind one interface."""

from .interface import Foundation, to_float_images
from .tiny import tiny_random_foundation

__all__ = ["Foundation", "to_float_images", "tiny_random_foundation"]
