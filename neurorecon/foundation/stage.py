"""Stage ``foundation`` (notebook 02): train the demo foundation models on NSD-mini training images and captions
(demo/smoke), or load and check the real weights (full); measure them on held-out images and captions.

Only the images in some subject's training split (and their captions) are used for training; the shared test
images are held out for the measurements.
"""

import json
import time

import numpy as np
import torch

from ..artifacts import StageWriter, is_complete, require_stage
from ..data import open_store
from ..data.stage import store_path
from ..errors import ConfigError
from . import evaluate as E
from .load import (COMPONENTS, PATHS_FILE, REQUIRED_COMPONENTS, config_paths, configured_components, demo_paths,
                   load_from_paths, with_requirements)
from .save import save_clip, save_lm, save_sd, save_unclip
from ..simulate.scenes import CATEGORY_SHAPES, COLORS
from .text import corpus, grounded_chats, longest_caption, lookup_questions
from .tiny import sd_scheduler_config, unclip_noising_scheduler, unclip_normalizer
from .train import (caption_contexts, clip_raw_image_embeds, encode_latent_stats, train_clip, train_lm,
                    train_text_unet, train_unclip_unet, train_vae)

__all__ = ["run_foundation_stage", "split_ids", "LM_PROMPTS", "n_params"]

#: Prompts of the LM samples shown in the notebook and stored with the stage.
LM_PROMPTS = ["Question: what colour is the ball on the left? Answer:", "The image shows two objects",
              "Question: how many objects are in the image? Answer:", "A small blue"]


def n_params(module):
    return int(sum(p.numel() for p in module.parameters()))


def split_ids(store):
    """(training image ids: union of every subject's training images, held-out ids: the shared test images)."""
    train = np.unique(np.concatenate([store.subject(s).train_image_ids for s in store.subjects]))
    test = np.unique(np.concatenate([store.subject(s).test_image_ids for s in store.subjects]))
    assert not np.isin(train, test).any(), "a shared test image is in some subject's training split"
    return train, test


def _eval_set(store, test_ids, n):
    ids = test_ids[:n]
    return ids, store.get_images(ids), [longest_caption(store.annotations[int(i)]) for i in ids]


def _train_all(cfg, store, folder, w, log, progress):
    import open_clip

    train_ids, _ = split_ids(store)
    images = store.get_images(train_ids)
    captions = [store.annotations[int(i)]["captions"] for i in train_ids]
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=cfg.context_length)
    k = min(len(c) for c in captions)
    cap_tokens = tok([c for caps in captions for c in caps[:k]]).view(len(captions), k, -1)
    w.add_metric("data", "all", "train", "n_images", len(train_ids))
    timings, cpu, losses = {}, {}, {}
    c0 = time.process_time()

    t0 = time.time()
    clip, tok, res, mcfg = train_clip(cfg, images, cap_tokens, cfg.context_length, progress=progress,
                                      lowres=cfg.image_size)
    save_clip(folder / "clip", clip, mcfg)
    timings["clip"], losses["clip"] = time.time() - t0, res.losses
    cpu["clip"], c0 = time.process_time() - c0, time.process_time()
    log(f"clip: {n_params(clip) / 1e6:.2f} M params, {res.steps} steps, {timings['clip']:.0f} s, "
        f"loss {res.losses[0][1]:.3f} -> {res.losses[-1][1]:.3f}")

    t0 = time.time()
    vae, res = train_vae(cfg, images, progress=progress)
    mean, std = encode_latent_stats(vae, images, cfg.image_size)
    scaling = float(1.0 / torch.sqrt(mean.var() + (std ** 2).mean()))
    vae.register_to_config(scaling_factor=scaling)
    timings["vae"], losses["vae"] = time.time() - t0, res.losses
    cpu["vae"], c0 = time.process_time() - c0, time.process_time()
    log(f"vae: {n_params(vae) / 1e6:.2f} M params, latents {tuple(mean.shape[1:])}, scaling {scaling:.3f}, "
        f"{timings['vae']:.0f} s, loss {res.losses[0][1]:.4f} -> {res.losses[-1][1]:.4f}")

    t0 = time.time()
    contexts = caption_contexts(clip, cap_tokens)
    unet, res = train_text_unet(cfg, clip, tok, mean, std, scaling, cap_tokens, progress=progress, contexts=contexts)
    sched_cfg = sd_scheduler_config()
    save_sd(folder / "sd", unet, vae, sched_cfg)
    timings["unet"], losses["unet"] = time.time() - t0, res.losses
    cpu["unet"], c0 = time.process_time() - c0, time.process_time()
    log(f"unet: {n_params(unet) / 1e6:.2f} M params, {timings['unet']:.0f} s, "
        f"loss {res.losses[0][1]:.4f} -> {res.losses[-1][1]:.4f}")

    t0 = time.time()
    embeds = clip_raw_image_embeds(clip, images)
    normalizer, noising = unclip_normalizer(embeds), unclip_noising_scheduler()
    unclip, res = train_unclip_unet(cfg, unet, clip, tok, mean, std, scaling, cap_tokens, embeds, normalizer,
                                    noising, progress=progress, contexts=contexts)
    save_unclip(folder / "unclip", unclip, vae, sched_cfg, normalizer, noising)
    timings["unclip"], losses["unclip"] = time.time() - t0, res.losses
    cpu["unclip"], c0 = time.process_time() - c0, time.process_time()
    log(f"unclip: {timings['unclip']:.0f} s, loss {res.losses[0][1]:.4f} -> {res.losses[-1][1]:.4f}")

    t0 = time.time()
    texts = corpus(store.annotations, train_ids)
    if cfg.lm_grounded:
        texts += grounded_chats(cfg.lm_grounded, seed=cfg.seed)
        texts = [texts[i] for i in np.random.default_rng(cfg.seed).permutation(len(texts))]
    lm, lm_tok, res = train_lm(cfg, texts, progress=progress)
    save_lm(folder / "lm", lm, lm_tok)
    timings["lm"], losses["lm"] = time.time() - t0, res.losses
    cpu["lm"], c0 = time.process_time() - c0, time.process_time()
    log(f"lm: {n_params(lm) / 1e6:.2f} M params, vocab {len(lm_tok)}, {len(texts)} texts, {timings['lm']:.0f} s, "
        f"loss {res.losses[0][1]:.3f} -> {res.losses[-1][1]:.3f}")
    for name, sec in timings.items():
        w.add_metric(name, "all", "train", "train_seconds", sec)
        w.add_metric(name, "all", "train", "train_cpu_seconds", cpu[name])
    for name, mod in (("clip", clip), ("vae", vae), ("unet", unet), ("unclip", unclip), ("lm", lm)):
        w.add_metric(name, "all", "all", "n_params", n_params(mod))
    (folder / "train_log.json").write_text(json.dumps(dict(losses=losses, seconds=timings, cpu_seconds=cpu)))
    return texts


def _evaluate(cfg, fm, store, folder, w, train_texts, log):
    _, test_ids = split_ids(store)
    ids, gt, caps = _eval_set(store, test_ids, cfg.n_eval)
    n = len(ids)
    t0, c0 = time.time(), time.process_time()
    i2t, t2i = E.clip_retrieval(fm, gt, caps)
    w.add_metric("clip", "all", "test", "retrieval_image_to_caption_top1", i2t)
    w.add_metric("clip", "all", "test", "retrieval_caption_to_image_top1", t2i)
    w.add_metric("clip", "all", "test", "retrieval_chance", 1.0 / n)
    log(f"clip retrieval among {n} held-out pairs: image->caption {i2t:.1%}, caption->image {t2i:.1%} "
        f"(chance {1 / n:.1%})")
    rec, p, s = E.vae_quality(fm, gt)
    w.add_metric("vae", "all", "test", "psnr", p)
    w.add_metric("vae", "all", "test", "ssim", s)
    w.add_metric("vae", "all", "test", "two_way_clip", E.two_way_clip(fm, gt, rec))
    log(f"vae: PSNR {p:.2f} dB, SSIM {s:.3f} at {fm.image_size} px")
    out = dict(ids=ids, gt=gt, vae=E.to_uint8(rec))
    w.add_metric("ground_truth", "all", "test", "two_way_clip_text", E.two_way_clip_text(fm, caps, gt))
    for sampler in ("dpm++", "ddim"):
        scores, texts = [], []
        for k in range(cfg.eval_seeds):  # one generation per caption and seed; one seed's score varies by ~0.02
            gen = E.generate_from_captions(fm, caps, sampler, cfg.sample_steps, cfg.guidance_scale, cfg.seed + k)
            scores.append(E.two_way_clip(fm, gt, gen))
            texts.append(E.two_way_clip_text(fm, caps, gen))
            w.add_metric(f"t2i_{sampler}", "all", "test", f"two_way_clip_text@seed{cfg.seed + k}", texts[-1])
            if k == 0:
                out[f"t2i_{sampler}"] = E.to_uint8(gen)
        score, text = float(np.mean(scores)), float(np.mean(texts))
        w.add_metric(f"t2i_{sampler}", "all", "test", "two_way_clip", score)
        w.add_metric(f"t2i_{sampler}", "all", "test", "two_way_clip_text", text)
        log(f"text-to-image ({sampler}, {cfg.sample_steps} steps, CFG {cfg.guidance_scale}, mean of "
            f"{cfg.eval_seeds} seed(s)): two-way identification against the prompts {text:.1%} "
            f"({', '.join(f'{t:.1%}' for t in texts)}), against the prompts' images {score:.1%}")
    if fm.unclip_unet is not None:
        gen = E.generate_from_captions(fm, caps, cfg.sampler, cfg.sample_steps, cfg.guidance_scale, cfg.seed,
                                       image_embeds=fm.image_embeds(gt, normalize=False))
        score = E.two_way_clip(fm, gt, gen)
        w.add_metric("unclip", "all", "test", "two_way_clip", score)
        out["unclip"] = E.to_uint8(gen)
        log(f"unCLIP from ground-truth image embeddings + captions: two-way identification {score:.1%}")
    samples = []
    if fm.lm is not None:
        test_texts = corpus(store.annotations, test_ids)
        ppl, count = E.lm_perplexity(fm.lm, fm.lm_tokenizer, test_texts, cfg.lm_seq_len)
        uni = E.unigram_perplexity(fm.lm_tokenizer, train_texts, test_texts, cfg.lm_seq_len)
        w.add_metric("lm", "all", "test", "perplexity", ppl)
        w.add_metric("lm", "all", "test", "unigram_perplexity", uni)
        w.add_metric("lm", "all", "test", "n_tokens", count)
        log(f"lm: held-out perplexity {ppl:.2f} vs unigram {uni:.2f} on {count} tokens")
        if cfg.lm_lookup_probes:
            # seed + 1000: other scenes than the grounded chats' (which use the seed itself)
            acc = E.context_lookup(fm.lm, fm.lm_tokenizer, lookup_questions(cfg.lm_lookup_probes, cfg.seed + 1000))
            chance = dict(color=1 / len(COLORS), shape=1 / len(set(CATEGORY_SHAPES.values())))
            for kind, v in acc.items():
                w.add_metric("lm", "all", "test", f"context_lookup_{kind}", v)
                w.add_metric("lm", "all", "test", f"context_lookup_{kind}_chance", chance[kind])
            log("lm: answers read from a scene described in the prompt (held-out random scenes): "
                + ", ".join(f"{k} {v:.1%} (chance {chance[k]:.1%})" for k, v in acc.items()))
        samples = E.lm_samples(fm.lm, fm.lm_tokenizer, LM_PROMPTS)
    w.add_metric("evaluate", "all", "test", "seconds", time.time() - t0)
    w.add_metric("evaluate", "all", "test", "cpu_seconds", time.process_time() - c0)
    np.savez_compressed(folder / "eval_samples.npz", **out)
    (folder / "eval_captions.json").write_text(json.dumps(dict(
        captions=caps, lm_prompts=LM_PROMPTS, lm_samples=samples), indent=1))


def run_foundation_stage(cfg, force=False, progress=True, log=print, config_file=None):
    """Run the foundation stage for a config; returns the stage folder.

    demo/smoke: train every model on the training images of the prepared store, save them in their libraries'
    formats, reload them through :func:`neurorecon.foundation.load_foundation`'s code path and measure them on
    the held-out shared images. full: check and load the configured weights, then measure them the same way.
    A stage already complete with the same config is reused unless ``force``.
    """
    if cfg.eval_seeds < 1:
        raise ConfigError(f"foundation config ({cfg.profile}): eval_seeds={cfg.eval_seeds!r}; expected an integer >= 1 "
                          "(text-to-image generations per held-out caption)")
    for key in ("lm_grounded", "lm_lookup_probes"):
        if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 0:
            raise ConfigError(f"foundation config ({cfg.profile}): {key}={getattr(cfg, key)!r}; expected an integer >= 0")
    if not force and is_complete(cfg.STAGE, cfg.profile, cfg.digest()):
        return require_stage(cfg.STAGE, cfg.profile)
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _run(cfg, progress, log)
    finally:
        torch.set_num_threads(threads)


def _run(cfg, progress, log):
    torch.manual_seed(cfg.seed)
    t_start, c_start = time.time(), time.process_time()
    with StageWriter(cfg) as w:
        store = open_store(store_path(cfg.profile))
        if cfg.profile == "full":  # load and check the real weights, then measure them like the demo ones
            paths = config_paths(cfg)
            components = with_requirements(REQUIRED_COMPONENTS + configured_components(paths))
            fm = load_from_paths(paths, "full", cfg.device, cfg.dtype, components=components)
            for name in COMPONENTS:  # which optional parts later stages can use: a line each, never silent
                w.add_metric(name, "all", "all", "configured", float(name in components))
                if name not in components:
                    log(f"foundation: {name} ({COMPONENTS[name][1]}) not configured: stages that need it will "
                        f"ask for {COMPONENTS[name][0][0]}")
            for name, mod in (("unet", fm.unet), ("vae", fm.vae), ("unclip", fm.unclip_unet), ("lm", fm.lm)):
                if mod is not None:
                    w.add_metric(name, "all", "all", "n_params", n_params(mod))
            keep = {k for c in components for k in COMPONENTS[c][0]}
            (w.path / PATHS_FILE).write_text(json.dumps({k: v for k, v in paths.items() if k in keep}, indent=1))
            texts = corpus(store.annotations, split_ids(store)[0])
        else:
            texts = _train_all(cfg, store, w.path, w, log, progress)
            fm = load_from_paths(demo_paths(w.path), cfg.profile, "cpu", "float32")
        w.add_metric("foundation", "all", "all", "image_size", fm.image_size)
        _evaluate(cfg, fm, store, w.path, w, texts, log)
        w.add_metric("foundation", "all", "all", "stage_seconds", time.time() - t_start)
        w.add_metric("foundation", "all", "all", "stage_cpu_seconds", time.process_time() - c_start)
    log(f"foundation stage ({cfg.profile}) done in {time.time() - t_start:.0f} s "
        f"({time.process_time() - c_start:.0f} s CPU time, {torch.get_num_threads()} torch thread(s))")
    return require_stage(cfg.STAGE, cfg.profile)
