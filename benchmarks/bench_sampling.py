"""Sampling benchmarks: batched classifier-free guidance vs two UNet passes, and DPM-Solver++ 20 vs DDIM 50 steps.

The foundation is the demo ``foundation`` stage when ``$NEURORECON_HOME/artifacts/demo/foundation`` is complete
(:func:`neurorecon.foundation.load_foundation`), prompted with the captions of its held-out images (the shared
test images, as the stage's own evaluation does); otherwise an untrained
:func:`neurorecon.foundation.tiny_random_foundation` prompted with captions of freshly drawn NSD-mini scenes (the
timings are real, the identification scores are then chance-level and say nothing about the samplers). The note
of every row says which was used. Measured side by side in one run, one torch thread:

- CFG: :meth:`Foundation.sample` (one UNet call on the doubled batch: unconditional ⊕ conditional) vs the same
  call with an ``eps_fn`` that splits the doubled batch and calls the UNet twice; same prompts, seed, sampler
  and steps, so the images must agree (their largest difference is in the note); for one image (per-call
  overhead weighs most) and for a batch of ``n_images`` (compute-bound on one CPU thread);
- samplers: DDIM 50 steps vs DPM-Solver++ 20 steps, the time ratio on the same prompts, and the two-way
  identification of each sampler's images against the ground-truth images in the foundation's CLIP
  image-embedding space (:func:`neurorecon.foundation.evaluate.two_way_clip`, as the foundation stage scores
  text-to-image), so that "equal metrics" can be judged.

Timings are the process's CPU time (one thread; less affected than wall clock by other jobs on a shared machine),
wall clock in the notes; variants alternate (A B, B A, ...) and each keeps its best of ``repeats``.
"""

import json
import time

import numpy as np
import torch

from neurorecon.artifacts import is_complete
from neurorecon.foundation import evaluate as E

__all__ = ["run", "load_bench_foundation", "two_pass_eps"]


def load_bench_foundation(n_eval=100, seed=0):
    """(Foundation, uint8 ground-truth images, captions, description, trained?)."""
    if is_complete("foundation", "demo") and is_complete("data", "demo"):
        from neurorecon.data import open_store
        from neurorecon.data.stage import store_path
        from neurorecon.foundation import load_foundation
        from neurorecon.foundation.stage import _eval_set, split_ids

        fm = load_foundation("demo", with_lm=False)
        store = open_store(store_path("demo"))
        _, test_ids = split_ids(store)
        _, gt, caps = _eval_set(store, test_ids, n_eval)
        return fm, gt, caps, "demo foundation stage (trained), held-out test images and captions", True
    from neurorecon.foundation import tiny_random_foundation
    from neurorecon.simulate import scenes

    fm = tiny_random_foundation(with_lm=False)
    rng = np.random.default_rng(seed)
    gt, caps = [], []
    for _ in range(n_eval):
        scene = scenes.sample_scene(rng)
        gt.append(scenes.render_scene(scene, fm.image_size, rng)[0])
        caps.append(max(scenes.scene_captions(scene, rng), key=len))
    return (fm, np.stack(gt), caps, "untrained tiny_random_foundation (no complete demo foundation stage), "
            "NSD-mini scenes drawn here", False)


def two_pass_eps(unet):
    """An ``eps_fn`` for :meth:`Foundation.sample` that runs the UNet separately on the two halves of the CFG batch."""
    dtype = next(unet.parameters()).dtype

    def eps(x, t, ctx, cls):
        halves = zip(x.chunk(2), ctx.chunk(2), (None, None) if cls is None else cls.chunk(2))
        return torch.cat([unet(xi.to(dtype), t, encoder_hidden_states=ci.to(dtype),
                               class_labels=None if li is None else li.to(dtype)).sample.float()
                          for xi, ci, li in halves])

    return eps


def _timed(fn):
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return (time.process_time() - c, time.perf_counter() - w), out


def _ab(fa, fb, repeats):
    """Alternate A B, B A, ...; return (best CPU, best wall) of each and their last outputs."""
    runs, outs = {0: [], 1: []}, {}
    for r in range(repeats):
        for k in ((0, 1) if r % 2 == 0 else (1, 0)):
            t, outs[k] = _timed((fa, fb)[k])
            runs[k].append(t)
    best = [tuple(min(x[i] for x in runs[k]) for i in (0, 1)) for k in (0, 1)]
    return best, outs


def run(n_images=16, n_eval=None, cfg_steps=20, fast=("dpm++", 20), slow=("ddim", 50), guidance_scale=3.0,
        repeats=3, seed=0, threads=1):
    """Run the benchmark and return a list of result dicts (figure, value, unit, note).

    ``n_eval``: held-out prompts scored per sampler (default 100 with the trained demo foundation, the stage's
    ``n_eval``; 32 with the untrained stand-in, whose scores mean nothing anyway).
    """
    if threads:
        torch.set_num_threads(threads)
    trained = is_complete("foundation", "demo") and is_complete("data", "demo")
    fm, gt, caps, which, trained = load_bench_foundation(n_eval or (100 if trained else 32), seed)
    n_params = sum(p.numel() for p in fm.unet.parameters())
    about = (f"{which}; text UNet {n_params / 1e6:.2f} M params, {fm.latent_channels}x{fm.latent_size}x"
             f"{fm.latent_size} latents, {fm.image_size} px, {torch.get_num_threads()} thread(s)")
    rows = []

    def sample(ctx, **kw):
        return lambda: fm.sample(ctx, guidance_scale=guidance_scale, seed=seed, **kw)

    for n in sorted({1, n_images}):  # one image (per-call overhead matters) and a batch (compute-bound)
        ctx = fm.text_tokens(caps[:n])
        best, outs = _ab(sample(ctx, num_steps=cfg_steps, scheduler=fast[0]),
                         sample(ctx, num_steps=cfg_steps, scheduler=fast[0], eps_fn=two_pass_eps(fm.unet)), repeats)
        (b, bw), (s, sw) = best
        diff = float((outs[0] - outs[1]).abs().max())
        rows.append(dict(
            figure=f"sampling: two sequential UNet passes / batched CFG (time, {n} image{'s' * (n > 1)})",
            value=s / b, unit="ratio",
            note=f"{n} image(s), {fast[0]} {cfg_steps} steps, guidance {guidance_scale}: CPU batched {b:.2f} s, two "
                 f"passes {s:.2f} s (wall {bw:.2f} / {sw:.2f} s, best of {repeats}); images agree to {diff:.1e}; "
                 f"{about}; goal ≥ 1.6"))

    ctx = fm.text_tokens(caps[:n_images])
    best, _ = _ab(sample(ctx, num_steps=fast[1], scheduler=fast[0]), sample(ctx, num_steps=slow[1], scheduler=slow[0]),
                  repeats)
    (f, fw), (sl, slw) = best
    rows.append(dict(
        figure=f"sampling: {slow[0]} {slow[1]} steps / {fast[0]} {fast[1]} steps (time)", value=sl / f, unit="ratio",
        note=f"{n_images} images, guidance {guidance_scale}: CPU {fast[0]} {f:.2f} s, {slow[0]} {sl:.2f} s (wall "
             f"{fw:.2f} / {slw:.2f} s, best of {repeats}); {about}"))

    meaning = ("trained foundation: the scores are comparable" if trained else
               "UNTRAINED random foundation: chance-level scores that say nothing about the samplers")
    gens, scores = {}, {}
    for kind, steps in (fast, slow):
        t, gens[kind] = _timed(lambda: E.generate_from_captions(fm, caps, kind, steps, guidance_scale, seed))
        scores[kind] = (E.two_way_clip(fm, gt, gens[kind]), t[1])
    gap = float((gens[fast[0]] - gens[slow[0]]).abs().mean())
    for kind, steps in (fast, slow):
        rows.append(dict(
            figure=f"sampling: two-way identification, {kind} {steps} steps", value=scores[kind][0], unit="accuracy",
            note=f"{len(caps)} held-out captions → one image each vs their ground truths, CLIP image embeddings "
                 f"(chance 0.5); generated in {scores[kind][1]:.1f} s wall; mean |pixel difference| between the "
                 f"two samplers' images {gap:.3f}; {meaning}; {about}"))
    return rows


if __name__ == "__main__":
    for row in run():
        print(json.dumps(row))
