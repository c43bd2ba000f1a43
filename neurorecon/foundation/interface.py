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
- CLIP embeddings: :meth:`Foundation.image_embeds` / :meth:`Foundation.text_embeds` are L2-normalised by default
  (retrieval, metrics); ``image_embeds(..., normalize=False)`` gives the raw projected embedding that unCLIP is
  conditioned on (Stable unCLIP feeds the unnormalised CLIP image embedding to its noise augmentor).
- unCLIP conditioning: ``class_labels = unclip_class_labels(raw_image_embeds, noise_level)`` (normalise, noise,
  unnormalise, append the sinusoidal embedding of the noise level: exactly ``StableUnCLIPImg2ImgPipeline``);
  the unconditional branch of guidance uses zeros.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Foundation", "to_float_images", "unclip_class_labels"]


def to_float_images(images, size=None, device="cpu"):
    """uint8 (n, H, W, 3) arrays or float (n, 3, H, W) tensors → float (n, 3, size, size) in [0, 1]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    images = images.to(device=device, dtype=torch.float32)
    if size is not None and images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return images


def unclip_class_labels(image_embeds, noise_level, normalizer=None, noising_scheduler=None, generator=None):
    """Stable unCLIP's ``noise_image_embeddings``: normalise raw image embeddings (n, E) with ``normalizer``,
    noise them to ``noise_level`` with ``noising_scheduler``, unnormalise, append the sinusoidal embedding of the
    level → (n, 2E). ``noise_level``: int or (n,) tensor. Differentiable (used in training too)."""
    from diffusers.models.embeddings import get_timestep_embedding

    emb = image_embeds.float()
    n = emb.shape[0]
    level = torch.as_tensor(noise_level, device=emb.device).long()
    level = level.expand(n) if level.ndim == 0 else level
    if normalizer is not None and noising_scheduler is not None:
        noise = torch.randn(emb.shape, generator=generator, dtype=emb.dtype).to(emb.device)
        mean, std = normalizer.mean.float().to(emb.device), normalizer.std.float().to(emb.device)
        z = noising_scheduler.add_noise((emb - mean) / std, noise, level)
        emb = z * std + mean
    lev = get_timestep_embedding(level, emb.shape[-1], flip_sin_to_cos=True, downscale_freq_shift=0)
    return torch.cat([emb, lev.to(emb.dtype)], 1)


@dataclass
class Foundation:
    """Frozen foundation models behind one interface.

    Attributes
    ----------
    profile : str
    image_size : int
        Pixel side the generators work at (64 demo, 512 full).
    text_tokens_fn : callable
        ``(list[str], final=False) -> (n, L, D)`` conditioning tokens (the text tower's penultimate layer, as SD
        2.x reads them); ``final=True``: its last layer (NeuroPictor's semantic-loss target in the official code).
    text_embeds_fn : callable
        ``list[str] -> (n, E)`` L2-normalised CLIP text embeddings (retrieval, CLIP-S).
    image_embeds_fn : callable
        ``float images (n, 3, H, W) in [0, 1] -> (n, E)`` raw (unnormalised) projected CLIP image embeddings
        (NV2L's target, the demo CLIP metric); :meth:`image_embeds` normalises them.
    vae : diffusers.AutoencoderKL
    unet : diffusers.UNet2DConditionModel
        Text-conditioned latent diffusion UNet (the SD 2.1 analog).
    scheduler_config : dict
        The training noise schedule (``DDPMScheduler`` config: 1000 steps, scaled-linear betas, eps).
    unclip_unet : diffusers.UNet2DConditionModel, optional
        Image-embedding-conditioned variant (``class_embed_type="projection"``): the Stable unCLIP analog.
    unclip_normalizer : diffusers StableUnCLIPImageNormalizer, optional
        Mean/std of the image embeddings (noise augmentation happens in normalised space).
    unclip_noising_scheduler : diffusers.DDPMScheduler, optional
        Noise schedule of the image-embedding augmentation.
    unclip_scheduler_config : dict, optional
        The unCLIP UNet's own noise schedule and ``prediction_type`` (its folder's ``scheduler/``; Stable unCLIP
        2.1 small predicts v), used whenever :meth:`sample` is given image embeddings.
    lm, lm_tokenizer : transformers causal LM and its tokenizer, optional
        The tokenizer has a pad token and the special token ``<image>``.
    names : dict
        What each component is (for reports: "demo-clip", "OpenCLIP ViT-H/14", ...).
    extras : dict
        The raw models behind the callables (``clip_text``, ``clip_image``, ``clip_tokenizer``) for inspection.
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
    unclip_normalizer: Optional[Any] = None
    unclip_noising_scheduler: Optional[Any] = None
    extras: dict = field(default_factory=dict)
    unclip_scheduler_config: Optional[dict] = None

    # --- text -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def text_tokens(self, texts, final=False):
        """Conditioning tokens (n, L, D) of ``texts``; ``final=True``: the text tower's last layer instead of the
        penultimate one (see ``text_tokens_fn``)."""
        return self.text_tokens_fn(list(texts), final=True) if final else self.text_tokens_fn(list(texts))

    def empty_tokens(self, n=1):
        """Tokens of the empty prompt "" (the unconditional context of classifier-free guidance)."""
        return self.text_tokens([""]).expand(n, -1, -1)

    @torch.no_grad()
    def text_embeds(self, texts):
        """L2-normalised CLIP text embeddings (n, E), float32 on the CPU (for metrics and retrieval)."""
        return self.text_embeds_fn(list(texts)).float().cpu()

    # --- images -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def image_embeds(self, images, normalize=True, batch_size=256):
        """CLIP image embeddings (n, E) of uint8 (n, H, W, 3) arrays or float (n, 3, H, W) tensors in [0, 1]; float32
        on the CPU, whatever the device and dtype of the CLIP model (for metrics, retrieval, targets)."""
        out = []
        for i in range(0, len(images), batch_size):
            out.append(self.image_embeds_fn(to_float_images(images[i:i + batch_size], device=self.device))
                       .float().cpu())
        emb = torch.cat(out)
        return F.normalize(emb, dim=-1) if normalize else emb

    # --- unCLIP ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def unclip_class_labels(self, image_embeds, noise_level=0, generator=None):
        """Raw image embeddings (n, E) → unCLIP ``class_labels`` (n, 2E): the noise-augmented embedding ⊕ the
        embedding of the noise level.

        ``noise_level`` is an int or a (n,) tensor of levels in [0, 1000).
        """
        return unclip_class_labels(image_embeds.to(self.device), noise_level, self.unclip_normalizer,
                                   self.unclip_noising_scheduler, generator)

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
        dist = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        return z.float() * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents):
        """Scaled VAE latents → float images in [0, 1]."""
        x = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.vae.dtype)).sample.float()
        return ((x + 1) / 2).clamp(0, 1)

    # --- diffusion --------------------------------------------------------------------------------------------
    def make_scheduler(self, kind="ddim", unclip=False):
        """A sampling scheduler (``ddim``, ``dpm++`` or ``ddpm``) with a model's training noise schedule and
        prediction type: the text UNet's, or with ``unclip`` the unCLIP UNet's own."""
        from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

        cls = {"ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler, "ddpm": DDPMScheduler}[kind]
        kwargs = {"algorithm_type": "dpmsolver++"} if kind == "dpm++" else {}
        if unclip and self.unclip_scheduler_config is None:
            raise ValueError("this Foundation has no unclip_scheduler_config (the unCLIP folder's scheduler/): "
                             "sampling the unCLIP UNet with the text UNet's schedule would misread a "
                             "v-prediction model")
        return cls.from_config(self.unclip_scheduler_config if unclip else self.scheduler_config, **kwargs)

    @torch.no_grad()
    def sample(self, context, *, negative_context=None, image_embeds=None, noise_level=0, guidance_scale=3.0,
               num_steps=25, scheduler="ddim", seed=0, init_latents=None, strength=1.0, beta=None, eps_fn=None,
               batch_size=64, decode=True):
        """Generate images from conditioning tokens with classifier-free guidance.

        Parameters
        ----------
        context : Tensor (n, L, D)
            Cross-attention context (:meth:`text_tokens` or a brain-derived equivalent).
        negative_context : Tensor (n, L, D) or (1, L, D), optional
            Unconditional context (default: the empty prompt's tokens).
        image_embeds : Tensor (n, E), optional
            Raw CLIP image embeddings: sample with :attr:`unclip_unet` (the Stable unCLIP analog).
        noise_level : int
            unCLIP image-embedding noise augmentation level (0 = none).
        guidance_scale : float
            1 disables guidance.
        scheduler : str
            ``ddim`` or ``dpm++`` (DPM-Solver++) with the sampled model's training noise schedule and prediction
            type (:meth:`make_scheduler`; the unCLIP UNet's own with ``image_embeds``).
        init_latents : Tensor (n, C, h, w), optional
            Start from these latents noised to ``strength`` (img2img); ``strength=1`` starts from pure noise.
        beta : float, optional
            With ``init_latents``: NV2L's start instead of img2img, ``x_T = (1 - beta) * init_latents + beta *
            noise`` (times the scheduler's initial sigma), denoised over every step; ``beta = 1`` ignores the
            latents. ``strength`` is then not used.
        eps_fn : callable, optional
            ``eps_fn(latents, t, context, class_labels) -> model output`` replacing the UNet call (e.g. UNet +
            ControlNet); the output is what the scheduler's ``prediction_type`` says (eps, or v for unCLIP 2.1).
        decode : bool
            Return images (n, 3, H, W) in [0, 1]; else the final latents.
        """
        n = context.shape[0]
        gen = torch.Generator().manual_seed(int(seed))
        shape = (n, self.latent_channels, self.latent_size, self.latent_size)
        noise = torch.randn(shape, generator=gen)
        if negative_context is None:
            negative_context = self.empty_tokens(1)
        negative_context = negative_context.expand(n, -1, -1) if negative_context.shape[0] == 1 else negative_context
        labels = None
        if image_embeds is not None:
            labels = self.unclip_class_labels(image_embeds, noise_level, generator=gen)
        unet = self.unclip_unet if image_embeds is not None else self.unet

        def default_eps(x, t, ctx, cls):
            dtype = next(unet.parameters()).dtype
            return unet(x.to(dtype), t, encoder_hidden_states=ctx.to(dtype), class_labels=None if cls is None
                        else cls.to(dtype)).sample.float()

        eps_fn = eps_fn or default_eps
        out = []
        for i in range(0, n, batch_size):
            sl = slice(i, i + batch_size)
            sched = self.make_scheduler(scheduler, unclip=image_embeds is not None)
            sched.set_timesteps(num_steps)
            timesteps = sched.timesteps
            x = noise[sl].to(self.device) * sched.init_noise_sigma
            if init_latents is not None and beta is not None:
                if not 0 <= beta <= 1:
                    raise ValueError(f"beta must be in [0, 1], got {beta}")
                x = ((1 - beta) * init_latents[sl].to(self.device).float() + beta * noise[sl].to(self.device)) \
                    * sched.init_noise_sigma
            elif init_latents is not None and strength < 1:
                k = max(1, min(num_steps, int(round(num_steps * strength))))
                timesteps = timesteps[num_steps - k:]
                if hasattr(sched, "set_begin_index"):
                    sched.set_begin_index(num_steps - k)
                x = sched.add_noise(init_latents[sl].to(self.device).float(), noise[sl].to(self.device),
                                    timesteps[:1].repeat(x.shape[0]))
            ctx = context[sl].to(self.device)
            neg = negative_context[sl].to(self.device)
            cls = None if labels is None else labels[sl]
            guided = guidance_scale != 1
            for t in timesteps:
                xin = sched.scale_model_input(torch.cat([x, x]) if guided else x, t)
                if guided:
                    c2 = None if cls is None else torch.cat([torch.zeros_like(cls), cls])
                    e_u, e_c = eps_fn(xin, t, torch.cat([neg, ctx]), c2).chunk(2)
                    eps = e_u + guidance_scale * (e_c - e_u)
                else:
                    eps = eps_fn(xin, t, ctx, cls)
                x = sched.step(eps, t, x).prev_sample
            out.append(self.decode_latents(x) if decode else x)
        return torch.cat(out)

    def frozen(self):
        """Put every module in eval mode with gradients off (the pretrained parts are never trained later)."""
        for m in (self.vae, self.unet, self.unclip_unet, self.lm, self.unclip_normalizer,
                  *[v for v in self.extras.values() if isinstance(v, torch.nn.Module)]):
            if m is not None:
                m.eval().requires_grad_(False)
        return self
