"""Measured quality of foundation models on held-out images and captions (demo: the shared test images).

- CLIP: top-1 retrieval image→caption and caption→image among the held-out pairs (chance 1/n);
- VAE: PSNR and SSIM of reconstructions at the generators' resolution;
- text-to-image: two-way identification (:func:`neurorecon.metrics.two_way_identification`) of one generation
  per held-out caption against the ground-truth images, in the CLIP image-embedding space (the demo CLIP metric);
- unCLIP: the same for generations conditioned on the ground-truth image embedding and caption;
- LM: held-out perplexity against a unigram baseline (add-one smoothing of the training counts) on the same tokens.
"""

import math

import numpy as np
import torch

from ..metrics import retrieval_top1, two_way_identification
from .interface import to_float_images

__all__ = ["clip_retrieval", "vae_quality", "psnr", "ssim", "generate_from_captions", "two_way_clip", "two_way_clip_text",
           "lm_perplexity", "unigram_perplexity", "lm_samples", "context_lookup",
           "to_uint8"]


def to_uint8(images):
    """Float (n, 3, H, W) in [0, 1] → uint8 (n, H, W, 3)."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def clip_retrieval(fm, images, captions):
    """(image→caption, caption→image) top-1 accuracy among paired held-out images and captions."""
    return retrieval_top1(fm.image_embeds(images), fm.text_embeds(captions))


def psnr(a, b):
    """Mean PSNR (dB) of float image batches in [0, 1], per image."""
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def ssim(a, b):
    """Mean SSIM of float (n, 3, H, W) batches in [0, 1] at their own size, on the RGB channels (the VAE check;
    the protocol's SSIM is grey-scale at 425 px): :func:`neurorecon.evaluation.lowlevel.ssim` with ``size=None,
    grey=False``."""
    from ..evaluation.lowlevel import ssim as _ssim

    return _ssim(b, a, size=None, grey=False)


@torch.no_grad()
def vae_quality(fm, images):
    """(reconstructions, PSNR, SSIM) of uint8 images through the VAE at ``fm.image_size``."""
    x = to_float_images(images, fm.image_size)
    rec = fm.decode_latents(fm.encode_images(images))
    return rec, psnr(rec, x), ssim(rec, x)


@torch.no_grad()
def generate_from_captions(fm, captions, sampler="dpm++", steps=20, guidance=3.0, seed=0, image_embeds=None):
    """One image per caption (float (n, 3, S, S)); with raw ``image_embeds`` through the unCLIP UNet."""
    return fm.sample(fm.text_tokens(captions), image_embeds=image_embeds, guidance_scale=guidance,
                     num_steps=steps, scheduler=sampler, seed=seed)


def two_way_clip(fm, gt_images, generated):
    """Two-way identification of generations against ground truths with the foundation's CLIP image embeddings."""
    return two_way_identification(fm.image_embeds(gt_images), fm.image_embeds(generated))


def two_way_clip_text(fm, prompts, generated):
    """Two-way identification of generations against their prompts: the CLIP image embedding of each generation
    must correlate more with its own prompt's CLIP text embedding than with another prompt's."""
    return two_way_identification(fm.text_embeds(prompts), fm.image_embeds(generated))


def _token_batches(tokenizer, texts, seq_len):
    from .train import pack_texts

    ids = pack_texts(tokenizer, texts, seq_len)
    pad = tokenizer.pad_token_id
    targets = ids[:, 1:]
    return ids, targets, targets != pad


@torch.no_grad()
def lm_perplexity(lm, tokenizer, texts, seq_len, batch_size=64):
    """Held-out perplexity: exp of the mean NLL of every predicted token (after ``<s>``, pads excluded)."""
    ids, targets, mask = _token_batches(tokenizer, texts, seq_len)
    pad = tokenizer.pad_token_id
    nll, count = 0.0, 0
    for i in range(0, len(ids), batch_size):
        x = ids[i:i + batch_size]
        logits = lm(input_ids=x, attention_mask=(x != pad).long()).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, targets[i:i + batch_size, :, None])[..., 0]
        m = mask[i:i + batch_size]
        nll -= float(lp[m].sum())
        count += int(m.sum())
    return math.exp(nll / count), count


def unigram_perplexity(tokenizer, train_texts, test_texts, seq_len):
    """Perplexity of an add-one-smoothed unigram model (training counts) on the same held-out tokens."""
    _, tr, trm = _token_batches(tokenizer, train_texts, seq_len)
    _, te, tem = _token_batches(tokenizer, test_texts, seq_len)
    v = len(tokenizer)
    counts = torch.bincount(tr[trm], minlength=v).double()
    logp = torch.log((counts + 1) / (counts.sum() + v))
    return math.exp(-float(logp[te[tem]].mean()))


@torch.no_grad()
def lm_samples(lm, tokenizer, prompts, max_new_tokens=24):
    """Greedy continuations of prompts (strings without special tokens)."""
    out = []
    for p in prompts:
        enc = tokenizer(tokenizer.bos_token + p, return_tensors="pt", return_token_type_ids=False)
        gen = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


@torch.no_grad()
def context_lookup(lm, tokenizer, probes, max_new_tokens=14):
    """Accuracy of greedy answers that must be read from the prompt (:func:`~neurorecon.foundation.text.lookup_questions`).

    An answer is correct when its first sentence holds the expected word. Returns ``{kind: accuracy}``.
    """
    hits = {}
    for prompt, kind, word in probes:
        enc = tokenizer(tokenizer.bos_token + prompt, return_tensors="pt", return_token_type_ids=False,
                        add_special_tokens=False)
        gen = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        answer = tokenizer.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).split(".")[0]
        hits.setdefault(kind, []).append(word in answer.split())
    return {kind: float(np.mean(v)) for kind, v in hits.items()}
