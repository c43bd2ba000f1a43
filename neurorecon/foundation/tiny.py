"""Tiny randomly initialised foundation components, built from the same library classes as the real ones.

Used by tests (and as the starting architectures that notebook 02 trains in the demo). Everything is offline:
open_clip's bundled BPE tokenizer, diffusers models from configs, a transformers Llama and a ``tokenizers`` BPE
trained on the given texts.
"""

import torch

from .clip import clip_image_embeds, clip_text_embeds, clip_text_tokens
from .interface import Foundation

__all__ = ["tiny_clip", "clip_model_config", "tiny_vae", "tiny_unet", "sd_scheduler_config", "unclip_noising_scheduler",
           "unclip_normalizer", "tiny_lm", "train_bpe_tokenizer", "LM_SPECIALS", "tiny_random_foundation"]

DEFAULT_TEXTS = ["a red ball on the grass", "two blue cars in a room", "a small green tree to the left",
                 "what colour is the ball?", "the ball is red."]


def clip_model_config(image_size=32, context_length=32, width=64, embed_dim=64, layers=2, patch_size=None):
    """An open_clip model config (the JSON format of ``open_clip/model_configs``) for a small CLIP."""
    return dict(embed_dim=embed_dim,
                vision_cfg=dict(image_size=image_size, patch_size=patch_size or max(4, image_size // 8), width=width,
                                layers=layers, head_width=32),
                text_cfg=dict(context_length=context_length, vocab_size=49408, width=width,
                              heads=max(1, width // 32), layers=layers))


def tiny_clip(image_size=32, context_length=32, width=64, embed_dim=64, layers=2, seed=0, patch_size=None):
    """A small open_clip ``CLIP`` with its bundled BPE tokenizer (context ``context_length``)."""
    import open_clip
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(**clip_model_config(image_size, context_length, width, embed_dim, layers, patch_size))
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    return model, tokenizer


def tiny_vae(channels=(32, 64), latent_channels=4, seed=0):
    """A small ``AutoencoderKL`` downsampling by ``2 ** (len(channels) - 1)`` (at least 2 channels per norm group)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    n = len(channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         block_out_channels=tuple(channels), layers_per_block=1,
                         norm_num_groups=min(32, min(channels) // 2))


def tiny_unet(sample_size=16, cross_attention_dim=64, channels=(32, 64), image_embed_dim=None, seed=0,
              latent_channels=4, head_dim=8, layers_per_block=1):
    """A small ``UNet2DConditionModel``; with ``image_embed_dim`` it is the unCLIP-style variant that adds a
    projection of ``class_labels`` (image embedding ⊕ noise-level embedding, ``2 * image_embed_dim`` wide, as in
    Stable unCLIP) to the time embedding (``class_embed_type="projection"``).

    Every level but the lowest-resolution one has cross-attention (SD puts it on 3 of its 4 levels)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    extra = {}
    if image_embed_dim:
        extra = dict(class_embed_type="projection", projection_class_embeddings_input_dim=2 * image_embed_dim)
    n = len(channels)
    down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
    return UNet2DConditionModel(sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
                                layers_per_block=layers_per_block, block_out_channels=tuple(channels),
                                down_block_types=down, up_block_types=up, cross_attention_dim=cross_attention_dim,
                                attention_head_dim=head_dim, norm_num_groups=min(32, min(channels) // 2), **extra)


def sd_scheduler_config():
    """Stable Diffusion's training noise schedule (1000 steps, scaled-linear betas 0.00085..0.012, eps)."""
    from diffusers import DDPMScheduler

    return dict(DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                              steps_offset=1).config)


def unclip_noising_scheduler():
    """Stable unCLIP's image-embedding noise schedule (``image_noising_scheduler``: squared-cosine, 1000 steps)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)


def unclip_normalizer(embeds):
    """A ``StableUnCLIPImageNormalizer`` holding the mean and std of raw image embeddings ``(n, E)``."""
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

    norm = StableUnCLIPImageNormalizer(embedding_dim=embeds.shape[-1])
    with torch.no_grad():
        norm.mean.copy_(embeds.float().mean(0, keepdim=True))
        norm.std.copy_(embeds.float().std(0, keepdim=True).clamp_min(1e-6))
    return norm


#: Special tokens of the demo LM tokenizer (pad, bos, eos, unk and the image placeholder of the language stage).
LM_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]


def train_bpe_tokenizer(texts, vocab_size=300):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained offline on ``texts`` with chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(LM_SPECIALS)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", additional_special_tokens=["<image>"])


def tiny_lm(vocab_size, hidden=64, layers=2, seed=0, max_positions=256):
    """A small ``LlamaForCausalLM`` (pad 0, bos 1, eos 2 as in :data:`LM_SPECIALS`)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 32),
                      num_key_value_heads=max(1, hidden // 32), max_position_embeddings=max_positions,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def tiny_random_foundation(image_size=32, seed=0, texts=DEFAULT_TEXTS, with_lm=True, device="cpu", dtype="float32"):
    """A complete, untrained :class:`Foundation` of tiny components (for tests of later stages).

    The frozen parts are put on ``device`` in ``dtype`` (the unCLIP normaliser's statistics stay float32), as
    :func:`neurorecon.foundation.load_foundation` does with real weights. Built inside ``with torch.device(d)``
    the components are created there directly (the fake-CUDA device tests)."""
    from ..devices import cast_module

    clip, tokenizer = tiny_clip(image_size=image_size, seed=seed)
    clip.eval().requires_grad_(False)
    vae = tiny_vae(seed=seed)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        calib = clip_image_embeds(clip, torch.rand(8, 3, image_size, image_size, generator=gen, device="cpu")
                                  .to(clip.logit_scale.device), normalize=False)
    latent = image_size // 2
    width = clip.transformer.width
    embed = clip.text_projection.shape[1]
    unet = tiny_unet(latent, width, seed=seed)
    unclip = tiny_unet(latent, width, image_embed_dim=embed, seed=seed + 1)
    clip, vae, unet, unclip = (cast_module(m, device, dtype) for m in (clip, vae, unet, unclip))
    lm = lm_tok = None
    if with_lm:
        lm_tok = train_bpe_tokenizer(texts)
        lm = cast_module(tiny_lm(len(lm_tok), seed=seed), device, dtype)
    return Foundation(
        profile="test", image_size=image_size,
        text_tokens_fn=lambda t, final=False: clip_text_tokens(clip, tokenizer, t, device, final).float(),
        text_embeds_fn=lambda t: clip_text_embeds(clip, tokenizer, t, device).float(),
        image_embeds_fn=lambda x: clip_image_embeds(clip, x.to(device), normalize=False),
        vae=vae, unet=unet, scheduler_config=sd_scheduler_config(), unclip_unet=unclip,
        unclip_normalizer=cast_module(unclip_normalizer(calib), device), device=device,
        unclip_noising_scheduler=unclip_noising_scheduler(), unclip_scheduler_config=sd_scheduler_config(),
        lm=lm, lm_tokenizer=lm_tok, names=dict(clip="tiny-random-clip", vae="tiny-random-vae",
                                                unet="tiny-random-unet", lm="tiny-random-llama"),
        extras=dict(clip_text=clip, clip_image=clip, clip_tokenizer=tokenizer, dtype=dtype),
    ).frozen()
