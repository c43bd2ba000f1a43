"""Tiny randomly initialised foundation components, built from the same library classes as the real ones.

Used by tests (and as the starting architectures that notebook 02 trains in the demo). Everything is offline:
open_clip's bundled BPE tokenizer, diffusers models from configs, a transformers Llama and a ``tokenizers`` BPE
trained on the given texts.
"""

import torch
import torch.nn.functional as F

from .interface import Foundation

__all__ = ["tiny_clip", "clip_text_tokens", "clip_text_embeds", "clip_image_embeds", "tiny_vae", "tiny_unet",
           "sd_scheduler_config", "tiny_lm", "train_bpe_tokenizer", "tiny_random_foundation"]

DEFAULT_TEXTS = ["a red ball on the grass", "two blue cars in a room", "a small green tree to the left",
                 "what colour is the ball?", "the ball is red."]


def tiny_clip(image_size=32, context_length=32, width=64, embed_dim=64, layers=2, seed=0):
    """A small open_clip ``CLIP`` with its bundled BPE tokenizer (context ``context_length``)."""
    import open_clip
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(embed_dim=embed_dim,
                 vision_cfg=dict(image_size=image_size, patch_size=max(4, image_size // 8), width=width,
                                 layers=layers, head_width=32),
                 text_cfg=dict(context_length=context_length, vocab_size=49408, width=width, heads=max(1, width // 32),
                               layers=layers))
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    return model, tokenizer


def clip_text_tokens(model, tokenizer, texts, device="cpu"):
    """SD 2.x conditioning: the penultimate text-transformer layer, then ``ln_final`` → (n, L, width)."""
    ids = tokenizer(texts).to(device)
    x = model.token_embedding(ids) + model.positional_embedding[: ids.shape[1]]
    mask = model.attn_mask[: ids.shape[1], : ids.shape[1]] if model.attn_mask is not None else None
    blocks = model.transformer.resblocks
    batch_first = getattr(model.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in blocks[:-1]:
        x = block(x, attn_mask=mask)
    if not batch_first:
        x = x.transpose(0, 1)
    return model.ln_final(x)


def clip_text_embeds(model, tokenizer, texts, device="cpu"):
    return F.normalize(model.encode_text(tokenizer(texts).to(device)), dim=-1)


def clip_image_embeds(model, images):
    """``images``: float (n, 3, H, W) in [0, 1], resized to the model's input and CLIP-normalised."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(OPENAI_DATASET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, device=images.device).view(1, 3, 1, 1)
    return F.normalize(model.encode_image((images - mean) / std), dim=-1)


def tiny_vae(channels=(32, 64), latent_channels=4, seed=0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    n = len(channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         block_out_channels=tuple(channels), layers_per_block=1, norm_num_groups=16)


def tiny_unet(sample_size=16, cross_attention_dim=64, channels=(32, 64), image_embed_dim=None, seed=0):
    """A small ``UNet2DConditionModel``; with ``image_embed_dim`` it is the unCLIP-style variant that adds a
    projected image embedding to the time embedding (``class_embed_type="projection"``)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    extra = {}
    if image_embed_dim:
        extra = dict(class_embed_type="projection", projection_class_embeddings_input_dim=image_embed_dim)
    return UNet2DConditionModel(sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=tuple(channels),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=16,
                                **extra)


def sd_scheduler_config():
    """Stable Diffusion's training noise schedule (1000 steps, scaled-linear betas 0.00085..0.012, eps)."""
    from diffusers import DDPMScheduler

    return dict(DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                              steps_offset=1).config)


def train_bpe_tokenizer(texts, vocab_size=300):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained offline on ``texts`` with chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", additional_special_tokens=["<image>"])


def tiny_lm(vocab_size, hidden=64, layers=2, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 32),
                      num_key_value_heads=max(1, hidden // 32), max_position_embeddings=256, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def tiny_random_foundation(image_size=32, seed=0, texts=DEFAULT_TEXTS, with_lm=True):
    """A complete, untrained :class:`Foundation` of tiny components (for tests of later stages)."""
    clip, tokenizer = tiny_clip(image_size=image_size, seed=seed)
    clip.eval().requires_grad_(False)
    vae = tiny_vae(seed=seed)
    latent = image_size // 2
    width = clip.transformer.width
    embed = clip.text_projection.shape[1]
    lm = lm_tok = None
    if with_lm:
        lm_tok = train_bpe_tokenizer(texts)
        lm = tiny_lm(len(lm_tok), seed=seed)
    return Foundation(
        profile="test", image_size=image_size,
        text_tokens_fn=lambda t: clip_text_tokens(clip, tokenizer, t),
        text_embeds_fn=lambda t: clip_text_embeds(clip, tokenizer, t),
        image_embeds_fn=lambda x: clip_image_embeds(clip, x),
        vae=vae, unet=tiny_unet(latent, width, seed=seed), scheduler_config=sd_scheduler_config(),
        unclip_unet=tiny_unet(latent, width, image_embed_dim=embed, seed=seed + 1),
        lm=lm, lm_tokenizer=lm_tok, names=dict(clip="tiny-random-clip", vae="tiny-random-vae",
                                                unet="tiny-random-unet", lm="tiny-random-llama"),
    ).frozen()
