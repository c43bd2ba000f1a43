"""One tidy results table for every method: ``method, subject, metric, value, variant, note``.

``variant`` says what was evaluated: ``averaged`` (test betas averaged over an image's repetitions) or
``single-trial``, plus the number of test images on real NSD (``averaged-982`` for the images all four subjects
saw, ``averaged-1000`` for MindEye2's 1000): see :func:`variant_label`. ``note`` says how a value was obtained
or why it is missing (``unavailable (looked for PATH)``). Values are fractions (two-way identification 0.5 =
chance; × 100 for the papers' percentages); EffNet-B and SwAV are correlation distances (lower is better).

:func:`write_metrics` records a table through :meth:`neurorecon.artifacts.StageWriter.add_metric` (stage
metrics schema ``stage, method, subject, split, metric, value``; the variant goes into ``split`` as
``test-<variant>``).
"""

import math

import numpy as np
import pandas as pd

from .captions import CAPTION_METRICS, caption_metrics, clip_s_name, clip_score
from .images import ANTIALIAS, as_float_images
from .lowlevel import correlation_distance, pixcorr, ssim, two_way_identification
from .retrieval import mindeye_retrieval

__all__ = ["COLUMNS", "LOWER_IS_BETTER", "variant_label", "evaluate_reconstructions", "evaluate_captions",
           "write_metrics"]

COLUMNS = ("method", "subject", "metric", "value", "variant", "note")
#: Metrics where lower is better.
LOWER_IS_BETTER = ("EffNet-B", "SwAV")


def variant_label(trials="averaged", n_images=None):
    """``averaged`` / ``single-trial``, with ``-<n>`` when the number of test images matters (real NSD: 982 or
    1000)."""
    if trials not in ("averaged", "single-trial"):
        raise ValueError(f"trials {trials!r}: expected 'averaged' or 'single-trial'")
    return trials if n_images is None else f"{trials}-{int(n_images)}"


def _row(method, subject, metric, value, variant, note=""):
    return dict(method=str(method), subject=str(subject), metric=metric, value=float(value), variant=str(variant),
                note=note)


def evaluate_reconstructions(gt_images, rec_images, method, subject, variant="averaged", networks=None, *,
                             brain_embeds=None, image_embeds=None, retrieval_size=300, retrieval_draws=30,
                             retrieval_seed=42, pixel_metrics=True):
    """Every image metric of the protocol for one set of reconstructions.

    Parameters
    ----------
    gt_images, rec_images : uint8 (n, H, W, 3) arrays or float (n, 3, H, W) tensors in [0, 1]
        Ground truths and their reconstructions, paired by row (sizes may differ: every metric resizes).
    method : str
    subject : int or str
    variant : str
        See :func:`variant_label`.
    networks : MetricNetworks, optional
        From :func:`~neurorecon.evaluation.networks.load_metric_networks`; None: PixCorr and SSIM only.
    brain_embeds : array (n, E), optional
        Brain-predicted CLIP image embeddings of the test images: adds MindEye retrieval in both directions.
    image_embeds : array (n, E), optional
        The ground truths' embeddings in the same space (default: the networks' CLIP or demo-CLIP embedding).
    retrieval_size, retrieval_draws, retrieval_seed : int
    pixel_metrics : bool
        Compute PixCorr and SSIM.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS`, one row per metric (NaN with a note when unavailable).
    """
    gt, rec = as_float_images(gt_images), as_float_images(rec_images)
    if len(gt) != len(rec):
        raise ValueError(f"{len(gt)} ground-truth images but {len(rec)} reconstructions")
    rows = []
    n = len(gt)
    if pixel_metrics:
        aa = ANTIALIAS if networks is None else networks.antialias
        rows.append(_row(method, subject, "PixCorr", pixcorr(gt, rec, antialias=aa), variant,
                         f"n={n}, 425 px bilinear antialias={aa}, RGB"))
        rows.append(_row(method, subject, "SSIM", ssim(gt, rec, antialias=aa), variant,
                         f"n={n}, 425 px bilinear antialias={aa}, rgb2gray"))
    gt_embed = None
    if networks is not None:
        values = {}
        for net in networks.available:
            fg = net.features(gt, networks.batch_size, networks.antialias)
            fr = net.features(rec, networks.batch_size, networks.antialias)
            for name, (node, score) in net.metrics.items():
                fn = two_way_identification if score == "two_way" else correlation_distance
                values[name] = (fn(fg[name], fr[name]), f"n={n}, {net.size} px bilinear antialias="
                                                        f"{networks.antialias}, {node}, {net.source}")
            if net is networks.embedder:
                gt_embed = next(iter(fg.values()))
        for name in networks.metric_names:
            if name in values:
                rows.append(_row(method, subject, name, values[name][0], variant, values[name][1]))
            else:
                rows.append(_row(method, subject, name, math.nan, variant, networks.unavailable[name]))
    if brain_embeds is not None:
        emb = image_embeds if image_embeds is not None else gt_embed
        if emb is None:
            raise ValueError("retrieval needs image_embeds or a CLIP/demo-CLIP metric network")
        res = mindeye_retrieval(brain_embeds, emb, retrieval_size, retrieval_draws, retrieval_seed)
        for label, mean, ci in (("brain->image", res.forward, res.forward_ci),
                                ("image->brain", res.backward, res.backward_ci)):
            rows.append(_row(method, subject, f"Retrieval {label}", mean, variant, res.note))
            rows.append(_row(method, subject, f"Retrieval {label} CI95 low", ci[0], variant, res.note))
            rows.append(_row(method, subject, f"Retrieval {label} CI95 high", ci[1], variant, res.note))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def evaluate_captions(references, candidates, method, subject, variant="averaged", *, fm=None, images=None,
                      scorer=None, meteor=True, tokenizer="ptb", clip_s_weight=2.5, clip_s_prefix="A photo depicts "):
    """Caption metrics (pycocoevalcap + CLIP-S) of one caption per test image as table rows.

    Parameters
    ----------
    references : list of list of str
    candidates : list of str
    method, subject, variant
        As in :func:`evaluate_reconstructions`.
    fm : Foundation, optional
        With ``images``: CLIP-S (``CLIP-S`` in full, ``demo-CLIP-S`` otherwise).
    images : uint8 (n, H, W, 3) or float (n, 3, H, W), optional
        The test images, paired with ``candidates``.
    scorer : neurorecon.nv2l.captions.CaptionScorer, optional
    meteor, tokenizer, clip_s_weight, clip_s_prefix
        See :func:`~neurorecon.evaluation.captions.caption_metrics` and
        :func:`~neurorecon.evaluation.captions.clip_score`.

    Returns
    -------
    pandas.DataFrame
    """
    scores, notes = caption_metrics(references, candidates, scorer, meteor, tokenizer)
    n = len(candidates)
    rows = [_row(method, subject, m, scores[m], variant, notes[m] if scores[m] != scores[m] else f"n={n}, {notes[m]}")
            for m in CAPTION_METRICS]
    if fm is not None and images is not None:
        name = clip_s_name(fm)
        value = clip_score(fm, images, list(candidates), clip_s_weight, clip_s_prefix)
        rows.append(_row(method, subject, name, value, variant,
                         f"n={n}, {clip_s_weight} * max(cos, 0), prefix {clip_s_prefix!r}, "
                         f"{fm.names.get('clip', 'foundation CLIP')}"))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_metrics(writer, table, split_prefix="test", include_unavailable=False):
    """Record table rows with ``writer.add_metric(method, subject, f"{split_prefix}-{variant}", metric, value)``.

    Parameters
    ----------
    writer : neurorecon.artifacts.StageWriter
    table : pandas.DataFrame
        Columns :data:`COLUMNS` (as returned by :func:`evaluate_reconstructions`).
    split_prefix : str
    include_unavailable : bool
        Also write NaN rows of unavailable metrics (their notes only live in the table).

    Returns
    -------
    int
        Rows written.
    """
    count = 0
    for row in table.itertuples(index=False):
        if not include_unavailable and not np.isfinite(row.value):
            continue
        writer.add_metric(row.method, row.subject, f"{split_prefix}-{row.variant}", row.metric, row.value)
        count += 1
    return count
