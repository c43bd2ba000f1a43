"""Calibrated fMRI encoding: NeuroPictor's flat-map ViT autoencoder (stage ``encoding``, notebook 03)."""

from .data import StackedMaps, pretraining_arrays, visual_mask
from .model import FMRIAutoencoder, FMRIEncoder, masked_mse, patchify, sincos_2d, unpatchify
from .stage import (EncodingConfig, build_autoencoder, load_autoencoder, load_encoder, reconstruct,
                    reconstruction_r2, run_encoding_stage)

__all__ = ["FMRIEncoder", "FMRIAutoencoder", "masked_mse", "patchify", "unpatchify", "sincos_2d", "StackedMaps",
           "pretraining_arrays", "visual_mask", "EncodingConfig", "run_encoding_stage", "build_autoencoder",
           "reconstruct", "reconstruction_r2", "load_encoder", "load_autoencoder"]
