"""NeuroPictor's training module: fMRI conditioner + fMRI ControlNet around a frozen latent-diffusion UNet.

``NeuroPictorModel(maps, latents, caption_tokens, generator) -> loss`` is what :func:`neurorecon.training.fit`
trains. Per sample it draws a timestep and Gaussian noise (from ``generator``, so resumed runs are exact), noises
the VAE latent, computes the fMRI context (semantic head, optionally with the refinement residual branch), replaces
it with the empty prompt's tokens for a ``cfg_mask_prob`` fraction of samples (the ``_mask`` recipes), runs the
ControlNet (context + fMRI tokens) and the frozen UNet with the ControlNet residuals, and returns

``loss = MSE(eps_pred, eps) + semantic_weight · MSE(main head output, caption tokens)``

(the target is ``v`` instead of ``eps`` if the foundation's schedule is v-prediction). The frozen UNet is held
outside the module tree, so checkpoints and DDP only carry the trainable parts (ControlNet, encoder, heads).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import DDPMScheduler

from ..devices import as_buffer
from .controlnet import FMRIControlNetModel
from .heads import FMRIConditioner

__all__ = ["NeuroPictorModel", "build_neuropictor"]


class NeuroPictorModel(nn.Module):
    """Trainable NeuroPictor (see the module docstring).

    Parameters
    ----------
    conditioner : FMRIConditioner
    controlnet : FMRIControlNetModel
    unet : diffusers.UNet2DConditionModel
        Frozen; not registered as a submodule.
    scheduler_config : dict
        The foundation's training noise schedule.
    cfg_mask_prob : float
        Fraction of samples whose context is the empty prompt's (0.05 in the ``_mask`` recipes).
    semantic_weight : float
        Weight of the semantic loss (0.1 in refinement, 0 in pretraining).
    """

    def __init__(self, conditioner, controlnet, unet, scheduler_config, cfg_mask_prob=0.0, semantic_weight=0.0):
        super().__init__()
        self.conditioner = conditioner
        self.controlnet = controlnet
        object.__setattr__(self, "unet", unet.eval().requires_grad_(False))
        sched = DDPMScheduler.from_config(scheduler_config)
        self.num_train_timesteps = sched.config.num_train_timesteps
        self.prediction_type = sched.config.prediction_type
        self.register_buffer("alphas_cumprod", as_buffer(sched.alphas_cumprod.float().clone()), persistent=False)
        self.cfg_mask_prob = float(cfg_mask_prob)
        self.semantic_weight = float(semantic_weight)
        self.last_losses = {}

    def enable_gradient_checkpointing(self):
        """Activation checkpointing in the ControlNet, the encoder and the frozen UNet (gradients pass through it)."""
        self.controlnet.enable_gradient_checkpointing()
        self.conditioner.enable_gradient_checkpointing()
        self.unet.enable_gradient_checkpointing()

    def forward(self, maps, latents, caption_tokens=None, generator=None):
        device = latents.device
        if next(self.unet.parameters()).device != device:
            self.unet.to(device)
        n = latents.shape[0]
        latents = latents.float()
        tokens, ctx, main = self.conditioner(maps)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        t = torch.randint(0, self.num_train_timesteps, (n,), generator=generator).to(device)
        if self.cfg_mask_prob > 0:
            drop = (torch.rand(n, generator=generator) < self.cfg_mask_prob).to(device)
            empty = self.conditioner.empty_context.to(ctx.dtype).expand(n, -1, -1)
            ctx = torch.where(drop[:, None, None], empty, ctx)
        a = self.alphas_cumprod[t].view(n, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        down, mid = self.controlnet(noisy, t, encoder_hidden_states=ctx, controlnet_cond=tokens, return_dict=False)
        frozen = self.unet.dtype  # the frozen UNet may be fp16/bf16: its inputs are cast (gradients pass through)
        pred = self.unet(noisy.to(frozen), t, encoder_hidden_states=ctx.to(frozen),
                         down_block_additional_residuals=[d.to(frozen) for d in down],
                         mid_block_additional_residual=mid.to(frozen)).sample
        target = noise if self.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * latents
        loss = F.mse_loss(pred.float(), target)
        self.last_losses = {"diffusion": loss.detach()}
        if self.semantic_weight and caption_tokens is not None:
            sem = F.mse_loss(main.float(), caption_tokens.float())
            self.last_losses["semantic"] = sem.detach()
            loss = loss + self.semantic_weight * sem
        return loss


def build_neuropictor(fm, encoder, semantic_mid, seed=0, cfg_mask_prob=0.0, semantic_weight=0.0):
    """A fresh NeuroPictor around a foundation and a pretrained encoder (heads and hint mapper seeded)."""
    text_len, text_dim = fm.text_shape
    conditioner = FMRIConditioner.from_encoder(encoder, text_len, text_dim, semantic_mid,
                                               empty_context=fm.empty_tokens(1), seed=seed)
    controlnet = FMRIControlNetModel.from_unet_with_fmri(fm.unet, encoder.num_tokens, encoder.config.width,
                                                         latent_size=fm.latent_size, seed=seed)
    return NeuroPictorModel(conditioner, controlnet, fm.unet, fm.scheduler_config, cfg_mask_prob, semantic_weight)
