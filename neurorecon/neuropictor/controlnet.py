"""Low-level structural modulation: a diffusers ControlNet whose image-hint stack is replaced by an fMRI hint mapper.

diffusers' ``ControlNetModel.forward`` computes ``conv_in(sample) + controlnet_cond_embedding(controlnet_cond)``
before its down blocks. :class:`FMRIControlNetModel` is a ``ControlNetModel`` whose ``controlnet_cond_embedding``
is :class:`FMRIHintMapper`, so ``controlnet_cond`` is the fMRI token sequence ``(n, T, W)`` and the hint is added
to the output of the ControlNet's first convolution on the noisy latent, exactly where NeuroPictor adds it.

Hint mapper (paper, full profile): 257×1024 tokens → Conv1d(k=1) 257→514→320 over the token axis → Linear
1024→4096 + SiLU → zero-initialised Conv1d(320, 320, k=3) → reshape 320×64×64. Here the channel count is the
ControlNet's first block width and 4096 is the latent grid (h·w), so the same code runs the demo.

Everything else is diffusers' ControlNet: a trainable copy of the UNet's encoder and middle block
(:meth:`FMRIControlNetModel.from_unet_with_fmri`) with zero 1×1 convolutions into the UNet's skip and middle
residuals, scaled by ``conditioning_scale`` (the control scale).
"""

import inspect

import torch
import torch.nn as nn
from diffusers import ControlNetModel
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers' pipeline loader looks it up here)

__all__ = ["FMRIHintMapper", "FMRIControlNetModel"]


class FMRIHintMapper(nn.Module):
    """fMRI tokens (n, T, W) → hint (n, C, h, w) added after the ControlNet's first convolution."""

    def __init__(self, n_tokens, width, channels, latent_size):
        super().__init__()
        self.latent_size = latent_size
        self.tokens = nn.Sequential(nn.Conv1d(n_tokens, 2 * n_tokens, 1), nn.Conv1d(2 * n_tokens, channels, 1))
        self.proj = nn.Linear(width, latent_size * latent_size)
        self.act = nn.SiLU()
        self.zero_conv = nn.Conv1d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.zero_conv.weight)
        nn.init.zeros_(self.zero_conv.bias)

    def forward(self, tokens):
        x = self.zero_conv(self.act(self.proj(self.tokens(tokens))))
        return x.reshape(x.shape[0], x.shape[1], self.latent_size, self.latent_size)


class FMRIControlNetModel(ControlNetModel):
    """A ``ControlNetModel`` conditioned on fMRI tokens instead of an image.

    Takes every ``ControlNetModel`` argument plus ``fmri_tokens`` (T), ``fmri_width`` (W) and ``latent_size``
    (h = w of the latent grid); all are stored in the config, so ``save_pretrained``/``from_pretrained`` round-trip.
    Call it like a ControlNet with ``controlnet_cond=tokens``.
    """

    def __init__(self, fmri_tokens=257, fmri_width=1024, latent_size=64, **kwargs):
        super().__init__(**kwargs)
        channels = self.conv_in.out_channels
        self.controlnet_cond_embedding = FMRIHintMapper(fmri_tokens, fmri_width, channels, latent_size)
        self.register_to_config(fmri_tokens=fmri_tokens, fmri_width=fmri_width, latent_size=latent_size)

    @staticmethod
    def _get_init_keys(input_class):
        keys = set(inspect.signature(input_class.__init__).parameters)
        if isinstance(input_class, type) and issubclass(input_class, FMRIControlNetModel):
            keys |= set(inspect.signature(ControlNetModel.__init__).parameters)
        return keys

    @classmethod
    def from_unet_with_fmri(cls, unet, fmri_tokens, fmri_width, latent_size=None, seed=0):
        """A ControlNet initialised from ``unet`` (encoder + middle block weights copied, as ``from_unet``) with a
        freshly initialised (seeded) fMRI hint mapper."""
        torch.manual_seed(seed)
        base = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16,), conditioning_channels=1)
        kwargs = {k: v for k, v in base.config.items() if not k.startswith("_")}
        model = cls(fmri_tokens=fmri_tokens, fmri_width=fmri_width,
                    latent_size=latent_size or unet.config.sample_size, **kwargs)
        state = {k: v for k, v in base.state_dict().items() if not k.startswith("controlnet_cond_embedding.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all(k.startswith("controlnet_cond_embedding.") for k in missing), missing
        return model
