"""``NeuroPictorPipeline``: a diffusers ``DiffusionPipeline`` from fMRI flat maps to images.

Components: ``vae``, ``unet`` (frozen foundation parts), ``controlnet`` (:class:`FMRIControlNetModel`),
``conditioner`` (:class:`FMRIConditioner`: encoder, semantic head(s), empty-prompt context) and ``scheduler``
(DDIM or DPM-Solver++ with the foundation's training schedule). ``save_pretrained``/``from_pretrained`` write and
read the usual diffusers folder (``model_index.json`` + one folder per component).

Classifier-free guidance runs the conditional and unconditional passes in ONE batch; the unconditional half swaps
only the cross-attention context (UNet and ControlNet) to the empty prompt's tokens, the fMRI control hint is
injected in both halves (as in ControlNet/NeuroPictor sampling).
"""

import inspect

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

__all__ = ["NeuroPictorPipeline", "make_scheduler", "seeded_generators"]


def make_scheduler(kind, config):
    """``ddim`` (eta 0) or ``dpm++`` (DPM-Solver++ multistep) from a scheduler config."""
    if kind == "ddim":
        return DDIMScheduler.from_config(config)
    if kind == "dpm++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    raise ValueError(f"scheduler must be 'ddim' or 'dpm++', got {kind!r}")


def seeded_generators(seed, n, offset=0):
    """One CPU generator per sample (``seed + offset + i``): a sample's noise does not depend on the batching."""
    return [torch.Generator().manual_seed(int(seed) + offset + i) for i in range(n)]


class NeuroPictorPipeline(DiffusionPipeline):
    """fMRI flat maps → images (see the module docstring).

    Parameters
    ----------
    vae : diffusers.AutoencoderKL
    unet : diffusers.UNet2DConditionModel
    controlnet : FMRIControlNetModel
    conditioner : FMRIConditioner
    scheduler : DDIMScheduler or DPMSolverMultistepScheduler
    """

    model_cpu_offload_seq = "conditioner->controlnet->unet->vae"

    def __init__(self, vae, unet, controlnet, conditioner, scheduler):
        super().__init__()
        self.register_modules(vae=vae, unet=unet, controlnet=controlnet, conditioner=conditioner, scheduler=scheduler)

    def use_scheduler(self, kind):
        """Switch to ``ddim`` or ``dpm++`` (same noise schedule); returns self."""
        self.scheduler = make_scheduler(kind, self.scheduler.config)
        return self

    def _step_kwargs(self, generator, eta):
        params = set(inspect.signature(self.scheduler.step).parameters)
        kw = {}
        if "eta" in params:
            kw["eta"] = eta
        if "generator" in params:
            kw["generator"] = generator
        return kw

    @torch.no_grad()
    def __call__(self, fmri, num_inference_steps=50, guidance_scale=5.0, control_scale=1.0, generator=None,
                 latents=None, eta=0.0, output_type="pt", return_dict=True):
        """Reconstruct images from flat maps.

        Parameters
        ----------
        fmri : array or Tensor (n, H, W)
            Flat maps (zeros outside the visual mask).
        num_inference_steps : int
        guidance_scale : float
            Classifier-free guidance scale; ≤ 1 runs the conditional pass only.
        control_scale : float
            Scale of the ControlNet residuals (0 = semantics only, 1 = full structural control); at 0 the
            ControlNet is skipped.
        generator : torch.Generator or list of them (one per sample), optional
        latents : Tensor (n, C, h, w), optional
            Initial noise.
        output_type : "pt" (float (n, 3, H, W) in [0, 1]), "np" ((n, H, W, 3) floats), "pil" or "latent"

        Returns
        -------
        ImagePipelineOutput (``.images``) or a tuple
        """
        device = self._execution_device
        dtype = self.unet.dtype  # the frozen parts' dtype; the trained conditioner/ControlNet keep their own
        c_dtype = self.controlnet.dtype
        maps = torch.as_tensor(np.asarray(fmri, dtype=np.float32) if not torch.is_tensor(fmri) else fmri)
        maps = maps.to(device=self.conditioner.device, dtype=self.conditioner.dtype)
        n = maps.shape[0]
        tokens, ctx, _ = self.conditioner(maps)
        tokens, ctx = tokens.to(device), ctx.to(device)
        cfg = guidance_scale > 1.0
        if cfg:
            empty = self.conditioner.empty_context.to(device=device, dtype=ctx.dtype).expand(n, -1, -1)
            ctx = torch.cat([empty, ctx])
            tokens = torch.cat([tokens, tokens])
        size = self.controlnet.config.latent_size
        shape = (n, self.unet.config.in_channels, size, size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        latents = latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        step_kw = self._step_kwargs(generator, eta)
        for t in self.progress_bar(self.scheduler.timesteps):
            x = torch.cat([latents, latents]) if cfg else latents
            x = self.scheduler.scale_model_input(x, t)
            res = {}
            if control_scale != 0:  # each model gets its inputs in its own dtype, the residuals in the UNet's
                down, mid = self.controlnet(x.to(c_dtype), t, encoder_hidden_states=ctx.to(c_dtype),
                                            controlnet_cond=tokens.to(c_dtype),
                                            conditioning_scale=float(control_scale), return_dict=False)
                res = dict(down_block_additional_residuals=[d.to(dtype) for d in down],
                           mid_block_additional_residual=mid.to(dtype))
            eps = self.unet(x, t, encoder_hidden_states=ctx.to(dtype), **res).sample
            if cfg:
                uncond, cond = eps.chunk(2)
                eps = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(eps, t, latents, **step_kw).prev_sample
        if output_type == "latent":
            images = latents
        else:
            x = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
            images = ((x.float() + 1) / 2).clamp(0, 1)
            if output_type in ("np", "pil"):
                images = images.permute(0, 2, 3, 1).cpu().numpy()
                if output_type == "pil":
                    images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
