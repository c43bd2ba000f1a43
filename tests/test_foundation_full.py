"""The full-profile loaders, exercised with tiny random models saved in exactly the formats of the real weights."""

import json
import shutil

import pytest
import torch

from neurorecon.artifacts import StageWriter
from neurorecon.config import load_config
from neurorecon.errors import DataError, MissingStageError, NeuroreconError
from neurorecon.foundation import FoundationConfig, FoundationFilesError, load_foundation
from neurorecon.foundation.load import (COMPONENTS, IMAGE_TOKEN, PATHS_FILE, check_paths, config_paths,
                                        configured_components, load_from_paths)
from tiny_weights import H_WIDTH, L_EMBED, write_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    return root, write_weights(root)


def _copy(weights, dst):
    """A private copy of the module's weights (tests that break files work on it)."""
    root, paths = weights
    shutil.copytree(root, dst)
    return {k: v.replace(str(root), str(dst)) if isinstance(v, str) else v for k, v in paths.items()}


def _record_stage(paths, dtype="float32"):
    """A complete full-profile foundation stage that checked and recorded ``paths`` (what notebook 02 leaves)."""
    cfg = load_config(FoundationConfig, "full", overrides={**paths, "dtype": dtype, "device": "cpu"})
    configured = configured_components(paths)
    with StageWriter(cfg) as w:
        keep = {k for c in configured for k in COMPONENTS[c][0]}
        (w.path / PATHS_FILE).write_text(json.dumps({k: v for k, v in paths.items() if k in keep}))
    return cfg


def test_full_profile_loads_tiny_checkpoints(weights):
    paths = weights[1]
    assert check_paths(paths) == []
    _record_stage(paths)
    fm = load_foundation("full")  # the paths travel through the foundation stage's record
    assert fm.profile == "full" and fm.image_size == 16 and fm.latent_channels == 4
    tokens = fm.text_tokens(["a red ball", ""])
    assert tokens.shape == (2, 77, H_WIDTH) and fm.text_shape == (77, H_WIDTH)
    images = torch.rand(3, 3, 32, 32)
    raw = fm.image_embeds(images, normalize=False)
    assert raw.shape == (3, L_EMBED) and fm.embed_dim == L_EMBED
    torch.testing.assert_close(fm.image_embeds(images).norm(dim=-1), torch.ones(3))
    assert fm.unclip_class_labels(raw, 100).shape == (3, 2 * L_EMBED)
    out = fm.sample(tokens[:1].expand(3, -1, -1), num_steps=2, image_embeds=raw, scheduler="ddim")
    assert out.shape == (3, 3, 16, 16)
    out = fm.sample(tokens[:1], num_steps=2, scheduler="dpm++")
    assert out.shape == (1, 3, 16, 16)
    tok = fm.lm_tokenizer
    assert tok.pad_token is not None and IMAGE_TOKEN in tok.get_vocab()
    assert fm.lm.get_input_embeddings().num_embeddings >= len(tok)
    ids = tok(f"{IMAGE_TOKEN} what colour is the ball?", return_tensors="pt", return_token_type_ids=False)
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) in ids["input_ids"][0].tolist()
    assert fm.lm(**ids).logits.shape[-1] >= len(tok)
    # with_lm=False skips the LLM
    assert load_foundation("full", with_lm=False).lm is None


def test_each_stage_loads_and_checks_only_the_components_it_uses(tmp_path, weights):
    root = tmp_path / "w"
    paths = _copy(weights, root)
    shutil.rmtree(root / "llm")
    shutil.rmtree(root / "unclip")
    neuropictor = ("sd", "clip_h", "clip_l")
    assert check_paths(paths, neuropictor) == []  # the missing LLM and unCLIP folders are not looked at
    _record_stage({**paths, "llm_path": None, "unclip_path": None})
    fm = load_foundation("full", components=neuropictor)
    assert fm.unclip_unet is None and fm.lm is None and fm.unet is not None
    assert fm.extras["components"] == neuropictor
    with pytest.raises(FoundationFilesError) as err:  # NV2L asks for what the foundation stage did not record
        load_foundation("full", components=("clip_l", "unclip", "lm"))
    assert "unclip_path" in str(err.value) and "llm_path" in str(err.value)
    only_text = load_from_paths(paths, components=("clip_l",))
    assert only_text.unet is None and only_text.embed_dim == L_EMBED
    with pytest.raises(NeuroreconError, match="needs the foundation component 'clip_h'"):
        only_text.text_tokens(["a ball"])


def test_missing_paths_give_one_message_listing_every_file(tmp_path, weights):
    with pytest.raises(FoundationFilesError) as err:
        load_from_paths(config_paths(load_config(FoundationConfig, "full")))  # the shipped config names no paths
    msg = str(err.value)
    for key in ("sd_path", "unclip_path", "clip_h_checkpoint", "clip_l_checkpoint", "llm_path"):
        assert key in msg
    assert isinstance(err.value, DataError) and len(err.value.problems) == 5

    root = tmp_path / "w"
    paths = _copy(weights, root)
    (root / "sd21" / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (root / "unclip" / "image_normalizer" / "config.json").unlink()
    paths["clip_l_checkpoint"] = str(tmp_path / "nowhere" / "open_clip_pytorch_model.bin")
    paths["llm_path"] = str(tmp_path / "no_llm")
    with pytest.raises(FoundationFilesError) as err:
        load_from_paths(paths)
    msg = str(err.value)
    assert "sd21/vae/diffusion_pytorch_model.safetensors: expected the weights of the SD 2.1 AutoencoderKL" in msg
    assert "unclip/image_normalizer/config.json" in msg
    assert "nowhere/open_clip_pytorch_model.bin: expected the OpenAI CLIP ViT-L/14" in msg
    assert "no_llm/config.json" in msg and "no_llm/model.safetensors" in msg and "no_llm/tokenizer.json" in msg
    assert len(err.value.problems) == 6


def _edit_json(path, **changes):
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_shape_mismatches_are_reported(tmp_path, weights):
    root = tmp_path / "w"
    paths = _copy(weights, root)
    _edit_json(root / "sd21" / "unet" / "config.json", cross_attention_dim=32)
    _edit_json(root / "unclip" / "unet" / "config.json", projection_class_embeddings_input_dim=80)
    _edit_json(root / "unclip" / "image_normalizer" / "config.json", embedding_dim=40)
    _edit_json(root / "sd21" / "vae" / "config.json", latent_channels=8)
    problems = check_paths(paths)
    text = "\n".join(f"{p}: {e} (found {f})" for p, e, f in problems)
    assert "cross_attention_dim == the tiny-vit-h text width 64 (found 32)" in text
    assert "projection_class_embeddings_input_dim == 2 × the tiny-vit-l image embedding dim (96" in text
    assert "embedding_dim == the tiny-vit-l image embedding dim 48 (found 40)" in text
    assert "in/out_channels == the VAE's latent_channels 8 (found 4/4)" in text
    with pytest.raises(FoundationFilesError, match="cross_attention_dim"):
        load_from_paths(paths)


def test_a_profile_without_foundation_stage_names_notebook_02():
    for profile in ("smoke", "full"):
        with pytest.raises(MissingStageError, match="02_foundation_models"):
            load_foundation(profile)
