"""Test-set evaluation of the brain LLaVA: captions (vs a nearest-neighbour-caption baseline and a shuffled-fMRI
control) and question answering per question type (vs chance and the shuffled control)."""

import re

import numpy as np
import pandas as pd

from ..metrics import derangement  # the shuffled-fMRI control, one implementation for every stage
from ..simulate.scenes import COLORS, SHAPES
from .instructions import NUMBER_WORDS, qa_questions

__all__ = ["ANSWER_WORDS", "derangement", "parse_counts", "answer_words", "qa_correct", "qa_items", "run_qa",
           "qa_accuracy", "majority_chance"]

#: The words that count as an answer, per question type.
ANSWER_WORDS = {"color": tuple(COLORS), "shape": tuple(sorted(set(SHAPES))),
                "count": tuple(w for k, w in NUMBER_WORDS.items() if k > 0)}


_UNITS = {w: k for k, w in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                                       "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen",
                                       "sixteen", "seventeen", "eighteen", "nineteen"])}
_TENS = {w: 10 * k for k, w in enumerate(["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty",
                                          "ninety"], start=2)}


def parse_counts(text):
    """Every positive number a text states, in digits or words (``"12"``, ``"twelve"``, ``"twenty-one"``,
    ``"a hundred and three"`` is not parsed): a set of ints."""
    words = re.findall(r"[a-z]+|\d+", text.lower().replace("-", " "))
    out, k = set(), 0
    while k < len(words):
        w = words[k]
        if w.isdigit():
            out.add(int(w))
        elif w in _TENS:
            n = _TENS[w]
            if k + 1 < len(words) and 0 < _UNITS.get(words[k + 1], 0) < 10:
                n, k = n + _UNITS[words[k + 1]], k + 1
            out.add(n)
        elif w in _UNITS:
            out.add(_UNITS[w])
        k += 1
    return {n for n in out if n > 0}


def answer_words(qtype, text):
    """The answer-vocabulary words of ``qtype`` found in a generated answer; for ``count`` the numbers it states
    (digits or words, any size) as ints."""
    if qtype == "count":
        return parse_counts(text)
    words = re.findall(r"[a-z]+|\d+", text.lower())
    vocab = set(ANSWER_WORDS[qtype])
    return {w for w in words if w in vocab}


def qa_correct(qtype, text, truth):
    """An answer is correct iff the only answer of its type that it mentions is the true one (counts compared
    as numbers, so "12 people" answers "twelve")."""
    if qtype == "count":
        truth = parse_counts(str(truth))
        return len(truth) == 1 and parse_counts(text) == truth
    return answer_words(qtype, text) == {truth}


def qa_items(annotations, image_ids, image_size, seed=0):
    """Evaluation questions of test images as a DataFrame (image_id, type, question, truth)."""
    rows = []
    for i in image_ids:
        rng = np.random.default_rng([int(seed), int(i), 99])
        for qtype, q, truth in qa_questions(annotations[int(i)], image_size, rng):
            rows.append(dict(image_id=int(i), type=qtype, question=q, truth=truth))
    return pd.DataFrame(rows, columns=["image_id", "type", "question", "truth"])


def run_qa(llava, voxels, image_ids, items, max_new_tokens=16):
    """Ask every item's question about the fMRI of its image; returns ``items`` with ``answer`` and ``correct``.

    Parameters
    ----------
    voxels : ndarray (n, V)
        One row per entry of ``image_ids`` (possibly another image's fMRI, for the shuffled control).
    """
    row_of = {int(i): k for k, i in enumerate(image_ids)}
    rows = np.array([row_of[int(i)] for i in items["image_id"]])
    answers = llava.generate(np.asarray(voxels)[rows], list(items["question"]), max_new_tokens=max_new_tokens)
    out = items.copy()
    out["answer"] = answers
    out["correct"] = [qa_correct(t, a, g) for t, a, g in zip(out["type"], out["answer"], out["truth"])]
    return out


def qa_accuracy(results):
    """Accuracy per question type (a dict)."""
    return {t: float(g["correct"].mean()) for t, g in results.groupby("type")}


def majority_chance(train_items, test_items):
    """Chance per type: accuracy on the test questions of always giving the most frequent training answer."""
    out = {}
    for t, g in test_items.groupby("type"):
        train = train_items[train_items["type"] == t]["truth"]
        if len(train) == 0:
            continue
        out[t] = float((g["truth"] == train.value_counts().idxmax()).mean())
    return out
