"""Caption metrics: pycocoevalcap BLEU-1..4, METEOR, ROUGE-L, CIDEr (SPICE unavailable offline) through the NV2L
stage's wrapper (:mod:`neurorecon.nv2l.captions`), plus CLIP-S.

CLIP-S (Hessel et al. 2021): ``w · max(cos(E_image, E_text(prefix + caption)), 0)`` per image with ``w = 2.5``,
averaged; Hessel et al. use CLIP ViT-B/32 and the prefix "A photo depicts". Here the CLIP is the foundation's
(``fm.image_embeds`` / ``fm.text_embeds``): OpenAI CLIP ViT-L/14 in the full profile (reported as ``CLIP-S``),
the CLIP trained on NSD-mini in smoke/demo (reported as ``demo-CLIP-S``).
"""

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CAPTION_METRICS", "caption_metrics", "clip_score", "clip_s_name"]

#: The pycocoevalcap metrics, in report order.
CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")


def caption_metrics(references, candidates, scorer=None, meteor=True, tokenizer="ptb"):
    """pycocoevalcap scores of candidate captions against reference captions (corpus level).

    Parameters
    ----------
    references : list of list of str
        Reference captions per image.
    candidates : list of str
        One generated caption per image.
    scorer : neurorecon.nv2l.captions.CaptionScorer, optional
        Reuse one scorer (one METEOR JVM) across many calls; otherwise one is started and closed here.
    meteor : bool
    tokenizer : {"ptb", "simple"}

    Returns
    -------
    scores : dict
        Metric → float (NaN when unavailable).
    notes : dict
        Metric → how it was computed (pycocoevalcap and the tokenizer), or why it is NaN.

    Raises
    ------
    neurorecon.errors.MissingDependencyError
        METEOR or the PTB tokenizer asked for without a Java runtime.
    """
    from ..nv2l.captions import UNAVAILABLE, CaptionScorer

    if scorer is None:
        with CaptionScorer(meteor=meteor, tokenizer=tokenizer) as sc:
            scores = sc.score(list(references), list(candidates))
            tokenizer = sc.tokenizer
    else:
        scores = scorer.score(list(references), list(candidates))
        tokenizer = scorer.tokenizer
    notes = {m: f"unavailable ({UNAVAILABLE.get(m, 'not computed')})" if v != v
             else f"pycocoevalcap, {tokenizer} tokenizer" for m, v in scores.items()}
    return scores, notes


def clip_s_name(fm):
    """``CLIP-S`` with the full profile's OpenAI CLIP, ``demo-CLIP-S`` with the demo CLIP."""
    return "CLIP-S" if fm.profile == "full" else "demo-CLIP-S"


@torch.no_grad()
def clip_score(fm, images, captions, weight=2.5, prefix="A photo depicts ", per_item=False):
    """CLIP-S of one caption per image with the foundation's CLIP.

    Parameters
    ----------
    fm : Foundation
    images : uint8 (n, H, W, 3) or float (n, 3, H, W) in [0, 1]
    captions : list of str
    weight : float
    prefix : str
    per_item : bool
        Also return the (n,) per-image scores.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    img = F.normalize(fm.image_embeds(images, normalize=False).float(), dim=-1)
    txt = F.normalize(fm.text_embeds([prefix + c for c in captions]).float(), dim=-1)
    per = (weight * (img * txt).sum(-1).clamp_min(0)).cpu().numpy()
    return (float(np.mean(per)), per) if per_item else float(np.mean(per))
