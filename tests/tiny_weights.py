"""Tiny random foundation models written in exactly the on-disk formats of the real weights (SD 2.1 and Stable
unCLIP diffusers folders, open_clip checkpoints, a transformers LLM folder), for the full-profile tests."""

import json

import torch

from neurorecon.foundation.save import save_lm, save_unclip
from neurorecon.foundation.tiny import (clip_model_config, sd_scheduler_config, tiny_clip, tiny_lm, tiny_unet,
                                        tiny_vae, unclip_noising_scheduler, unclip_normalizer)

H_WIDTH, L_EMBED = 64, 48  # "ViT-H/14" text width (1024 in full) and "ViT-L/14" image embedding dim (768 in full)


def clip_text_parts():
    """A tiny transformers CLIPTextModel + CLIPTokenizer: what the real diffusers folders carry (not loaded)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
    tok = CLIPTokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>")
    te = CLIPTextModel(CLIPTextConfig(vocab_size=6, hidden_size=H_WIDTH, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, projection_dim=H_WIDTH, bos_token_id=0,
                                      eos_token_id=1, pad_token_id=1))
    return te, tok


def write_weights(root):
    """SD/unCLIP diffusers folders, two open_clip checkpoints (.bin and .safetensors) and an LLM folder."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from safetensors.torch import save_file

    vae = tiny_vae((16, 32), seed=0)
    unet = tiny_unet(8, H_WIDTH, (32, 64), seed=0)
    te, tok = clip_text_parts()
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
