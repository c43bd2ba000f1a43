"""The full-profile loaders, exercised with tiny random models saved in exactly the formats of the real weights."""

import json
import shutil

import pytest
import torch
import yaml

from neurorecon.errors import DataError, MissingStageError
from neurorecon.foundation import FoundationFilesError, load_foundation
from neurorecon.foundation.load import IMAGE_TOKEN, check_paths
from neurorecon.foundation.save import save_lm, save_unclip
from neurorecon.foundation.tiny import (clip_model_config, sd_scheduler_config, tiny_clip, tiny_lm, tiny_unet,
                                        tiny_vae, unclip_noising_scheduler, unclip_normalizer)

H_WIDTH, L_EMBED = 64, 48  # "ViT-H/14" text width (1024 in full) and "ViT-L/14" image embedding dim (768 in full)


def _clip_text_parts():
    """A tiny transformers CLIPTextModel + CLIPTokenizer: what the real diffusers folders carry (not loaded)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
    tok = CLIPTokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>")
    te = CLIPTextModel(CLIPTextConfig(vocab_size=6, hidden_size=H_WIDTH, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, projection_dim=H_WIDTH, bos_token_id=0,
                                      eos_token_id=1, pad_token_id=1))
    return te, tok


def _write_weights(root):
    """SD/unCLIP diffusers folders, two open_clip checkpoints (.bin and .safetensors) and an LLM folder."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from safetensors.torch import save_file

    vae = tiny_vae((16, 32), seed=0)
    unet = tiny_unet(8, H_WIDTH, (32, 64), seed=0)
    te, tok = _clip_text_parts()
    StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                            scheduler=DDPMScheduler.from_config(sd_scheduler_config()), safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False).save_pretrained(root / "sd21")
    assert {"model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= {
        p.name for p in (root / "sd21").iterdir()}
    save_unclip(root / "unclip", tiny_unet(8, H_WIDTH, (32, 64), L_EMBED, seed=1), vae,
                sd_scheduler_config(), unclip_normalizer(torch.randn(16, L_EMBED)), unclip_noising_scheduler())
    # open_clip-style checkpoints: a state_dict (torch.save .bin for "H", safetensors for "L") + model config JSON
    h_cfg = clip_model_config(image_size=32, context_length=77, width=H_WIDTH, embed_dim=H_WIDTH, layers=2)
    clip_h, _ = tiny_clip(32, 77, H_WIDTH, H_WIDTH, 2, seed=2)
    (root / "clip_h").mkdir()
    torch.save(clip_h.state_dict(), root / "clip_h" / "open_clip_pytorch_model.bin")
    (root / "clip_h" / "tiny-vit-h.json").write_text(json.dumps(h_cfg))
    l_cfg = clip_model_config(image_size=32, context_length=77, width=32, embed_dim=L_EMBED, layers=1)
    clip_l, _ = tiny_clip(32, 77, 32, L_EMBED, 1, seed=3)
    (root / "clip_l").mkdir()
    save_file({k: v.contiguous() for k, v in clip_l.state_dict().items()},
              str(root / "clip_l" / "open_clip_model.safetensors"))
    (root / "clip_l" / "tiny-vit-l.json").write_text(json.dumps(l_cfg))
    # an LLM folder whose tokenizer has neither a pad token nor <image>: the loader adds both
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(["a red ball on the grass", "what colour is the ball?"] * 5,
                            trainers.BpeTrainer(vocab_size=120, special_tokens=["<s>", "</s>", "<unk>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    llm_tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    save_lm(root / "llm", tiny_lm(len(llm_tok), 32, 1), llm_tok)
    return dict(sd_path=str(root / "sd21"), unclip_path=str(root / "unclip"), clip_h_model="tiny-vit-h",
                clip_h_checkpoint=str(root / "clip_h" / "open_clip_pytorch_model.bin"),
                clip_h_config=str(root / "clip_h" / "tiny-vit-h.json"), clip_l_model="tiny-vit-l",
                clip_l_checkpoint=str(root / "clip_l" / "open_clip_model.safetensors"),
                clip_l_config=str(root / "clip_l" / "tiny-vit-l.json"), llm_path=str(root / "llm"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    return root, _write_weights(root)


def _copy(weights, dst):
    """A private copy of the module's weights (tests that break files work on it)."""
    root, paths = weights
    shutil.copytree(root, dst)
    return {k: v.replace(str(root), str(dst)) if isinstance(v, str) else v for k, v in paths.items()}


def _yaml(tmp_path, paths):
    f = tmp_path / "my_foundation.yaml"
    f.write_text(yaml.safe_dump({"full": {**paths, "dtype": "float32", "device": "cpu"}}))
    return f


def test_full_profile_loads_tiny_checkpoints(tmp_path, weights):
    paths = weights[1]
    assert check_paths(paths) == []
    fm = load_foundation("full", config_file=_yaml(tmp_path, paths))
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
    assert load_foundation("full", config_file=_yaml(tmp_path, paths), with_lm=False).lm is None


def test_missing_paths_give_one_message_listing_every_file(tmp_path, weights):
    with pytest.raises(FoundationFilesError) as err:
        load_foundation("full")  # the shipped config names no paths
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
        load_foundation("full", config_file=_yaml(tmp_path, paths))
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
        load_foundation("full", config_file=_yaml(tmp_path, paths))


def test_demo_profile_without_stage_names_notebook_02():
    with pytest.raises(MissingStageError, match="02_foundation_models"):
        load_foundation("smoke")
