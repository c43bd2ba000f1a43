"""Concept localisation as NV2L does it: the LLM extracts the concept from the instruction, Grad-CAM on the
ViT3D tokens (an ensemble over patch sizes) locates it in the fMRI, and ablating the located voxels removes the
concept from the reconstruction more than ablating as many random voxels.

Extraction
    :func:`extract_concepts` asks the brain LLaVA's LM, text only (no fMRI tokens), in the brain LLaVA's chat
    format, which object an instruction (``"Where is the cup in the image?"``) is about, decodes greedily and maps
    the answer to a known concept word (:func:`concept_word`: the first vocabulary word, or its plural, in the
    answer). An answer without one is *unextracted*: counted and reported, never replaced by the true concept.
Evidence
    The cosine similarity between the ViT3D's predicted CLIP image embedding and the CLIP text embedding of the
    concept (``fm.text_embeds([prompt])``); with ``contrast`` (the text embeddings of every vocabulary concept)
    minus its mean over the *other* concepts, which removes the direction all concept prompts share ("a photo of
    an object"), so maps of two concepts of one image can differ.
Maps
    :func:`gradcam` on the tokens entering the last transformer block: ``"gradcam"`` weights each channel by the
    gradient averaged over patch tokens (Selvaraju et al.); ``"token"`` keeps each token's own gradient x
    activation (no averaging over tokens); ``"voxel"`` is gradient x input on the z-scored voxels (voxel
    resolution). The positive part is kept; a cube's value goes to every voxel in it. :func:`concept_maps`
    averages the voxel maps of several ViT3Ds (NV2L's ensemble over patch sizes), each row scaled to mean 1.
Validation
    :func:`ablation_check` sets the top ``fraction`` of the map's voxels (and, as the control, as many random
    voxels) to their training mean (zero after z-scoring) and measures the evidence; :func:`reconstruction_ablation`
    sends the ablated fMRI through a reconstruction function (NV2L's: notebook 07) and scores the concept in the
    reconstructed image (CLIP similarity of the image to the concept's text).
Specificity
    :func:`map_specificity` compares maps of different concepts of one image, and, given the simulator's
    category tuning of the voxels (:func:`neurorecon.simulate.truth.category_tuning`), how well each map follows
    its own concept's tuning compared with the other concepts'.
"""

import re

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..devices import to_module

__all__ = ["CONCEPT_INSTRUCTIONS", "EXTRACTION_PROMPT", "CAM_METHODS", "concept_instructions", "concept_word",
           "extract_concepts", "concept_evidence", "gradcam", "voxel_map", "concept_maps", "ablate", "top_mask",
           "random_masks", "ablation_check", "reconstruction_ablation", "map_specificity", "union_truth",
           "volume_from_voxels"]

#: Ways a user asks where an object is (the test instructions of the extraction; the first is the concept
#: record's own template, the others are not in the training data).
CONCEPT_INSTRUCTIONS = ('Locating the concept of "{}"', "Where is the {} in the image?", "Locate the {}.",
                        "Find the {} in this picture.", "Show me where the {} is.", "Is there a {} anywhere?")
#: The extraction question put to the LM (``{}``: the user's instruction).
EXTRACTION_PROMPT = 'Which object is this instruction about: "{}"? Answer with one word.'
CAM_METHODS = ("gradcam", "token", "voxel")


def concept_instructions(concepts, seed=0, templates=CONCEPT_INSTRUCTIONS):
    """One instruction per concept, the template drawn at random (seeded)."""
    rng = np.random.default_rng(seed)
    return [templates[int(rng.integers(len(templates)))].format(c) for c in concepts]


def _forms(word, plural=None):
    forms = {word, plural or (word + "es" if word.endswith(("s", "x", "ch", "sh")) else word + "s")}
    return sorted(forms, key=len, reverse=True)


def concept_word(answer, vocabulary, plurals=None):
    """The vocabulary word an LM answer names (the earliest one in the answer, singular or plural), else None."""
    text = str(answer).lower()
    best = None
    for w in vocabulary:
        for f in _forms(w, (plurals or {}).get(w)):
            m = re.search(r"\b" + re.escape(f.lower()) + r"\b", text)
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), w)
    return best[1] if best else None


@torch.no_grad()
def extract_concepts(lm, tokenizer, instructions, vocabulary, prompt=EXTRACTION_PROMPT, max_new_tokens=8,
                     batch_size=64, plurals=None):
    """The concept of each instruction as the LM extracts it (greedy, text only).

    Parameters
    ----------
    lm : transformers causal LM (the brain LLaVA's ``lm``, LoRA-wrapped or not)
    tokenizer : its tokenizer (with a pad token)
    instructions : list of str
    vocabulary : sequence of str
        Known concept words.
    prompt : str
        The extraction question, ``{}`` = the instruction; put in the brain LLaVA's chat format.

    Returns
    -------
    answers : list of str
        The LM's raw answers.
    concepts : list of str or None
        The vocabulary word of each answer, None where the answer names none.
    """
    from .llava import BOT, HUMAN

    was = lm.training
    lm.eval()
    device = next(lm.parameters()).device
    start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        tokenizer.eos_token_id
    answers = []
    for a in range(0, len(instructions), batch_size):
        seqs = [start + tokenizer(HUMAN + prompt.format(q) + BOT, add_special_tokens=False)["input_ids"]
                for q in instructions[a:a + batch_size]]
        L = max(len(s) for s in seqs)
        ids = torch.tensor([[pad] * (L - len(s)) + s for s in seqs], device=device)
        mask = torch.tensor([[0] * (L - len(s)) + [1] * len(s) for s in seqs], device=device)
        gen = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                          num_beams=1, eos_token_id=eos, pad_token_id=pad)
        for row in gen[:, L:].tolist():
            row = row[: row.index(eos)] if eos in row else row
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    lm.train(was)
    return answers, [concept_word(t, vocabulary, plurals) for t in answers]


def _evidence(pred, text_embeds, contrast=None):
    t = text_embeds.to(pred.device, pred.dtype).expand_as(pred)
    ev = F.cosine_similarity(pred, t, dim=-1)
    if contrast is not None:  # minus the mean similarity to the other concepts
        c = F.normalize(contrast.to(pred.device, pred.dtype), dim=-1)
        sims = F.normalize(pred, dim=-1) @ c.T  # (b, n_concepts)
        own = (F.normalize(t, dim=-1) @ c.T).argmax(1)  # which column is the case's own concept
        others = torch.ones_like(sims).scatter_(1, own[:, None], 0.0)
        ev = ev - (sims * others).sum(1) / others.sum(1).clamp(min=1)
    return ev


def concept_evidence(model, voxels, text_embeds, contrast=None):
    """The concept's evidence per row (differentiable; see the module doc)."""
    pred = model.unstandardise(model(to_module(voxels, model)))["clip"]
    return _evidence(pred, text_embeds, contrast)


def gradcam(model, voxels, text_embeds, method="gradcam", contrast=None):
    """Concept maps of one ViT3D.

    Parameters
    ----------
    model : ViT3D
    voxels : Tensor (b, V)
        Raw (unnormalised) voxel rows.
    text_embeds : Tensor (b, E) or (1, E)
    method : {"gradcam", "token", "voxel"}
    contrast : Tensor (n_concepts, E), optional
        Text embeddings of every concept (contrastive evidence).

    Returns
    -------
    Tensor, non-negative
        (b, n_patches) for ``gradcam`` and ``token``, (b, V) for ``voxel``.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"concept map method {method!r}: expected one of {CAM_METHODS}")
    model.eval()
    x = to_module(voxels, model)  # on the model's device and in its dtype, wherever the voxels came from
    depth = len(model.blocks)
    with torch.enable_grad():
        if method == "voxel":
            z = ((x.float() - model.voxel_mean) / model.voxel_std).detach().requires_grad_(True)
            out = model.unstandardise(model(z * model.voxel_std + model.voxel_mean))["clip"]
            (grad,) = torch.autograd.grad(_evidence(out, text_embeds, contrast).sum(), z)
            return torch.relu(grad * z).detach()
        h = model.run_blocks(model.embed(x), 0, depth - 1).detach().requires_grad_(True)
        out = model.unstandardise(model.heads(model.run_blocks(h, depth - 1)))["clip"]
        (grad,) = torch.autograd.grad(_evidence(out, text_embeds, contrast).sum(), h)
    if method == "token":
        return torch.relu((grad[:, 1:] * h[:, 1:]).sum(-1)).detach()
    weights = grad[:, 1:].mean(1, keepdim=True)
    return torch.relu((weights * h[:, 1:]).sum(-1)).detach()


def voxel_map(model, cam):
    """Per-patch maps (b, n_patches) → per-voxel maps (b, V) (voxel maps pass through)."""
    if cam.shape[1] == model.grid.n_voxels and cam.shape[1] != model.grid.n_patches:
        return cam
    return cam[:, torch.as_tensor(model.grid.voxel_patch, device=cam.device)]


def concept_maps(models, voxels, text_embeds, method="gradcam", contrast=None, batch_size=256):
    """Voxel maps (b, V) averaged over ViT3Ds (each row of each model's map scaled to mean 1 first), on the CPU.

    Parameters
    ----------
    models : ViT3D or list of ViT3D
        One encoder, or NV2L's ensemble over patch sizes (same voxels, any patch grid).
    voxels, text_embeds, method, contrast : see :func:`gradcam`.
    """
    models = models if isinstance(models, (list, tuple)) else [models]
    out = []
    for a in range(0, len(voxels), batch_size):
        x, t = voxels[a:a + batch_size], text_embeds if len(text_embeds) == 1 else text_embeds[a:a + batch_size]
        acc = 0.0
        for m in models:
            vm = voxel_map(m, gradcam(m, x, t, method, contrast)).float().cpu()
            acc = acc + vm / vm.mean(1, keepdim=True).clamp(min=1e-12)
        out.append(acc / len(models))
    return torch.cat(out)


def ablate(model, voxels, mask):
    """Set voxels where ``mask`` (b, V) is true to their training mean (zero after z-scoring)."""
    x = to_module(voxels, model)
    return torch.where(mask.to(x.device), model.voxel_mean.to(x.dtype).expand_as(x), x)


def top_mask(maps, k, rng):
    """Boolean (b, V): the ``k`` largest values of each row (ties, e.g. the voxels of one cube, broken at random)."""
    jitter = torch.from_numpy(rng.random(maps.shape)).to(maps.device, maps.dtype) * 1e-9 * (maps.abs().max() + 1)
    idx = torch.topk(maps + jitter, k, dim=1).indices
    mask = torch.zeros_like(maps, dtype=torch.bool)
    mask.scatter_(1, idx, True)
    return mask


def random_masks(shape, k, n_draws, rng):
    """``n_draws`` boolean (b, V) masks of ``k`` random voxels per row."""
    b, V = shape
    out = []
    for _ in range(n_draws):
        idx = torch.from_numpy(np.argsort(rng.random((b, V)), axis=1)[:, :k])
        out.append(torch.zeros(b, V, dtype=torch.bool).scatter_(1, idx, True))
    return out


@torch.no_grad()
def ablation_check(model, voxels, text_embeds, fraction=0.1, n_random=5, seed=0, maps=None, contrast=None,
                   method="gradcam"):
    """Evidence before and after removing the located vs random voxels.

    Parameters
    ----------
    model : ViT3D
    voxels : Tensor (b, V)
        One fMRI row per (image, concept) case.
    text_embeds : Tensor (b, E)
        The concept of each case.
    fraction : float
        Share of the union voxels removed.
    n_random : int
        Random draws averaged for the control.
    maps : Tensor (b, V), optional
        The concept maps (default: :func:`concept_maps` of ``model`` alone).

    Returns
    -------
    pandas.DataFrame
        Per case: ``evidence``, ``evidence_located``, ``evidence_random``, ``drop_located``, ``drop_random``.
    """
    rng = np.random.default_rng(seed)
    x = to_module(voxels, model)
    V = x.shape[1]
    k = max(1, int(round(fraction * V)))
    maps = concept_maps(model, x, text_embeds, method, contrast) if maps is None else maps
    base = concept_evidence(model, x, text_embeds, contrast)
    located = concept_evidence(model, ablate(model, x, top_mask(maps, k, rng)), text_embeds, contrast)
    rand = [concept_evidence(model, ablate(model, x, m), text_embeds, contrast)
            for m in random_masks(tuple(maps.shape), k, n_random, rng)]
    base, located, rand = (v.float().cpu() for v in (base, located, torch.stack(rand).mean(0)))
    return pd.DataFrame(dict(evidence=base.numpy(), evidence_located=located.numpy(), evidence_random=rand.numpy(),
                             drop_located=(base - located).numpy(), drop_random=(base - rand).numpy()))


@torch.no_grad()
def reconstruction_ablation(reconstruct, score, model, voxels, maps, text_embeds, fraction=0.1, n_random=3, seed=0):
    """The concept's score in reconstructions of the fMRI, as it is, with the located voxels ablated and with as
    many random voxels ablated.

    Parameters
    ----------
    reconstruct : callable
        ``voxels (n, V) float32 array -> images`` (uint8 (n, H, W, 3) or float (n, 3, H, W)); the same noise for
        row ``k`` on every call (a fixed seed), so the differences come from the fMRI.
    score : callable
        ``(images, text_embeds (n, E)) -> (n,)`` the concept's score of each image (e.g. CLIP similarity).
    model : ViT3D
        Whose training mean the ablated voxels take.
    voxels : array or Tensor (n, V)
    maps : Tensor (n, V)
    text_embeds : Tensor (n, E)
    fraction, n_random, seed : see :func:`ablation_check`.

    Returns
    -------
    pandas.DataFrame
        Per case: ``score``, ``score_located``, ``score_random``, ``drop_located``, ``drop_random``.
    """
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(np.asarray(voxels, dtype=np.float32))
    V = x.shape[1]
    k = max(1, int(round(fraction * V)))
    mean = model.voxel_mean.float().cpu().expand_as(x)

    def run(mask=None):
        xi = x if mask is None else torch.where(mask, mean, x)
        return np.asarray(score(reconstruct(xi.numpy()), text_embeds), dtype=np.float64)

    base = run()
    located = run(top_mask(maps.float().cpu(), k, rng))
    rand = np.mean([run(m) for m in random_masks(tuple(x.shape), k, n_random, rng)], 0)
    return pd.DataFrame(dict(score=base, score_located=located, score_random=rand, drop_located=base - located,
                             drop_random=base - rand))


def _rowcorr(a, b):
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def map_specificity(maps, image_ids, concepts, vocabulary, tuning=None, covered=None, high=None):
    """How concept-specific the maps of one subject are.

    Parameters
    ----------
    maps : ndarray (n, V)
        One map per (image, concept) case.
    image_ids, concepts : sequences of length n
    vocabulary : list of str
        The columns of ``tuning``.
    tuning : ndarray (V, n_concepts), optional
        Ground truth: how much each voxel encodes each concept (the simulator's category tuning on the same
        voxels, :func:`union_truth`).
    covered : ndarray (V,) bool, optional
        Voxels where ``tuning`` is defined (default all).
    high : ndarray (V,) bool, optional
        The category areas.

    Returns
    -------
    dict
        ``map_corr_same_image``: mean correlation between maps of two different concepts of one image (1 = the
        map does not depend on the concept; NaN without such pairs); ``n_pairs``; with ``tuning``:
        ``tuning_corr_own`` (mean correlation of a map with its concept's tuning), ``tuning_corr_other`` (with the
        other concepts' tuning, averaged), ``frac_own_gt_other``; with ``high``: ``map_high_ratio`` (mean map on
        the category areas over the mean map on the other covered voxels; > 1 = the maps fall on them).
    """
    maps = np.asarray(maps, dtype=np.float64)
    image_ids, concepts = np.asarray(image_ids), np.asarray(concepts)
    pairs = []
    for i in np.unique(image_ids):
        rows = np.nonzero(image_ids == i)[0]
        for a in range(len(rows)):
            for b in range(a + 1, len(rows)):
                if concepts[rows[a]] != concepts[rows[b]]:
                    pairs.append(_rowcorr(maps[rows[a]], maps[rows[b]]))
    out = dict(map_corr_same_image=float(np.mean(pairs)) if pairs else float("nan"), n_pairs=len(pairs))
    cov = np.ones(maps.shape[1], bool) if covered is None else np.asarray(covered, bool)
    if tuning is not None:
        m, t = maps[:, cov], np.asarray(tuning, dtype=np.float64)[cov]
        corr = np.stack([_rowcorr(m, np.broadcast_to(t[:, j], m.shape)) for j in range(t.shape[1])], 1)  # (n, C)
        own_col = np.array([list(vocabulary).index(c) for c in concepts])
        own = corr[np.arange(len(m)), own_col]
        other = (corr.sum(1) - own) / max(t.shape[1] - 1, 1)
        out.update(tuning_corr_own=float(own.mean()), tuning_corr_other=float(other.mean()),
                   frac_own_gt_other=float((own > other).mean()))
    if high is not None:
        h = np.asarray(high, bool) & cov
        out["map_high_ratio"] = float(maps[:, h].mean() / max(maps[:, cov & ~h].mean(), 1e-12))
    return out


def union_truth(store, subject, vocabulary):
    """The simulator's category tuning of a subject resampled onto the union grid (the ViT3D's voxels), as the
    store resampled its betas.

    Returns
    -------
    dict or None
        ``tuning`` (n_union, n_concepts), ``covered`` (n_union,) bool (voxels that take at least half their weight
        from the subject's nsdgeneral voxels), ``high`` (n_union,) bool (mostly category-area voxels); None for a
        store without a simulator record (real NSD) or with concepts the simulator does not know.
    """
    from pathlib import Path

    from ..data.resample import trilinear_matrix
    from ..simulate.scenes import CATEGORIES
    from ..simulate.truth import category_tuning, load_truth

    root = store.meta.get("nsd_root")
    truth = load_truth(root) if root and Path(root).is_dir() else None
    if truth is None or not set(vocabulary) <= set(CATEGORIES):
        return None
    sub = store.subject(subject)
    tuning, high = category_tuning(truth, subject, sub.voxel_ijk, vocabulary)
    grid = store.common_grid
    R = trilinear_matrix(sub.voxel_ijk, tuple(sub.info["volume_shape"]), grid["union_ijk"], tuple(grid["shape"]))
    weight = np.asarray(R.sum(1)).ravel()
    covered = weight >= 0.5
    w = np.maximum(weight, 1e-12)[:, None]
    return dict(tuning=np.asarray(R @ tuning) / w, covered=covered,
                high=(np.asarray(R @ high.astype(np.float64)).ravel() / w[:, 0] > 0.5) & covered)


def volume_from_voxels(values, grid_shape, union_ijk):
    """Per-voxel values (V,) → a dense (X, Y, Z) volume, NaN outside the union mask."""
    vol = np.full(tuple(grid_shape), np.nan, dtype=np.float32)
    ijk = np.asarray(union_ijk)
    vol[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = np.asarray(values, dtype=np.float32)
    return vol
