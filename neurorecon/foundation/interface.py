"""The one interface later stages use for the foundation models, whatever the profile.

``Foundation`` bundles the frozen pretrained pieces both papers stand on. In the demo and smoke profiles they
are small models trained in-repo on NSD-mini (notebook 02); in the full profile they are SD 2.1 base, OpenCLIP
ViT-H/14, CLIP ViT-L/14, Stable unCLIP 2.1 and an LLM loaded from local paths. Later stages never branch on
the profile: they call the methods below.

Conventions
-----------
- Images in: uint8 ``(n, H, W, 3)`` numpy arrays or float tensors ``(n, 3, H, W)`` in [0, 1]; they are resized
  to :attr:`Foundation.image_size` (pixels) or the encoder's own input size as needed.
- Images out: float tensors ``(n, 3, H, W)`` in [0, 1].
- Latents: ``(n, C, h, w)`` already multiplied by the VAE's ``scaling_factor`` (what the UNet sees).
- Text tokens: ``(n, L, D)`` cross-attention context (SD 2.x style: penultimate text-transformer layer, final
  LayerNorm); L is the context length (77 in full), D the text width (1024 in full).
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Foundation", "to_float_images"]


def to_float_images(images, size=None, device="cpu"):
    """uint8 (n, H, W, 3) arrays or float (n, 3, H, W) tensors → float (n, 3, size, size) in [0, 1]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    images = images.to(device=device, dtype=torch.float32)
    if size is not None and images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return images


@dataclass
class Foundation:
    """Frozen foundation models behind one interface.

    Attributes
    ----------
    profile : str
    image_size : int
        Pixel side the generators work at (64 demo, 512 full).
    text_tokens_fn : callable
        ``list[str] -> (n, L, D)`` conditioning tokens.
    text_embeds_fn : callable
        ``list[str] -> (n, E)`` L2-normalised CLIP text embeddings (retrieval, CLIP-S).
    image_embeds_fn : callable
        ``float images (n, 3, H, W) in [0, 1] -> (n, E)`` L2-normalised projected CLIP image embeddings
        (NV2L's target, the demo CLIP metric).
    vae : diffusers.AutoencoderKL
    unet : diffusers.UNet2DConditionModel
        Text-conditioned latent diffusion UNet (the SD 2.1 analog).
    scheduler_config : dict
        The training noise schedule (``DDPMScheduler`` config: 1000 steps, scaled-linear betas, eps).
    unclip_unet : diffusers.UNet2DConditionModel, optional
        Image-embedding-conditioned variant (``class_embed_type="projection"``): the Stable unCLIP analog.
    lm, lm_tokenizer : transformers causal LM and its tokenizer, optional
    names : dict
        What each component is (for reports: "demo-clip", "OpenCLIP ViT-H/14", ...).
    """

    profile: str
    image_size: int
    text_tokens_fn: Callable
    text_embeds_fn: Callable
    image_embeds_fn: Callable
    vae: Any
    unet: Any
    scheduler_config: dict
    unclip_unet: Optional[Any] = None
    lm: Optional[Any] = None
    lm_tokenizer: Optional[Any] = None
    names: dict = field(default_factory=dict)
    device: str = "cpu"

    # --- text -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def text_tokens(self, texts):
        return self.text_tokens_fn(list(texts))

    def empty_tokens(self, n=1):
        """Tokens of the empty prompt "" (the unconditional context of classifier-free guidance)."""
        return self.text_tokens([""]).expand(n, -1, -1)

    @torch.no_grad()
    def text_embeds(self, texts):
        return self.text_embeds_fn(list(texts))

    # --- images -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def image_embeds(self, images):
        return self.image_embeds_fn(to_float_images(images, device=self.device))

    @property
    def latent_channels(self):
        return self.vae.config.latent_channels

    @property
    def latent_size(self):
        return self.image_size // (2 ** (len(self.vae.config.block_out_channels) - 1))

    @property
    def text_shape(self):
        """(L, D) of :meth:`text_tokens`."""
        return tuple(self.empty_tokens(1).shape[1:])

    @property
    def embed_dim(self):
        return int(self.text_embeds([""]).shape[-1])

    @torch.no_grad()
    def encode_images(self, images, sample=False, generator=None):
        """Images → scaled VAE latents (the posterior mean unless ``sample``)."""
        x = to_float_images(images, self.image_size, self.device) * 2 - 1
        dist = self.vae.encode(x).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        return z * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents):
        """Scaled VAE latents → float images in [0, 1]."""
        x = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return ((x + 1) / 2).clamp(0, 1)

    # --- diffusion --------------------------------------------------------------------------------------------
    def make_scheduler(self, kind="ddim"):
        """A sampling scheduler with the training noise schedule: ``ddim``, ``dpm++`` or ``ddpm``."""
        from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

        cls = {"ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler, "ddpm": DDPMScheduler}[kind]
        kwargs = {"algorithm_type": "dpmsolver++"} if kind == "dpm++" else {}
        return cls.from_config(self.scheduler_config, **kwargs)

    def frozen(self):
        """Put every module in eval mode with gradients off (the pretrained parts are never trained later)."""
        for m in (self.vae, self.unet, self.unclip_unet, self.lm):
            if m is not None:
                m.eval().requires_grad_(False)
        return self
