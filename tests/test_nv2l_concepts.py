"""Concept localisation (nv2l/concepts.py): the LM's concept extraction, Grad-CAM maps and their ensemble over
patch sizes, the ablation → reconstruction check, map specificity and the simulator's category tuning."""

import numpy as np
import pandas as pd
import pytest
import torch

from neurorecon.foundation.tiny import tiny_lm, train_bpe_tokenizer
from neurorecon.nv2l.concepts import (CONCEPT_INSTRUCTIONS, EXTRACTION_PROMPT, concept_instructions, concept_maps,
                                      concept_word, extract_concepts, gradcam, map_specificity,
                                      reconstruction_ablation, top_mask, voxel_map)
from neurorecon.nv2l.llava import encode_chat
from neurorecon.nv2l.vit3d import ViT3D

pytestmark = pytest.mark.usefixtures("one_torch_thread")
WORDS = ["ball", "box", "cup", "tree"]


def test_concept_word_maps_answers_to_the_vocabulary():
    assert concept_word("The cup.", WORDS) == "cup"
    assert concept_word("two boxes and a ball", WORDS) == "box"  # the earliest, plural forms included
    assert concept_word("balloon", WORDS) is None  # whole words only
    assert concept_word("", WORDS) is None
    assert concept_word("a Tree", WORDS) == "tree"
    ins = concept_instructions(["cup", "ball"] * 10, seed=1)
    assert all(any(t.format(c) == q for t in CONCEPT_INSTRUCTIONS) for q, c in zip(ins, ["cup", "ball"] * 10))
    assert len(set(ins)) > 2 and ins == concept_instructions(["cup", "ball"] * 10, seed=1)


def test_extraction_prompts_the_lm_as_it_was_taught_and_counts_failures():
    """A tiny LM taught (in the brain LLaVA's chat format) to answer the extraction prompt extracts the concepts
    of held-out instructions; the untrained one's answers name no concept and come back as None, not a guess."""
    train = [(t.format(w), w) for t in CONCEPT_INSTRUCTIONS[:4] for w in WORDS]
    test = [(t.format(w), w) for t in CONCEPT_INSTRUCTIONS[4:] for w in WORDS]
    train_q, test_q = [q for q, _ in train], [q for q, _ in test]
    tok = train_bpe_tokenizer([EXTRACTION_PROMPT.format(q) for q in train_q + test_q] + WORDS)
    lm = tiny_lm(len(tok), hidden=64)
    answers, got = extract_concepts(lm, tok, test_q, WORDS, max_new_tokens=4)
    assert len(answers) == len(test_q) and all(isinstance(a, str) for a in answers)
    assert all(g is None or g in WORDS for g in got)
    assert sum(g is None for g in got) >= len(got) // 2  # untrained: mostly unextracted (reported as None)
    data = [encode_chat(tok, [{"from": "human", "value": EXTRACTION_PROMPT.format(q)}, {"from": "gpt", "value": w}])
            for q, w in train]
    L = max(len(i) for i, _ in data)
    ids = torch.tensor([i + [tok.pad_token_id] * (L - len(i)) for i, _ in data])
    labels = torch.tensor([lab + [-100] * (L - len(lab)) for _, lab in data])
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    lm.train()
    for _ in range(80):
        loss = lm(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    answers, got = extract_concepts(lm, tok, train_q + test_q, WORDS, max_new_tokens=4, batch_size=5)
    assert got[:len(train)] == [w for _, w in train]  # the generation prompt is the one it learnt
    single = extract_concepts(lm, tok, test_q[:1], WORDS, max_new_tokens=4)[0]
    assert single == answers[len(train_q):len(train_q) + 1]  # batched (left-padded) = one at a time


def _toy(seed=0, n=64):
    """An 8x8x8 grid; cube 5 (of 8 4^3 cubes) carries concept A, cube 2 concept B."""
    rng = np.random.default_rng(seed)
    ijk = np.argwhere(np.ones((8, 8, 8), bool))
    return ijk, rng.normal(size=(n, len(ijk))).astype(np.float32)


def test_concept_maps_ensemble_over_patch_sizes_and_methods():
    ijk, x = _toy()
    torch.manual_seed(0)
    models = [ViT3D((8, 8, 8), ijk, patch_size=P, width=16, depth=2, heads=2, head_hidden=16, clip_dim=6,
                    latent_shape=(1, 2, 2)).eval() for P in (4, 2)]
    xt, text = torch.from_numpy(x[:5]), torch.randn(1, 6)
    single = [voxel_map(m, gradcam(m, xt, text)) for m in models]
    assert single[0].shape == (5, 512) and single[1].shape == (5, 512)
    assert len(torch.unique(single[0][0])) <= 8 < len(torch.unique(single[1][0]))  # cube values: 8 vs 64 cubes
    ens = concept_maps(models, xt, text)
    norm = [s / s.mean(1, keepdim=True) for s in single]
    assert torch.allclose(ens, (norm[0] + norm[1]) / 2, atol=1e-5)
    assert torch.allclose(concept_maps(models[0], xt, text), norm[0], atol=1e-5)
    for method in ("token", "voxel"):
        m = concept_maps(models, xt, text, method=method, contrast=torch.randn(4, 6))
        assert m.shape == (5, 512) and (m >= 0).all() and torch.isfinite(m).all()
    assert gradcam(models[0], xt, text, "voxel").shape == (5, 512)
    with pytest.raises(ValueError, match="concept map method"):
        gradcam(models[0], xt, text, "saliency")


def test_reconstruction_ablation_drops_the_concept_for_located_voxels():
    """A stand-in reconstruction whose concept score reads voxels 0..49: ablating them (the map's top) removes the
    concept, ablating as many random voxels barely does."""
    ijk, x = _toy(n=12)
    x[:, :50] += 3.0
    model = ViT3D((8, 8, 8), ijk, patch_size=4, width=16, depth=1, heads=2, head_hidden=16, clip_dim=6,
                  latent_shape=(1, 2, 2))
    maps = torch.zeros(12, 512)
    maps[:, :50] = 1.0
    calls = []

    def reconstruct(v):
        calls.append(v.shape)
        img = np.clip(np.asarray(v)[:, :50].mean(1) / 4, 0, 1)  # images whose brightness is the concept
        return np.repeat(img[:, None, None, None], 3, 1) * np.ones((1, 3, 4, 4))

    def score(images, text):
        assert text.shape == (12, 6)
        return images.reshape(len(images), -1).mean(1)

    res = reconstruction_ablation(reconstruct, score, model, x, maps, torch.randn(12, 6), fraction=50 / 512,
                                  n_random=2)
    assert len(calls) == 4 and all(c == (12, 512) for c in calls)  # as is, located, 2 random draws
    assert list(res.columns) == ["score", "score_located", "score_random", "drop_located", "drop_random"]
    assert (res.drop_located > res.drop_random).all() and res.drop_located.mean() > 0.5
    assert abs(res.drop_random.mean()) < 0.2
    mask = top_mask(maps, 50, np.random.default_rng(0))
    assert mask.sum(1).eq(50).all() and mask[:, :50].all()


def test_map_specificity_against_a_known_tuning():
    V = 40
    tuning = np.zeros((V, 2))
    tuning[:10, 0] = 1.0  # concept "ball" lives on voxels 0-9, "cup" on 10-19
    tuning[10:20, 1] = 1.0
    high = np.zeros(V, bool)
    high[:20] = True
    good = np.stack([tuning[:, 0] + 0.1, tuning[:, 1] + 0.1])
    res = map_specificity(good, [7, 7], ["ball", "cup"], ["ball", "cup"], tuning=tuning, high=high)
    assert res["map_corr_same_image"] < 0 and res["n_pairs"] == 1
    assert res["tuning_corr_own"] > 0.9 > res["tuning_corr_other"] and res["frac_own_gt_other"] == 1.0
    assert res["map_high_ratio"] > 5
    same = np.stack([tuning.sum(1) + 0.1] * 2)  # one map for both concepts
    res = map_specificity(same, [7, 7], ["ball", "cup"], ["ball", "cup"], tuning=tuning)
    assert res["map_corr_same_image"] == pytest.approx(1.0) and res["frac_own_gt_other"] == 0.0
    assert np.isnan(map_specificity(good, [1, 2], ["ball", "cup"], ["ball", "cup"])["map_corr_same_image"])


def test_simulator_category_tuning_matches_the_store(smoke_data_home, home_set_to):
    from neurorecon.data import open_store
    from neurorecon.data.stage import store_path
    from neurorecon.nv2l.concepts import union_truth
    from neurorecon.simulate.scenes import CATEGORIES

    with home_set_to(smoke_data_home):
        store = open_store(store_path("smoke"))
    s = store.subjects[0]
    gt = union_truth(store, s, list(CATEGORIES))
    n = len(store.common_grid["union_ijk"])
    assert gt["tuning"].shape == (n, len(CATEGORIES)) and gt["covered"].shape == (n,)
    assert (gt["tuning"] >= 0).all() and gt["high"].any() and gt["covered"].mean() > 0.5
    t = gt["tuning"][gt["covered"]]
    h = gt["high"][gt["covered"]]
    assert t[h].mean() > 3 * t[~h].mean()  # category tuning lives in the high areas
    assert union_truth(store, s, ["dog"]) is None  # a concept the simulator does not know: no ground truth


def test_reconstruction_stage_concept_check_reads_the_language_maps(smoke_data_home, home_set_to, tmp_path,
                                                                    monkeypatch):
    """Notebook 07's check on a stand-in NV2L method: the saved maps of the subject's first test images, ablated
    fMRI through the method, the concept scored by (stand-in) CLIP, metrics recorded."""
    import yaml

    from neurorecon.config import load_config
    from neurorecon.data import open_store
    from neurorecon.data.stage import store_path
    from neurorecon.evaluation import reconstruction as rec
    from neurorecon.nv2l.encoder import test_voxels

    with home_set_to(smoke_data_home):
        store = open_store(store_path("smoke"))
    s = store.subjects[0]
    x, ids = test_voxels(store, s)
    V = x.shape[1]
    k = int(round(0.1 * V))
    lang = tmp_path / "language"
    lang.mkdir()
    (lang / "config.yaml").write_text(yaml.safe_dump(dict(concept_prompt="a {}", concept_fraction=0.1)))
    maps = np.zeros((4, V), np.float16)
    maps[:, :k] = 1  # the located voxels: the ones the stand-in reconstruction reads the concept from
    np.savez(lang / "concept_maps.npz", row=np.arange(4), subject=np.array([s, s, s, 99]),
             image_id=np.array([ids[0], ids[1], ids[5], ids[0]]), concept=np.array(["ball", "cup", "box", "cup"]),
             maps=maps)
    monkeypatch.setattr(rec, "require_stage", lambda stage, profile: lang)

    class Method:
        encoder = ViT3D(store.common_grid["shape"], store.common_grid["union_ijk"], patch_size=4, width=16, depth=1,
                        heads=2, head_hidden=16, clip_dim=3, latent_shape=(1, 2, 2))

        def __call__(self, v):
            red = np.clip(np.abs(v[:, :k]).mean(1) / 2, 0, 1)
            img = np.full((len(v), 3, 4, 4), 0.5, np.float32)
            img[:, 0] = red[:, None, None]
            return torch.from_numpy(img)

    class FM:
        def text_embeds(self, texts):
            return torch.tensor([[1.0, 0.0, 0.0]] * len(texts))

        def image_embeds(self, images):
            return torch.nn.functional.normalize(torch.from_numpy(images.reshape(len(images), -1, 3).mean(1) + 0.0),
                                                 dim=-1)

    class W:
        rows = []

        def add_metric(self, *row):
            self.rows.append(row)

    cfg = load_config(rec.ReconstructionConfig, "smoke", overrides=dict(concept_images=2, concept_random_draws=2))
    res = rec.concept_check(cfg, Method(), FM(), store, s, W(), log=lambda m: None)
    assert list(res.image_id) == [ids[0], ids[1]] and list(res.concept) == ["ball", "cup"]  # first 2 images only
    assert (res.drop_located > res.drop_random).all()
    metrics = {r[3]: r[4] for r in W.rows}
    assert metrics["n_cases"] == 2 and metrics["frac_located_gt_random"] == 1.0
    assert metrics["score_drop_located"] > metrics["score_drop_random"]
    assert rec.concept_check(cfg, Method(), FM(), store, store.subjects[1], log=lambda m: None).empty  # no maps
