"""Training-loop benchmark: steady-state step time of :func:`neurorecon.training.fit` vs a bare loop.

The model is the demo text-to-image UNet exactly as the foundation stage builds and trains it
(:func:`neurorecon.foundation.tiny.tiny_unet` with the ``demo`` sizes of ``configs/foundation.yaml``: channels,
head width, latent size, CLIP width and context length, batch size, AdamW with its learning rate), on random
latents and caption contexts of the right shapes. Measured side by side in one run:

- fit: :func:`neurorecon.training.fit` with the stage's own loss (:mod:`neurorecon.foundation.train`: batch
  gathered by ``ArrayBatches``, latent sampling, noising, random caption and CFG dropout from the step generator,
  Min-SNR-weighted loss), ``accelerate`` (CPU), gradient clipping, the loss reduced and logged every step;
- bare: ``unet(x, t, context)`` + MSE + ``backward`` + ``AdamW.step`` + ``zero_grad`` on one fixed batch of the same
  size, nothing else.

Each step's start is stamped by a forward pre-hook on the UNet; the step time is the mean interval between the
stamps after ``warmup`` steps, so one-off startup (model wrapping, first-call allocations) is excluded. The
figure uses the process's CPU time (one thread: the work done, less affected than wall clock by other jobs on a
shared machine); the wall-clock ratio is in the note. The two loops alternate (A B, B A, A B, ...) on fresh,
identically initialised models; each keeps its best run. (The demo config has no EMA of the weights; with
``ema_decay`` set, the stage's loss would also fold each step into the average.)
"""

import json
import time

import torch
import torch.nn.functional as F

from neurorecon.config import load_config
from neurorecon.foundation.config import FoundationConfig
from neurorecon.foundation.tiny import tiny_unet
from neurorecon.foundation.train import _diffusion_setup, _noisy_latents, _pick_context, diffusion_loss
from neurorecon.training import ArrayBatches, fit

__all__ = ["run", "demo_unet_problem"]


def demo_unet_problem(profile="demo", n=512, seed=0, **overrides):
    """(config, make_unet, ArrayBatches of latents/contexts, empty-caption context) at a profile's sizes."""
    cfg = load_config(FoundationConfig, profile, overrides=overrides or None)
    latent = cfg.image_size // 2 ** (len(cfg.vae_channels) - 1)  # Foundation.latent_size
    c, length, width = cfg.vae_latent_channels, cfg.context_length, cfg.clip_width
    g = torch.Generator().manual_seed(seed)
    data = ArrayBatches(mean=torch.randn(n, c, latent, latent, generator=g),
                        std=0.05 + 0.1 * torch.rand(n, c, latent, latent, generator=g),
                        ctx=torch.randn(n, 5, length, width, generator=g).half())
    empty = torch.randn(1, length, width, generator=g)

    def make_unet():
        return tiny_unet(latent, width, tuple(cfg.unet_channels), seed=cfg.seed, latent_channels=c,
                         head_dim=cfg.unet_head_dim)

    return cfg, make_unet, data, empty


def _stamps(unet):
    stamps = []
    unet.register_forward_pre_hook(lambda *_: stamps.append((time.process_time(), time.perf_counter())))
    return stamps


def _per_step(stamps, warmup):
    """(CPU seconds, wall seconds) per step: mean interval between the step stamps after ``warmup``."""
    n = len(stamps) - 1 - warmup
    return tuple((b - a) / n for a, b in zip(stamps[warmup], stamps[-1]))


def _fit_run(cfg, make_unet, data, empty, steps, warmup):
    unet = make_unet()
    stamps = _stamps(unet)
    sched = _diffusion_setup(cfg)

    def loss_fn(m, batch, gen):  # the stage's loss (neurorecon.foundation.train.train_text_unet)
        x, noise, t = _noisy_latents(batch, 1.0, sched, gen)
        ctx = _pick_context(batch["ctx"], empty, gen, cfg.cfg_dropout)
        pred = m(x, t, encoder_hidden_states=ctx).sample
        return diffusion_loss(pred, noise, t, sched, cfg.snr_gamma)

    res = fit(unet, loss_fn, data, steps=warmup + steps, batch_size=cfg.unet_batch, lr=cfg.unet_lr,
              weight_decay=0.01, seed=cfg.seed, desc="bench", progress=False)
    assert len(res.losses) == warmup + steps
    return _per_step(stamps, warmup)


def _bare_run(cfg, make_unet, data, empty, steps, warmup):
    unet = make_unet()
    stamps = _stamps(unet)
    sched = _diffusion_setup(cfg)
    gen = torch.Generator().manual_seed(0)
    batch = data.batch(torch.arange(cfg.unet_batch).numpy())
    x, noise, t = _noisy_latents(batch, 1.0, sched, gen)
    ctx = batch["ctx"][:, 0].float()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=0.01)
    unet.train()
    for _ in range(warmup + steps):
        loss = F.mse_loss(unet(x, t, encoder_hidden_states=ctx).sample, noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return _per_step(stamps, warmup)


def run(profile="demo", steps=8, warmup=2, repeats=5, threads=1, **overrides):
    """Run the benchmark and return a list of result dicts (figure, value, unit, note).

    ``overrides`` are :class:`neurorecon.foundation.FoundationConfig` fields (tests make the UNet tiny with them).
    """
    if threads:
        torch.set_num_threads(threads)
    cfg, make_unet, data, empty = demo_unet_problem(profile, **overrides)
    n_params = sum(p.numel() for p in make_unet().parameters())
    fits, bares = [], []
    for r in range(repeats):  # interleaved A B B A A B ...: a loaded machine slows both alike
        for kind in (("fit", "bare") if r % 2 == 0 else ("bare", "fit")):
            if kind == "fit":
                fits.append(_fit_run(cfg, make_unet, data, empty, steps, warmup))
            else:
                bares.append(_bare_run(cfg, make_unet, data, empty, steps, warmup))
    (f, fw), (b, bw) = [(min(c for c, _ in runs), min(w for _, w in runs)) for runs in (fits, bares)]
    latent = cfg.image_size // 2 ** (len(cfg.vae_channels) - 1)
    return [dict(
        figure="train: fit step time / bare forward+backward+step", value=f / b, unit="ratio",
        note=f"{profile} text UNet ({n_params / 1e6:.2f} M params, channels {list(cfg.unet_channels)}, "
             f"{cfg.vae_latent_channels}x{latent}x{latent} latents, context {cfg.context_length}x{cfg.clip_width}), "
             f"batch {cfg.unet_batch}, {torch.get_num_threads()} thread(s): overhead {f / b - 1:+.1%}; CPU time fit "
             f"{f * 1e3:.0f} ms/step, "
             f"bare {b * 1e3:.0f} ms/step (mean of {steps} steps after {warmup} warm-up, best of {repeats}); "
             f"wall clock fit {fw * 1e3:.0f} ms, bare {bw * 1e3:.0f} ms (overhead {fw / bw - 1:+.1%}); goal ≤ 1.10 "
             "(overhead ≤ 10%)")]


if __name__ == "__main__":
    for row in run():
        print(json.dumps(row))
