"""The CLIP computations every foundation uses, tiny or real: SD 2.x's text conditioning tokens (OpenCLIP ViT-H/14's
penultimate layer, as SD 2.x's ``FrozenOpenCLIPEmbedder``) and the CLIP text and image embeddings (OpenAI CLIP
ViT-L/14 in the full profile), on open_clip models of any precision."""

import torch
import torch.nn.functional as F

__all__ = ["clip_text_tokens", "clip_text_tokens_from_ids", "clip_text_embeds", "clip_image_embeds"]


def clip_text_tokens(model, tokenizer, texts, device="cpu", final=False):
    """SD 2.x conditioning: the penultimate text-transformer layer, then ``ln_final`` → (n, L, width).

    ``final=True`` runs every layer instead (the last layer, then ``ln_final``): the target of NeuroPictor's
    semantic loss in the official code, which differs from the conditioning context the UNet reads."""
    return clip_text_tokens_from_ids(model, tokenizer(texts).to(device), final=final)


def clip_text_tokens_from_ids(model, ids, final=False):
    """:func:`clip_text_tokens` of already tokenised text ``ids`` (n, L)."""
    # open_clip's bf16/fp16 precision keeps the embeddings fp32 and casts to the blocks' dtype, as encode_text does
    cast = getattr(model.transformer, "get_cast_dtype", None)
    dtype = cast() if cast else model.token_embedding.weight.dtype
    x = (model.token_embedding(ids) + model.positional_embedding[: ids.shape[1]]).to(dtype)
    mask = model.attn_mask[: ids.shape[1], : ids.shape[1]] if model.attn_mask is not None else None
    blocks = model.transformer.resblocks
    batch_first = getattr(model.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in (blocks if final else blocks[:-1]):
        x = block(x, attn_mask=mask)
    if not batch_first:
        x = x.transpose(0, 1)
    return model.ln_final(x)


def clip_text_embeds(model, tokenizer, texts, device="cpu"):
    return F.normalize(model.encode_text(tokenizer(texts).to(device)), dim=-1)


def clip_image_embeds(model, images, normalize=True):
    """``images``: float (n, 3, H, W) in [0, 1], resized to the model's input and CLIP-normalised."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(OPENAI_DATASET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, device=images.device).view(1, 3, 1, 1)
    # the patch convolution's dtype: open_clip's bf16/fp16 precision keeps some parameters (the first ones) fp32
    dtype = getattr(getattr(model.visual, "conv1", None), "weight", next(model.parameters())).dtype
    emb = model.encode_image(((images - mean) / std).to(dtype)).float()
    return F.normalize(emb, dim=-1) if normalize else emb
