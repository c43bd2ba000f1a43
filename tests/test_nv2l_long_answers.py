"""Detailed descriptions and complex reasoning scored against their references, with the shuffled-fMRI and
nearest-neighbour controls (a stand-in model that answers from the fMRI it is given)."""

from types import SimpleNamespace

import numpy as np

from neurorecon.nv2l.captions import CaptionScorer
from neurorecon.nv2l.instructions import build_instruction_data
from neurorecon.nv2l.long_answers import answer_records, evaluate_long_answers, record_turns
from neurorecon.nv2l.stage import long_answer_table
from test_nv2l_language import _annotations


class _Reader:
    """Answers every question of a record exactly, reading the image id from the first voxel; records the
    histories it was given."""

    def __init__(self, records):
        self.answers = {(r["image_id"], q): a for r in records for q, a in record_turns(r)}
        self.histories = []

    def generate(self, voxels, questions, histories=None, max_new_tokens=48):
        self.histories += list(histories or [])
        return [self.answers.get((int(v[0]), q), "I do not know.") for v, q in zip(voxels, questions)]


class _Writer:
    def __init__(self):
        self.rows = []

    def add_metric(self, method, subject, split, metric, value):
        self.rows.append(dict(method=method, subject=str(subject), split=split, metric=metric, value=float(value)))


def test_brain_answers_beat_both_controls_when_they_read_the_fmri():
    ann = _annotations(30)
    ids = sorted(ann)
    train_ids, test_ids = ids[:18], ids[18:]
    tr, te = build_instruction_data(ann, train_ids, 64), build_instruction_data(ann, test_ids, 64)
    model = _Reader(te)
    x = np.array([[i, 0.0] for i in test_ids])
    reasoning = [r for r in te if r["type"] == "reasoning"]
    assert reasoning and max(len(record_turns(r)) for r in reasoning) > 1
    joined = answer_records(model, x[[test_ids.index(r["image_id"]) for r in reasoning]], reasoning, 32)
    assert joined == [" ".join(a for _, a in record_turns(r)) for r in reasoning]
    # later turns were asked after the record's reference turns
    assert any(len(h) == 1 and h[0] == record_turns(r)[0] for r in reasoning for h in model.histories)
    emb = {i: np.eye(len(ids))[k] for k, i in enumerate(ids)}
    ridge = SimpleNamespace(predict=lambda v: np.stack([emb[int(i)] for i in v[:, 0]]))
    w = _Writer()
    with CaptionScorer(meteor=False, tokenizer="simple") as scorer:
        rows = evaluate_long_answers(w, model, lambda s: (x, np.array(test_ids)), te, tr, ridge,
                                     lambda b: np.stack([emb[int(i)] for i in b]), scorer, subjects=[1, 2],
                                     max_new_tokens=32)
    assert set(rows.type) == {"detailed", "reasoning"} and len(rows) == 2 * 2 * len(test_ids)
    frame = __import__("pandas").DataFrame(w.rows)
    table = long_answer_table(frame)
    assert set(table.index) == {"brain_llava", "shuffled_fmri", "nn_caption"}
    for kind in ("detailed", "reasoning"):
        assert table.loc["brain_llava", kind] > table.loc["shuffled_fmri", kind]
        assert table.loc["brain_llava", kind] > table.loc["nn_caption", kind]  # test images are not in the bank
    assert (frame[frame.metric == "detailed_n_records"].value == len(test_ids)).all()


def test_one_test_image_is_scored_without_a_shuffled_control_and_says_so():
    ann = _annotations(20)
    ids = sorted(ann)
    tr, te = build_instruction_data(ann, ids[:18], 64), build_instruction_data(ann, ids[18:19], 64)
    x = np.array([[ids[18], 0.0]])
    emb = {i: np.eye(len(ids))[k] for k, i in enumerate(ids)}
    ridge = SimpleNamespace(predict=lambda v: np.stack([emb[int(i)] for i in v[:, 0]]))
    w = _Writer()
    with CaptionScorer(meteor=False, tokenizer="simple") as scorer:
        rows = evaluate_long_answers(w, _Reader(te), lambda s: (x, np.array(ids[18:19])), te, tr, ridge,
                                     lambda b: np.stack([emb[int(i)] for i in b]), scorer, subjects=[1],
                                     max_new_tokens=32)
    assert len(rows) == 2 and rows.shuffled_fmri.isna().all() and rows.brain_llava.notna().all()
    counts = {(r["method"], r["metric"]): r["value"] for r in w.rows if r["metric"].endswith("_n_records")}
    assert counts[("brain_llava", "detailed_n_records")] == 1
    assert counts[("shuffled_fmri", "detailed_n_records")] == 0  # recorded, not silently missing
    assert not any(r["method"] == "shuffled_fmri" and r["metric"] == "detailed_CIDEr" for r in w.rows)
