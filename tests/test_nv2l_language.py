"""Instruction data, chat encoding, brain LLaVA (merge, training stages, generation, persistence), caption metrics,
QA scoring, the nearest-neighbour baseline."""

import json
import re

import numpy as np
import pytest
import torch

from neurorecon.errors import ConfigError, DataError
from neurorecon.foundation.tiny import DEFAULT_TEXTS, tiny_lm, train_bpe_tokenizer
from neurorecon.nv2l.baselines import fit_ridge, nearest_captions
from neurorecon.nv2l.captions import CaptionScorer, caption_scores
from neurorecon.nv2l.evaluate import answer_words, derangement, majority_chance, qa_correct, qa_items
from neurorecon.nv2l.instructions import (BRIEF_TEMPLATES, DETAILED_TEMPLATES, RECONSTRUCTION_PROMPT,
                                          build_instruction_data, build_records, load_generator, read_llava_json,
                                          write_llava_json)
from neurorecon.nv2l.llava import BrainLlava, encode_chat, llava_batches, prompt_ids, train_llava_stage
from neurorecon.nv2l.vit3d import ViT3D
from neurorecon.simulate.scenes import render_scene, sample_scene, scene_captions
from neurorecon.training import ArrayBatches


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _annotations(n=40, size=64, seed=0):
    """NSD-mini-style annotations (the simulator's scenes, captions and boxes)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        scene = sample_scene(rng)
        _, polys = render_scene(scene, size, rng, supersample=1)
        inst = []
        for obj, parts in zip(scene["objects"], polys):
            pts = np.concatenate(parts)
            x0, y0 = pts.min(0)
            x1, y1 = pts.max(0)
            inst.append(dict(category=obj["category"], bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                             attributes=dict(color=obj["color"], size=obj["size"], position=obj["position"],
                                             shape={"ball": "circle"}.get(obj["category"], "other"))))
        out[1000 + i] = dict(captions=scene_captions(scene, rng), instances=inst, background=scene["background"])
    return out


def test_templates_and_record_types():
    assert len(BRIEF_TEMPLATES) == 14 == len(set(BRIEF_TEMPLATES))
    assert len(DETAILED_TEMPLATES) == 20 == len(set(DETAILED_TEMPLATES))
    ann = _annotations(30)
    recs = build_instruction_data(ann, sorted(ann), 64)
    types = {r["type"] for r in recs}
    assert types == {"brief", "detailed", "conversation", "reasoning", "reconstruction", "concept"}
    for r in recs:
        conv = r["conversations"]
        assert conv[0]["value"].startswith("<image>\n") and sum("<image>" in c["value"] for c in conv) == 1
        assert [c["from"] for c in conv] == ["human", "gpt"] * (len(conv) // 2)
        if r["type"] == "brief":
            assert conv[1]["value"] in ann[r["image_id"]]["captions"]
        if r["type"] == "reconstruction":
            assert conv[0]["value"] == "<image>\n" + RECONSTRUCTION_PROMPT
        if r["type"] == "concept":
            assert re.fullmatch(r'<image>\nLocating the concept of "[a-z ]+"', conv[0]["value"])
    # deterministic
    assert build_instruction_data(ann, sorted(ann), 64) == recs
    assert build_instruction_data(ann, sorted(ann), 64, seed=1) != recs


def test_several_conversations_per_image_keep_the_first_and_add_distinct_dialogues():
    ann = _annotations(20)
    one = build_instruction_data(ann, sorted(ann), 64)
    three = build_instruction_data(ann, sorted(ann), 64, generator=load_generator("template", 1), n_conversations=3)
    assert [r for r in one if r["type"] != "conversation"] == [r for r in three if r["type"] != "conversation"]
    conv = [r for r in three if r["type"] == "conversation"]
    assert len(conv) == 3 * len(ann) and len({r["id"] for r in three}) == len(three)
    assert all(len(r["conversations"]) == 2 and r["conversations"][0]["value"].startswith("<image>\n") for r in conv)
    first = {r["image_id"]: r for r in build_instruction_data(ann, sorted(ann), 64, load_generator("template", 1))
             if r["type"] == "conversation"}
    assert all(first[r["image_id"]] == r for r in conv if r["id"].endswith("_conversation"))
    assert len({json.dumps(r["conversations"]) for r in conv}) > 2 * len(ann)  # mostly different questions
    with pytest.raises(ConfigError, match="n_conversations"):
        build_records(1000, ann[1000], 64, n_conversations=0)


def test_answers_are_true_by_construction():
    ann = _annotations(60)
    where = {"on the left": "left", "on the right": "right", "at the top": "top", "at the bottom": "bottom",
             "in the center": "center"}
    checked = 0
    for r in build_instruction_data(ann, sorted(ann), 64):
        objs = ann[r["image_id"]]["instances"]
        by_pos = {o["attributes"]["position"]: o for o in objs}
        conv = r["conversations"]
        for q, a in zip(conv[0::2], conv[1::2]):
            q, a = q["value"].replace("<image>\n", ""), a["value"]
            m = re.fullmatch(r"What colour is the object (.+)\?", q)
            if m:
                assert a == f"The object {m.group(1)} is {by_pos[where[m.group(1)]]['attributes']['color']}."
                checked += 1
            if q == "How many objects are in the image?":
                n = {1: "one", 2: "two", 3: "three"}[len(objs)]
                assert f" {n} object" in a
                checked += 1
            m = re.fullmatch(r'Locating the concept of "(.+)"', q)
            if m:
                hits = [o for o in objs if o["category"] == m.group(1)]
                assert ("no " + m.group(1)) in a if not hits else all(where_phrase in a for where_phrase in
                                                                       [k for k, v in where.items()
                                                                        if v in {o["attributes"]["position"]
                                                                                 for o in hits}])
                checked += 1
            m = re.fullmatch(r"Is there an? (.+) in the image\?", q)
            if m:
                assert a.startswith("Yes") == any(o["category"] == m.group(1) for o in objs)
                checked += 1
    assert checked > 60


def test_coco_style_annotations_skip_attribute_questions_and_generator_is_pluggable():
    ann = {7: dict(captions=["A man riding a horse.", "A person on a horse."],
                   instances=[dict(category="person", bbox=[10, 5, 20, 40], attributes={}),
                              dict(category="horse", bbox=[5, 20, 50, 40], attributes={})], background=None)}
    recs = build_records(7, ann[7], 64, categories=["person", "horse", "dog"])
    text = json.dumps(recs)
    assert "What colour" not in text and "What shape" not in text and "small or large" not in text
    assert {r["type"] for r in recs} >= {"brief", "detailed", "conversation", "reconstruction", "concept"}
    calls = []

    def gpt_like(annotation, kind, rng):
        calls.append(kind)
        return [("What is happening?", annotation["captions"][0])] if kind == "conversation" else []

    recs = build_records(7, ann[7], 64, generator=gpt_like)
    conv = [r for r in recs if r["type"] == "conversation"][0]["conversations"]
    assert conv[1]["value"] == "A man riding a horse." and "reasoning" not in {r["type"] for r in recs}
    assert sorted(calls) == ["conversation", "reasoning"]
    assert callable(load_generator("json:dumps"))
    with pytest.raises(ConfigError, match="dialogue_generator"):
        load_generator("no_such_module_xyz:f")


def test_llava_json_round_trip_and_bad_file(tmp_path):
    ann = _annotations(3)
    recs = build_instruction_data(ann, sorted(ann), 64)
    path = write_llava_json(recs, tmp_path / "sft_data_tr.json")
    assert read_llava_json(path) == recs
    (tmp_path / "bad.json").write_text('{"not": "a list"}')
    with pytest.raises(DataError, match="bad.json: expected a list of records"):
        read_llava_json(tmp_path / "bad.json")


class _LM:
    """Just the language part of a tiny foundation (building the whole tiny foundation costs more)."""

    def __init__(self):
        self.lm_tokenizer = train_bpe_tokenizer(DEFAULT_TEXTS + ["It is yellow.", "Tell me please."])
        self.lm = tiny_lm(len(self.lm_tokenizer)).eval()


@pytest.fixture(scope="module")
def tiny():
    fm = _LM()
    ijk = np.argwhere(np.ones((8, 8, 4), bool))
    torch.manual_seed(0)
    enc = ViT3D((8, 8, 4), ijk, patch_size=4, width=32, depth=2, heads=2, head_hidden=16, clip_dim=8,
                latent_shape=(1, 2, 2)).eval()
    return fm, enc


def test_chat_encoding_labels_only_answers(tiny):
    fm, _ = tiny
    tok = fm.lm_tokenizer
    conv = [{"from": "human", "value": "<image>\nWhat colour is the ball?"}, {"from": "gpt", "value": "It is red."},
            {"from": "human", "value": "How many?"}, {"from": "gpt", "value": "Two."}]
    ids, labels = encode_chat(tok, conv)
    labelled = [i for i, lab in zip(ids, labels) if lab != -100]
    assert tok.decode(labelled) == "It is red.</s>Two.</s>"
    assert ids.count(tok.convert_tokens_to_ids("<image>")) == 1
    assert tok.decode(ids).startswith("<s><human>: <image>\nWhat colour is the ball? <bot>: It is red.</s>")
    # the generation prompt is the training prefix up to the answer
    p = prompt_ids(tok, "What colour is the ball?")
    assert ids[:len(p)] == p
    p2 = prompt_ids(tok, "How many?", [("What colour is the ball?", "It is red.")])
    assert ids[:len(p2)] == p2


def _records(n):
    colours = ["red", "blue", "green", "yellow"]
    return [dict(image_id=i, type="brief", conversations=[
        {"from": "human", "value": "<image>\nWhat colour is it?"},
        {"from": "gpt", "value": f"It is {colours[i % 4]}."}]) for i in range(n)]


def test_brain_llava_stages_generation_and_persistence(tiny, tmp_path):
    fm, enc = tiny
    import copy

    lm, tok = copy.deepcopy(fm.lm), copy.deepcopy(fm.lm_tokenizer)
    llava = BrainLlava(enc, lm, tok)
    n, V = 16, 256
    # fMRI of image i: a pattern coding its colour (i % 4)
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(4, V)).astype(np.float32) * 2
    vox = torch.from_numpy(np.stack([codes[i % 4] + 0.1 * rng.normal(size=V) for i in range(n)]).astype(np.float32))
    rows = np.arange(n)[:, None]
    data = llava_batches(_records(n), tok, lambda ids: (rows[ids], np.ones(len(ids), np.int64)), 64)
    assert isinstance(data, ArrayBatches)
    lm0 = {k: v.clone() for k, v in llava.lm.state_dict().items()}
    enc0 = {k: v.clone() for k, v in enc.state_dict().items()}
    proj0 = {k: v.clone() for k, v in llava.projector.state_dict().items()}
    r1 = train_llava_stage(llava, data, vox, 1, steps=5, batch_size=8, lr=1e-3, progress=False)
    assert all(torch.equal(v, llava.lm.state_dict()[k]) for k, v in lm0.items())  # stage 1: LM frozen
    assert not all(torch.equal(v, llava.projector.state_dict()[k]) for k, v in proj0.items())
    r2 = train_llava_stage(llava, data, vox, 2, steps=120, batch_size=8, lr=3e-3, progress=False)
    assert not all(torch.equal(v, llava.lm.state_dict()[k]) for k, v in lm0.items())  # stage 2: LM trained
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in enc0.items())  # the encoder stays frozen
    assert r2.losses[-1][1] < 0.3 * r1.losses[0][1]
    answers = llava.generate(vox[:8].numpy(), "What colour is it?", max_new_tokens=8)
    truth = [["red", "blue", "green", "yellow"][i % 4] for i in range(8)]
    assert sum(a == f"It is {t}." for a, t in zip(answers, truth)) >= 6  # answers depend on the fMRI
    # batched (left-padded) generation equals one-at-a-time generation
    qs = ["What colour is it?", "What colour is it? Tell me please, what colour?"]
    batched = llava.generate(vox[:2].numpy(), qs, max_new_tokens=6)
    single = [llava.generate(vox[i:i + 1].numpy(), qs[i], max_new_tokens=6)[0] for i in range(2)]
    assert batched == single
    dialog = llava.chat(vox[:2].numpy(), ["What colour is it?", "What colour is it?"], max_new_tokens=6)
    assert len(dialog) == 2 and [q for q, _ in dialog[0]] == ["What colour is it?"] * 2
    llava.save_pretrained(tmp_path / "bl")
    again = BrainLlava.from_pretrained(tmp_path / "bl")
    assert again.generate(vox[:8].numpy(), "What colour is it?", max_new_tokens=8) == answers
    with pytest.raises(DataError, match="brain LLaVA folder"):
        BrainLlava.from_pretrained(tmp_path / "nothing")


def test_length_grouped_llava_batches_train_on_batches_of_similar_length(tiny):
    """``group_by_length``: the batch source knows each record's token count and ``fit`` draws its batches
    through it, so a batch is padded to a length close to its records' own."""
    import copy

    from neurorecon.training import LengthGroupedBatches

    fm, enc = tiny
    llava = BrainLlava(enc, copy.deepcopy(fm.lm), copy.deepcopy(fm.lm_tokenizer))
    recs = [dict(image_id=i, type="brief", conversations=[
        {"from": "human", "value": "<image>\nWhat colour is it?" + " Tell me." * (i % 7)},
        {"from": "gpt", "value": "It is red." + " Really red." * (i % 5)}]) for i in range(41)]
    data = llava_batches(recs, llava.tokenizer, lambda ids: (ids[:, None], np.ones(len(ids), np.int64)), 64,
                         group_by_length=True)
    assert isinstance(data, LengthGroupedBatches)
    np.testing.assert_array_equal(data.lengths, [len(encode_chat(llava.tokenizer, r["conversations"], 64)[0])
                                                 for r in recs])
    drawn = []
    original = data.batch

    def batch(idx):
        drawn.append(data.lengths[np.asarray(idx)])
        return original(idx)

    data.batch = batch
    vox = torch.randn(41, 256)
    train_llava_stage(llava, data, vox, 1, steps=4, batch_size=8, lr=1e-3, progress=False)
    spread = np.mean([d.max() - d.min() for d in drawn])
    shuffled = np.mean([d.max() - d.min() for d in np.array_split(data.lengths[np.random.default_rng(0)
                                                                               .permutation(41)][:40], 5)])
    assert len(drawn) == 4 and spread < 0.5 * shuffled


def test_mixer_projector_and_mean_fmri(tiny, tmp_path):
    """The token-mixing projector trains, answers from the fMRI and survives save/load; ``fmri="mean"`` pairs a
    record with the mean of its image's trials (padding rows ignored), ``"trial"`` with one of them."""
    from neurorecon.nv2l.llava import TokenMixer
    from neurorecon.nv2l.tuning import llava_loss

    fm, enc = tiny
    import copy

    llava = BrainLlava(enc, copy.deepcopy(fm.lm), copy.deepcopy(fm.lm_tokenizer), projector="mixer",
                       projector_tokens=3)
    assert isinstance(llava.projector, TokenMixer)
    assert llava.image_tokens(torch.zeros(2, 256)).shape == (2, 3, fm.lm.get_input_embeddings().embedding_dim)
    n, V = 16, 256
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(4, V)).astype(np.float32) * 2
    # two trials per image: the code plus noise of opposite signs, so only their mean is the clean code
    noise = rng.normal(size=(n, V)).astype(np.float32)
    vox = torch.from_numpy(np.concatenate([codes[np.arange(n) % 4] + noise, codes[np.arange(n) % 4] - noise]))
    rows = np.stack([np.arange(n), np.arange(n) + n], 1)
    data = llava_batches(_records(n), llava.tokenizer, lambda ids: (rows[ids], np.full(len(ids), 2)), 64)
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, *rest):
            seen.append(x)
            return x.sum() * 0

    batch = data.batch(np.arange(4))
    for fmri in ("mean", "trial"):
        llava_loss(vox, fmri)(Spy(), batch, torch.Generator().manual_seed(0))
    assert torch.allclose(seen[0], torch.from_numpy(codes[np.arange(4) % 4]), atol=1e-5)
    assert all(torch.allclose(x, vox[k]) or torch.allclose(x, vox[k + n]) for k, x in enumerate(seen[1]))
    train_llava_stage(llava, data, vox, 1, steps=5, batch_size=8, lr=1e-3, fmri="mean", progress=False)
    train_llava_stage(llava, data, vox, 2, steps=120, batch_size=8, lr=3e-3, fmri="mean", progress=False)
    clean = torch.from_numpy(codes[np.arange(8) % 4])
    answers = llava.generate(clean.numpy(), "What colour is it?", max_new_tokens=8)
    truth = [["red", "blue", "green", "yellow"][i % 4] for i in range(8)]
    assert sum(a == f"It is {t}." for a, t in zip(answers, truth)) >= 6
    llava.save_pretrained(tmp_path / "bl")
    again = BrainLlava.from_pretrained(tmp_path / "bl")
    assert isinstance(again.projector, TokenMixer)
    assert again.generate(clean.numpy(), "What colour is it?", max_new_tokens=8) == answers
    with pytest.raises(ConfigError, match="llava_fmri 'median'"):
        llava_loss(vox, "median")


def test_lora_without_peft_gives_a_clear_error(tiny):
    pytest.importorskip("torch")
    try:
        import peft  # noqa: F401
        pytest.skip("peft is installed")
    except ImportError:
        pass
    fm, enc = tiny
    import copy

    llava = BrainLlava(enc, copy.deepcopy(fm.lm), copy.deepcopy(fm.lm_tokenizer))
    data = llava_batches(_records(4), llava.tokenizer, lambda ids: (np.zeros((len(ids), 1), np.int64),
                                                                    np.ones(len(ids), np.int64)), 32)
    with pytest.raises(ConfigError, match="peft"):
        train_llava_stage(llava, data, torch.zeros(1, 128), 2, steps=1, batch_size=2, lr=1e-3, lora_r=4,
                          progress=False)


def test_caption_metrics_rank_matching_captions_higher():
    refs = [["A red ball on the grass.", "A small red ball on the left, on the grass."],
            ["Two blue cars in a room.", "A room with two blue cars."],
            ["A yellow tree at night.", "A tree at night."]]
    good = ["A red ball on the grass.", "Two blue cars in a room.", "A yellow tree at night."]
    bad = ["A yellow tree at night.", "A red ball on the grass.", "Two blue cars in a room."]
    with CaptionScorer(meteor=False, tokenizer="simple") as sc:
        g, b = sc.score(refs, good), sc.score(refs, bad)
    assert g["BLEU-1"] == pytest.approx(1.0) and g["CIDEr"] > b["CIDEr"] + 1 and g["ROUGE-L"] > b["ROUGE-L"]
    assert np.isnan(g["SPICE"]) and np.isnan(g["METEOR"])
    d = caption_scores({5: refs[0], 6: refs[1]}, {5: good[0], 6: ""}, meteor=False, tokenizer="simple")
    assert 0 < d["BLEU-1"] < 1
    with pytest.raises(ValueError, match="reference"):
        caption_scores([[]], ["x"], meteor=False, tokenizer="simple")


def test_without_java_meteor_and_the_ptb_tokenizer_are_errors_not_silent_switches(monkeypatch):
    from neurorecon.errors import MissingDependencyError
    from neurorecon.nv2l import captions

    monkeypatch.setattr(captions.shutil, "which", lambda name: None)
    with pytest.raises(MissingDependencyError, match=r"METEOR.*needs a Java runtime.*meteor / caption_meteor: false"):
        captions.CaptionScorer(meteor=True, tokenizer="simple")
    with pytest.raises(MissingDependencyError, match=r"PTB tokenizer.*needs a Java runtime.*caption_tokenizer: simple"):
        captions.CaptionScorer(meteor=False, tokenizer="ptb")
    with captions.CaptionScorer(meteor=False, tokenizer="simple") as sc:  # asked for explicitly: no Java needed
        assert sc.tokenizer == "simple" and not sc.meteor


def test_caption_metrics_with_the_java_ptb_tokenizer():
    # METEOR's JVM takes 10-50 s to start, so it runs in the demo notebook rather than here
    from neurorecon.nv2l.captions import java_available

    if not java_available():
        pytest.skip("no Java runtime")
    refs = [["A red ball on the grass."], ["Two blue cars, in a room!"]]
    cands = ["A red ball on the grass.", "Two blue cars in a room"]
    assert caption_scores(refs, cands, meteor=False, tokenizer="ptb") == \
        caption_scores(refs, cands, meteor=False, tokenizer="simple")


def test_qa_scoring_chance_and_derangement():
    assert qa_correct("color", "The object on the left is red.", "red")
    assert not qa_correct("color", "It is red or blue.", "red")
    assert not qa_correct("count", "There are two objects.", "three")
    assert qa_correct("count", "There are 3 objects.", "three")
    assert answer_words("shape", "a circle and a star") == {"circle", "star"}
    ann = _annotations(30)
    items = qa_items(ann, sorted(ann), 64)
    assert set(items.type) == {"count", "color", "shape"}
    assert set(items[items.type == "count"].truth) <= {"one", "two", "three"}
    chance = majority_chance(items, items)
    assert 0 < chance["count"] < 1
    for n in (2, 5, 100):
        p = derangement(n, seed=n)
        assert sorted(p) == list(range(n)) and (p != np.arange(n)).all()


def test_ridge_and_nearest_caption_baseline():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(30, 4))
    x = rng.normal(size=(200, 30))
    y = x @ W + 0.1 * rng.normal(size=(200, 4))
    ridge = fit_ridge(x[:150], y[:150], alphas=(0.1, 1e6))
    assert ridge.alpha == 0.1
    pred = ridge.predict(x[150:])
    assert np.corrcoef(pred.ravel(), y[150:].ravel())[0, 1] > 0.95
    bank = np.eye(4)
    assert nearest_captions(np.array([[0, 0.1, 3, 0], [5, 0, 0, 0]]), bank, list("abcd")) == ["c", "a"]


def test_concept_source_is_checked_before_the_stage_runs():
    from neurorecon.config import load_config
    from neurorecon.nv2l.stage import LanguageConfig, _check_cfg

    _check_cfg(load_config(LanguageConfig, "smoke", overrides=dict(concept_source="annotated")))
    with pytest.raises(ConfigError, match="concept_source 'oracle'"):
        _check_cfg(load_config(LanguageConfig, "smoke", overrides=dict(concept_source="oracle")))
