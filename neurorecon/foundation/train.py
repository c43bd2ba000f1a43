"""Training of the demo foundation models, each with its library's own model class and the one training loop
(:func:`neurorecon.training.fit`).

- CLIP: ``open_clip.model.CLIP`` with ``open_clip.loss.ClipLoss`` on (image, random one of its 5 captions);
- VAE: ``diffusers.AutoencoderKL`` with MSE + a small KL term; ``scaling_factor`` = 1 / std of the latents (how
  SD's 0.18215 was chosen);
- text-to-image UNet: ``diffusers.UNet2DConditionModel`` on VAE latents, eps-prediction with SD's noise schedule,
  conditioned on the CLIP text tokens; the caption is replaced by "" with probability ``cfg_dropout``;
- unCLIP UNet: the text UNet plus a projection of (noise-augmented CLIP image embedding ⊕ noise-level embedding)
  added to the time embedding (``class_embed_type="projection"``), fine-tuned from the text UNet as Stable unCLIP
  was from SD 2.1 (its new projection starts at zero, so training starts from the text model);
- LM: ``transformers.LlamaForCausalLM`` with a byte-level BPE trained by ``tokenizers`` on the demo corpus.
"""

import numpy as np
import torch
import torch.nn.functional as F

from ..training import ArrayBatches, fit
from .interface import to_float_images, unclip_class_labels
from .clip import clip_image_embeds, clip_text_tokens_from_ids
from .tiny import sd_scheduler_config, tiny_clip, tiny_lm, tiny_unet, tiny_vae, train_bpe_tokenizer

__all__ = ["train_clip", "train_vae", "encode_latent_stats", "train_text_unet", "make_unclip_unet",
           "train_unclip_unet", "train_lm", "pack_texts", "group_texts", "VAEWithKL", "diffusion_loss",
           "caption_contexts", "EMAWeights"]


def _float(images_u8, size=None):
    return to_float_images(images_u8, size)


def train_clip(cfg, images, caption_tokens, tokenizer_context, progress=True, lowres=None):
    """Train the demo CLIP.

    Parameters
    ----------
    images : uint8 ndarray (n, S, S, 3)
    caption_tokens : LongTensor (n, k, L)
        open_clip BPE ids of the k captions of each image.
    lowres : int, optional
        With probability 1/2 an image is shown down-sampled to ``lowres`` pixels and back (the generators'
        resolution), so that the CLIP used as the demo metric judges generated images on their content, not
        their resolution.

    Returns
    -------
    (CLIP, SimpleTokenizer, TrainResult, model_config dict)
    """
    from open_clip.loss import ClipLoss

    from .tiny import clip_model_config

    size = cfg.clip_image_size or images.shape[1]
    mcfg = clip_model_config(size, tokenizer_context, cfg.clip_width, cfg.clip_embed_dim, cfg.clip_layers,
                             cfg.clip_patch)
    model, tokenizer = tiny_clip(size, tokenizer_context, cfg.clip_width, cfg.clip_embed_dim, cfg.clip_layers,
                                 seed=cfg.seed, patch_size=cfg.clip_patch)
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    loss_fn_clip = ClipLoss()

    def loss_fn(m, batch, gen):
        x = _float(batch["image"].numpy(), size)
        if lowres and lowres < size:
            blur = _float(_float(batch["image"].numpy(), lowres), size)
            x = torch.where((torch.rand(len(x), generator=gen) < 0.5)[:, None, None, None], blur, x)
        x = (x - mean) / std
        toks = batch["tokens"]
        pick = torch.randint(toks.shape[1], (toks.shape[0],), generator=gen)
        img_f, txt_f, scale = m(x, toks[torch.arange(len(toks)), pick])[:3]
        return loss_fn_clip(img_f, txt_f, scale)

    data = ArrayBatches(image=images, tokens=caption_tokens)
    res = fit(model, loss_fn, data, steps=cfg.clip_steps, batch_size=cfg.clip_batch, lr=cfg.clip_lr,
              weight_decay=0.1, seed=cfg.seed, desc="clip", progress=progress)
    return model.eval().requires_grad_(False), tokenizer, res, mcfg


class VAEWithKL(torch.nn.Module):
    """Wraps an ``AutoencoderKL`` so that one ``forward`` returns the reconstruction and the KL (for DDP)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x, generator=None):
        post = self.vae.encode(x).latent_dist
        z = post.sample(generator)
        return self.vae.decode(z).sample, post.kl().mean()


def train_vae(cfg, images, progress=True):
    """Train the demo ``AutoencoderKL`` on uint8 images resized to ``cfg.image_size``; returns (vae, result)."""
    vae = tiny_vae(tuple(cfg.vae_channels), cfg.vae_latent_channels, seed=cfg.seed)
    small = (_float(images, cfg.image_size) * 255).round().to(torch.uint8)  # resize once

    def loss_fn(m, batch, gen):
        x = batch["image"].float() / 127.5 - 1
        rec, kl = m(x, gen)
        return F.mse_loss(rec, x) + cfg.vae_kl_weight * kl

    model = VAEWithKL(vae)
    res = fit(model, loss_fn, ArrayBatches(image=small), steps=cfg.vae_steps, batch_size=cfg.vae_batch,
              lr=cfg.vae_lr, weight_decay=0.0, seed=cfg.seed, desc="vae", progress=progress)
    vae = model.vae.eval().requires_grad_(False)
    return vae, res


@torch.no_grad()
def encode_latent_stats(vae, images, size, batch_size=256):
    """Posterior mean and std (unscaled) of uint8 images: two float tensors (n, C, h, w)."""
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        x = _float(images[i:i + batch_size], size) * 2 - 1
        d = vae.encode(x).latent_dist
        means.append(d.mean)
        stds.append(d.std)
    return torch.cat(means), torch.cat(stds)


def _diffusion_setup(cfg):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(sd_scheduler_config())
    return sched


def diffusion_loss(pred, noise, t, sched, snr_gamma=None):
    """eps-prediction MSE; with ``snr_gamma`` the Min-SNR-γ weighting ``min(SNR, γ) / SNR`` per sample (Hang et
    al. 2023, the ``--snr_gamma`` option of diffusers' training scripts), which speeds up convergence."""
    if not snr_gamma:
        return F.mse_loss(pred, noise)
    ac = sched.alphas_cumprod.to(pred.device)[t]
    snr = ac / (1 - ac)
    w = torch.clamp(snr, max=snr_gamma) / snr
    return (w * ((pred - noise) ** 2).flatten(1).mean(1)).mean()


@torch.no_grad()
def caption_contexts(clip, caption_tokens, batch_size=512):
    """Cross-attention contexts of every caption, computed once: float16 (n, k, L, D) (the CLIP is frozen)."""
    n, k, length = caption_tokens.shape
    flat = caption_tokens.reshape(n * k, length)
    out = [clip_text_tokens_from_ids(clip, flat[i:i + batch_size]).half() for i in range(0, len(flat), batch_size)]
    return torch.cat(out).reshape(n, k, length, -1)


def _pick_context(ctx, empty, gen, dropout):
    """One random caption's context per sample; with probability ``dropout`` the empty caption's."""
    pick = torch.randint(ctx.shape[1], (ctx.shape[0],), generator=gen)
    c = ctx[torch.arange(len(ctx)), pick].float()
    drop = torch.rand(len(c), generator=gen) < dropout
    return torch.where(drop[:, None, None], empty.expand_as(c), c)


class EMAWeights:
    """An exponential moving average of a model's weights (``diffusers.training_utils.EMAModel``, as diffusers'
    ``--use_ema``) driven from inside the loss function: each call first folds in the weights left by the previous
    optimizer step; :meth:`finish` folds in the last step and copies the average into the model."""

    def __init__(self, model, decay):
        from diffusers.training_utils import EMAModel

        self.ema = EMAModel(model.parameters(), decay=decay, foreach=True) if decay else None

    def step(self, model):
        if self.ema is not None:
            self.ema.step(model.parameters())

    def finish(self, model):
        if self.ema is not None:
            self.ema.step(model.parameters())
            self.ema.copy_to(model.parameters())
        return model


def _noisy_latents(batch, scaling, sched, gen):
    z = (batch["mean"] + batch["std"] * torch.randn(batch["mean"].shape, generator=gen)) * scaling
    noise = torch.randn(z.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (len(z),), generator=gen)
    return sched.add_noise(z, noise, t), noise, t


def train_text_unet(cfg, clip, tokenizer, lat_mean, lat_std, scaling, caption_tokens, progress=True,
                    contexts=None):
    """Train the text-to-image UNet on latents ``(mean + std * eps) * scaling``; returns (unet, result)."""
    sched = _diffusion_setup(cfg)
    empty = clip_text_tokens_from_ids(clip, tokenizer([""])).detach()
    contexts = caption_contexts(clip, caption_tokens) if contexts is None else contexts
    unet = tiny_unet(lat_mean.shape[-1], clip.transformer.width, tuple(cfg.unet_channels), seed=cfg.seed,
                     latent_channels=lat_mean.shape[1], head_dim=cfg.unet_head_dim)
    ema = EMAWeights(unet, cfg.ema_decay)

    def loss_fn(m, batch, gen):
        ema.step(m)
        x, noise, t = _noisy_latents(batch, scaling, sched, gen)
        ctx = _pick_context(batch["ctx"], empty, gen, cfg.cfg_dropout)
        pred = m(x, t, encoder_hidden_states=ctx).sample
        return diffusion_loss(pred, noise, t, sched, cfg.snr_gamma)

    data = ArrayBatches(mean=lat_mean, std=lat_std, ctx=contexts)
    res = fit(unet, loss_fn, data, steps=cfg.unet_steps, batch_size=cfg.unet_batch, lr=cfg.unet_lr,
              weight_decay=0.01, seed=cfg.seed, desc="unet", progress=progress)
    return ema.finish(unet).eval().requires_grad_(False), res


def make_unclip_unet(text_unet, image_embed_dim, seed=0):
    """The unCLIP UNet initialised from the text UNet; its class-embedding projection's output layer starts at 0."""
    c = text_unet.config
    unet = tiny_unet(c.sample_size, c.cross_attention_dim, tuple(c.block_out_channels), image_embed_dim, seed,
                     c.in_channels, c.attention_head_dim, c.layers_per_block)
    missing, unexpected = unet.load_state_dict(text_unet.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("class_embedding") for k in missing), (missing, unexpected)
    with torch.no_grad():
        unet.class_embedding.linear_2.weight.zero_()
        unet.class_embedding.linear_2.bias.zero_()
    return unet


def train_unclip_unet(cfg, text_unet, clip, tokenizer, lat_mean, lat_std, scaling, caption_tokens, image_embeds,
                      normalizer, noising, progress=True, contexts=None):
    """Fine-tune the unCLIP UNet (image embedding + text conditioning) from the text UNet."""
    sched = _diffusion_setup(cfg)
    empty = clip_text_tokens_from_ids(clip, tokenizer([""])).detach()
    contexts = caption_contexts(clip, caption_tokens) if contexts is None else contexts
    unet = make_unclip_unet(text_unet, image_embeds.shape[-1], cfg.seed)
    unet.requires_grad_(True)
    ema = EMAWeights(unet, cfg.ema_decay)

    def loss_fn(m, batch, gen):
        ema.step(m)
        x, noise, t = _noisy_latents(batch, scaling, sched, gen)
        ctx = _pick_context(batch["ctx"], empty, gen, cfg.cfg_dropout)
        level = torch.randint(0, cfg.unclip_max_noise_level + 1, (len(x),), generator=gen)
        labels = unclip_class_labels(batch["embed"], level, normalizer, noising, gen)
        keep = (torch.rand(len(x), generator=gen) >= cfg.cfg_dropout).float()[:, None]
        pred = m(x, t, encoder_hidden_states=ctx, class_labels=labels * keep).sample
        return diffusion_loss(pred, noise, t, sched, cfg.snr_gamma)

    data = ArrayBatches(mean=lat_mean, std=lat_std, ctx=contexts, embed=image_embeds)
    res = fit(unet, loss_fn, data, steps=cfg.unclip_steps, batch_size=cfg.unet_batch, lr=cfg.unet_lr,
              weight_decay=0.01, seed=cfg.seed + 1, desc="unclip", progress=progress)
    return ema.finish(unet).eval().requires_grad_(False), res


def pack_texts(tokenizer, texts, seq_len):
    """``<s> text </s>`` per text, truncated/padded to ``seq_len``: LongTensor (n, seq_len) (pad = pad id)."""
    enc = tokenizer([f"{tokenizer.bos_token}{t}{tokenizer.eos_token}" for t in texts], padding="max_length",
                    truncation=True, max_length=seq_len, return_tensors="pt", return_token_type_ids=False)
    return enc["input_ids"]


def group_texts(tokenizer, texts, seq_len):
    """GPT-style pretraining blocks: ``<s> text </s>`` of every text concatenated and cut into (n, seq_len) blocks
    (the remainder is dropped), so that no position is padding."""
    enc = tokenizer([f"{tokenizer.bos_token}{t}{tokenizer.eos_token}" for t in texts], add_special_tokens=False,
                    return_token_type_ids=False, return_attention_mask=False)["input_ids"]
    stream = np.fromiter((i for ids in enc for i in ids), dtype=np.int64)
    n = len(stream) // seq_len
    return torch.from_numpy(stream[:n * seq_len].reshape(n, seq_len))


def train_lm(cfg, train_texts, progress=True):
    """Train the demo tokenizer and causal LM on ``train_texts``; returns (lm, tokenizer, result)."""
    tok = train_bpe_tokenizer(train_texts, cfg.lm_vocab)
    ids = group_texts(tok, train_texts, cfg.lm_seq_len)
    lm = tiny_lm(len(tok), cfg.lm_hidden, cfg.lm_layers, seed=cfg.seed, max_positions=max(256, cfg.lm_seq_len))

    def loss_fn(m, batch, gen):
        x = batch["ids"]
        return m(input_ids=x, labels=x).loss

    res = fit(lm, loss_fn, ArrayBatches(ids=ids), steps=cfg.lm_steps, batch_size=cfg.lm_batch, lr=cfg.lm_lr,
              weight_decay=0.01, seed=cfg.seed, desc="lm", progress=progress)
    return lm.eval().requires_grad_(False), tok, res


def clip_raw_image_embeds(clip, images, batch_size=256):
    """Raw (unnormalised) projected image embeddings of uint8 images."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(clip_image_embeds(clip, _float(images[i:i + batch_size]), normalize=False))
    return torch.cat(out)
