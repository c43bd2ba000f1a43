"""The foundation stage in the smoke profile: trains every model on a small store, saves, reloads, measures."""

import json

import numpy as np
import pytest
import torch

from neurorecon.artifacts import is_complete, read_metrics
from neurorecon.config import load_config
from neurorecon.data import open_store
from neurorecon.errors import ConfigError
from neurorecon.data.stage import DataConfig, run_data_stage, store_path
from neurorecon.foundation import FoundationConfig, load_foundation
from neurorecon.foundation.stage import run_foundation_stage, split_ids
from neurorecon.foundation.text import (WHERE, corpus, grounded_chats, lookup_questions, scene_description,
                                        scene_texts, synthetic_scene)
from neurorecon.simulate.scenes import CATEGORY_SHAPES, COLORS


@pytest.fixture(scope="module")
def smoke_home(tmp_path_factory):
    """A smoke data store and a trained smoke foundation stage, built once for the module."""
    home = tmp_path_factory.mktemp("foundation_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEURORECON_HOME", str(home))
        run_data_stage(load_config(DataConfig, "smoke"), progress=False)
        logs = []
        run_foundation_stage(load_config(FoundationConfig, "smoke"), progress=False, log=logs.append)
    return home, logs


@pytest.fixture
def in_home(smoke_home, monkeypatch):
    monkeypatch.setenv("NEURORECON_HOME", str(smoke_home[0]))
    return smoke_home


def test_smoke_stage_trains_saves_and_measures(in_home):
    cfg = load_config(FoundationConfig, "smoke")
    assert is_complete("foundation", "smoke", cfg.digest())
    folder = run_foundation_stage(cfg)  # complete with the same config: reused, not retrained
    for rel in ("clip/open_clip_model.safetensors", "clip/open_clip_config.json", "sd/model_index.json",
                "sd/unet/config.json", "sd/vae/config.json", "sd/scheduler/scheduler_config.json",
                "unclip/unet/config.json", "unclip/image_normalizer/config.json", "lm/config.json",
                "lm/tokenizer.json", "train_log.json", "eval_samples.npz"):
        assert (folder / rel).is_file(), rel
    m = read_metrics(folder).set_index(["method", "metric"]).value
    for key in [("clip", "retrieval_image_to_caption_top1"), ("clip", "retrieval_caption_to_image_top1"),
                ("vae", "psnr"), ("vae", "ssim"), ("t2i_dpm++", "two_way_clip"), ("t2i_ddim", "two_way_clip"),
                ("unclip", "two_way_clip"), ("lm", "perplexity"), ("lm", "unigram_perplexity")]:
        assert np.isfinite(m[key]), key
    assert 0 <= m["t2i_dpm++", "two_way_clip"] <= 1 and m["vae", "psnr"] > 5
    per_seed = [m["t2i_dpm++", f"two_way_clip_text@seed{cfg.seed + k}"] for k in range(cfg.eval_seeds)]
    assert cfg.eval_seeds == 2 and m["t2i_dpm++", "two_way_clip_text"] == pytest.approx(np.mean(per_seed))
    assert m["lm", "perplexity"] < m["lm", "unigram_perplexity"]  # even the smoke LM beats unigram statistics
    for kind, n_words in (("color", len(COLORS)), ("shape", len(set(CATEGORY_SHAPES.values())))):
        assert 0 <= m["lm", f"context_lookup_{kind}"] <= 1
        assert m["lm", f"context_lookup_{kind}_chance"] == pytest.approx(1 / n_words)
    assert any("answers read from a scene described in the prompt" in line for line in in_home[1])
    losses = json.loads((folder / "train_log.json").read_text())["losses"]
    assert set(losses) == {"clip", "vae", "unet", "unclip", "lm"}
    assert losses["clip"][-1][1] < losses["clip"][0][1] and losses["lm"][-1][1] < losses["lm"][0][1]


def test_eval_seeds_below_one_is_refused_before_any_work(in_home):
    cfg = load_config(FoundationConfig, "smoke", overrides=dict(eval_seeds=0))
    with pytest.raises(ConfigError, match=r"eval_seeds=0; expected an integer >= 1"):
        run_foundation_stage(cfg, force=True)
    assert is_complete("foundation", "smoke", load_config(FoundationConfig, "smoke").digest())  # untouched


@pytest.mark.parametrize("key", ["lm_grounded", "lm_lookup_probes"])
def test_negative_lm_text_counts_are_refused_before_any_work(in_home, key):
    cfg = load_config(FoundationConfig, "smoke", overrides={key: -1})
    with pytest.raises(ConfigError, match=rf"{key}=-1; expected an integer >= 0"):
        run_foundation_stage(cfg, force=True)
    assert is_complete("foundation", "smoke", load_config(FoundationConfig, "smoke").digest())


def test_grounded_chats_answer_from_the_scene_they_describe():
    chats = grounded_chats(40, seed=3)
    assert chats == grounded_chats(40, seed=3) and chats != grounded_chats(40, seed=4) and len(chats) == 40
    n_colour = 0
    for chat in chats:
        assert chat.startswith("<human>: The image shows ") and chat.count(" <bot>: ") >= 1
        desc = chat[len("<human>: "):chat.index("\n")]
        # every colour answer is the colour the description gives the object at that position
        for turn in chat.split("<human>: ")[1:]:
            q, a = turn.split(" <bot>: ")
            if "What colour is the object " in q:
                where = q.split("What colour is the object ")[1].rstrip("?")
                colour = a.rstrip(". ").split()[-1]
                assert f"{colour} " in desc and any(f"{colour} {c} {where}" in desc for c in CATEGORY_SHAPES), chat
                n_colour += 1
    assert n_colour >= 5


def test_lookup_questions_hold_their_answer_in_the_prompt_only():
    probes = lookup_questions(30, seed=5)
    assert len(probes) == 60 and {k for _, k, _ in probes} == {"color", "shape"}
    for prompt, kind, word in probes:
        assert prompt.endswith("? <bot>:")
        if kind == "color":
            assert word in prompt.split("\n")[0]
        else:
            assert word in CATEGORY_SHAPES.values()
    scene = synthetic_scene(np.random.default_rng(0))
    assert scene_description(scene) in scene_texts(scene)  # the corpus's own description sentence
    for inst in scene["instances"]:
        assert WHERE[inst["attributes"]["position"]] in scene_description(scene)


def test_smoke_models_load_through_the_one_interface(in_home):
    fm = load_foundation("smoke")
    cfg = load_config(FoundationConfig, "smoke")
    store = open_store(store_path("smoke"))
    assert fm.image_size == cfg.image_size and fm.text_shape == (cfg.context_length, cfg.clip_width)
    images = store.get_images(store.image_ids[:3])
    z = fm.encode_images(images)
    assert z.shape == (3, 4, fm.latent_size, fm.latent_size)
    gen = torch.Generator().manual_seed(0)
    z_all = fm.encode_images(store.get_images(split_ids(store)[0]), sample=True, generator=gen)
    assert abs(float(z_all.std()) - 1) < 0.1  # scaling_factor: unit-variance latents, as SD's 0.18215
    raw = fm.image_embeds(images, normalize=False)
    out = fm.sample(fm.text_tokens(["a red ball"] * 3), num_steps=2, image_embeds=raw)
    assert out.shape == (3, 3, fm.image_size, fm.image_size)
    assert "<image>" in fm.lm_tokenizer.get_vocab() and fm.lm_tokenizer.pad_token == "<pad>"


def test_training_never_sees_held_out_images(in_home):
    store = open_store(store_path("smoke"))
    train, test = split_ids(store)
    assert len(test) and not np.isin(train, test).any()
    assert set(test) == set(store.subject(store.subjects[0]).test_image_ids)
    texts = corpus(store.annotations, train)
    assert len(texts) == sum(len(scene_texts(store.annotations[int(i)])) for i in train)
    one = scene_texts(store.annotations[int(train[0])])
    assert one[:5] == store.annotations[int(train[0])]["captions"]
    assert any(t.startswith("Question: how many objects") for t in one)
