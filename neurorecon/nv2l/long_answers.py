"""Scores of the instruction types beyond brief captions: detailed descriptions and complex reasoning.

For each test record of a type the brain LLaVA answers the record's own instructions from the image's fMRI; in a
multi-turn record each question is asked after the record's earlier (reference) turns, as in training. The answers
of a record, joined, are scored against the record's reference answers, joined, with the caption metrics
(pycocoevalcap: BLEU, METEOR, ROUGE-L, CIDEr), beside two controls:

- ``shuffled_fmri``: the same model and questions, another test image's fMRI (a derangement);
- ``nn_caption``: the nearest-neighbour baseline of the brief captions, applied to the type: ridge regression
  from fMRI to the CLIP embedding, then the reference answers of the training image with the nearest embedding
  that has a record of the type.

Metrics are ``{type}_{metric}`` rows per method and subject (and their mean over subjects).
"""

import numpy as np
import pandas as pd

from .baselines import nearest_captions
from .captions import METRICS
from .evaluate import derangement

__all__ = ["LONG_TYPES", "record_turns", "answer_records", "long_answer_bank", "evaluate_long_answers"]

LONG_TYPES = ("detailed", "reasoning")


def record_turns(record):
    """(question, reference answer) pairs of a record, the ``<image>`` placeholder removed."""
    conv = record["conversations"]
    qs = [t["value"].replace("<image>\n", "").replace("<image>", "").strip() for t in conv[0::2]]
    return list(zip(qs, [t["value"] for t in conv[1::2]]))


def answer_records(llava, voxels, records, max_new_tokens):
    """The model's answers to each record's questions (earlier turns given as the reference), joined per record.

    Parameters
    ----------
    voxels : ndarray (n, V)
        One row per record.
    records : list of dict
    """
    turns = [record_turns(r) for r in records]
    answers = [[] for _ in records]
    for k in range(max((len(t) for t in turns), default=0)):
        idx = [i for i, t in enumerate(turns) if len(t) > k]
        out = llava.generate(np.asarray(voxels)[idx], [turns[i][k][0] for i in idx],
                             [turns[i][:k] for i in idx], max_new_tokens=max_new_tokens)
        for i, a in zip(idx, out):
            answers[i].append(a)
    return [" ".join(a) for a in answers]


def long_answer_bank(train_records, kind):
    """Training image ids that have a record of ``kind`` and that record's reference answers, joined."""
    recs = [r for r in train_records if r["type"] == kind]
    return np.array([r["image_id"] for r in recs], dtype=np.int64), \
        [" ".join(a for _, a in record_turns(r)) for r in recs]


def evaluate_long_answers(w, llava, test_voxels, test_records, train_records, ridge, clip_of, scorer, *,
                          subjects, seed=0, max_new_tokens=96, types=LONG_TYPES, max_images=None):
    """Score every type in ``types`` for every subject; metric rows go to the stage writer ``w``.

    Parameters
    ----------
    w : StageWriter
    llava : BrainLlava
    test_voxels : callable
        ``subject -> (voxels (n, V), image ids (n,))`` (repetition-averaged test fMRI).
    test_records, train_records : list of dict
        Instruction records of the test and training images.
    ridge : RidgeMap
        fMRI → CLIP embedding (the nearest-neighbour baseline's map).
    clip_of : callable
        ``image ids -> CLIP embeddings`` of training images.
    scorer : CaptionScorer
    subjects : sequence of int
    seed : int
        Seed of the shuffled-fMRI derangement (plus the subject).
    max_new_tokens : int
    types : sequence of str
    max_images : int, optional
        Evaluate the first this many test images per subject (all if None); recorded as ``{type}_n_records``.

    Returns
    -------
    pandas.DataFrame
        One row per (subject, record): reference and the three methods' answers.
    """
    rows, means = [], {}
    for kind in types:
        bank_ids, bank_texts = long_answer_bank(train_records, kind)
        if not len(bank_ids):
            continue
        bank_clip = clip_of(bank_ids)
        by_image = {r["image_id"]: r for r in test_records if r["type"] == kind}
        for s in subjects:
            x, ids = test_voxels(s)
            keep = [k for k, i in enumerate(ids) if int(i) in by_image][:max_images]
            if not keep:
                continue
            x, ids = np.asarray(x)[keep], np.asarray(ids)[keep]
            recs = [by_image[int(i)] for i in ids]
            refs = [[" ".join(a for _, a in record_turns(r))] for r in recs]
            answers = {"brain_llava": answer_records(llava, x, recs, max_new_tokens),
                       "nn_caption": nearest_captions(ridge.predict(x), bank_clip, bank_texts)}
            if len(x) > 1:  # else no other image's fMRI to answer from: 0 records, in the metrics
                answers["shuffled_fmri"] = answer_records(llava, x[derangement(len(x), seed + s)], recs,
                                                          max_new_tokens)
            w.add_metric("shuffled_fmri", s, "test", f"{kind}_n_records", len(recs) if len(x) > 1 else 0)
            for m, cands in answers.items():
                sc = scorer.score(refs, cands)
                for k in METRICS:
                    w.add_metric(m, s, "test", f"{kind}_{k}", sc[k])
                    means.setdefault((m, kind, k), []).append(sc[k])
            w.add_metric("brain_llava", s, "test", f"{kind}_n_records", len(recs))
            for k, r in enumerate(recs):
                rows.append(dict(subject=int(s), image_id=int(r["image_id"]), type=kind, reference=refs[k][0],
                                 **{m: answers[m][k] if m in answers else None
                                    for m in ("brain_llava", "shuffled_fmri", "nn_caption")}))
    for (m, kind, k), v in means.items():
        w.add_metric(m, "mean", "test", f"{kind}_{k}", float(np.mean(v)))
    return pd.DataFrame(rows)
