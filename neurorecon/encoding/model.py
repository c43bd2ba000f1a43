"""The calibrated fMRI encoder (NeuroPictor's "fMRI2fMRI" autoencoder) on 2-D cortical flat maps.

A flat map ``(H, W)`` (zeros outside the visual-cortex mask) is cut into ``patch × patch`` patches; each patch is
linearly embedded, a learned CLS token is prepended, fixed 2-D sin-cos positions are added (the CLS position is
zero, as in MAE) and standard ViT blocks (timm ``Block``, MLP ratio 4) follow, then a final LayerNorm. The
positions follow MAE's channel order exactly (first half: the patch's column, second half: its row; each half
sin then cos), so NeuroPictor's released encoder can be imported; they are saved with the weights (a persistent
buffer), so a model reloaded by ``from_pretrained`` uses the positions it was trained with. The output
is the whole token sequence ``(n, 1 + (H/patch)·(W/patch), width)``: CLS first, then the patches in row-major
order. Full profile: 256×256 maps, patch 16 → 257 tokens of width 1024.

Pretraining (:class:`FMRIAutoencoder`): the CLS token alone passes a ``width → 2·width`` bottleneck; the decoder
sees that one vector plus one learned mask token per patch (with the same fixed positions) and rebuilds every
patch's pixels; the loss is the MSE inside the visual mask. There are no subject-specific layers: the shared
flat-map grid plus the shared encoder is the calibration across subjects. ``bottleneck_act="none"`` is the
released UK Biobank model's bottleneck (``width → 2·width`` then ``2·width → decoder_width``, both linear, no
activation between); the default ``"gelu"`` puts a GELU between them.
"""

import numpy as np
import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from timm.models.vision_transformer import Block

from ..devices import as_buffer
from ..errors import NeuroreconError

__all__ = ["sincos_2d", "FMRIEncoder", "FMRIAutoencoder", "patchify", "unpatchify", "masked_mse", "StrictLoadMixin",
           "IncompleteWeightsError"]


class IncompleteWeightsError(NeuroreconError):
    """A saved model folder lacks some of the model's weights or buffers."""


class StrictLoadMixin:
    """``from_pretrained`` that refuses a folder missing any weight or buffer, instead of diffusers' warning and
    fresh initialisation (folders saved before the sin-cos positions were stored lack ``pos_embed``, and those
    were in the other channel order: reloading them silently would scramble every position)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                              **kwargs)
        if info.get("missing_keys"):
            hint = (" (saved before the encoder's positions were stored, in the old channel order: re-run the "
                    "stage that wrote it, e.g. notebook 03 for the encoder)" if any(
                        k.endswith(("pos_embed", "dec_pos")) for k in info["missing_keys"]) else "")
            raise IncompleteWeightsError(f"{pretrained_model_name_or_path}: {cls.__name__} weights are missing "
                                         f"{sorted(info['missing_keys'])}{hint}")
        return (model, info) if wants_info else model


def sincos_2d(dim, grid_h, grid_w, cls_token=True):
    """Fixed 2-D sin-cos position embeddings in MAE's layout: (grid_h·grid_w [+1], dim) float32, CLS row zero.

    Patches are in row-major order. Channels ``[0, dim/2)`` encode the patch's column, ``[dim/2, dim)`` its row
    (MAE builds its grid with ``meshgrid(w, h)`` and embeds the first plane first); within each half the first
    quarter is ``sin(pos · ω_i)`` and the second ``cos(pos · ω_i)`` with ``ω_i = 10000^(-i/(dim/4))``.
    """
    if dim % 4:
        raise ValueError(f"sin-cos 2-D positions need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij")

    def emb(pos):
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    pe = np.concatenate([emb(cols), emb(rows)], axis=1)
    if cls_token:
        pe = np.concatenate([np.zeros((1, dim)), pe], axis=0)
    return torch.from_numpy(pe.astype(np.float32))


def patchify(maps, patch):
    """(n, H, W) → (n, (H/p)·(W/p), p·p), patches in row-major order."""
    n, h, w = maps.shape
    x = maps.reshape(n, h // patch, patch, w // patch, patch)
    return x.permute(0, 1, 3, 2, 4).reshape(n, (h // patch) * (w // patch), patch * patch)


def unpatchify(patches, patch, h, w):
    """Inverse of :func:`patchify`."""
    n = patches.shape[0]
    x = patches.reshape(n, h // patch, w // patch, patch, patch)
    return x.permute(0, 1, 3, 2, 4).reshape(n, h, w)


def _blocks(width, depth, heads, mlp_ratio):
    """timm ViT blocks with torch's ``nn.LayerNorm`` (eps 1e-5) as NeuroPictor builds them (timm's own default
    norm has eps 1e-6)."""
    return nn.ModuleList([Block(width, heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm)
                          for _ in range(depth)])


class FMRIEncoder(StrictLoadMixin, ModelMixin, ConfigMixin):
    """ViT encoder of flat maps → token sequence (CLS + patches).

    Parameters
    ----------
    map_size : int
        Side of the (square) flat map.
    patch : int
        Patch side (the map side must be a multiple).
    width, depth, heads : int
        Transformer width, number of blocks, attention heads.
    mlp_ratio : float
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, map_size=64, patch=8, width=128, depth=4, heads=4, mlp_ratio=4.0):
        super().__init__()
        if map_size % patch:
            raise ValueError(f"map_size {map_size} is not a multiple of patch {patch}")
        self.grid = map_size // patch
        self.patch_embed = nn.Conv2d(1, width, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("pos_embed", as_buffer(sincos_2d(width, self.grid, self.grid)[None]))
        self.blocks = _blocks(width, depth, heads, mlp_ratio)
        self.norm = nn.LayerNorm(width)
        self.gradient_checkpointing = False
        nn.init.normal_(self.cls_token, std=0.02)

    @property
    def num_tokens(self):
        return 1 + self.grid * self.grid

    def forward(self, maps):
        """``maps``: (n, H, W) or (n, 1, H, W) → tokens (n, 1 + P, width)."""
        if maps.ndim == 3:
            maps = maps[:, None]
        maps = maps.to(self.patch_embed.weight.dtype)
        x = self.patch_embed(maps).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed.to(x.device, x.dtype)
        for blk in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(blk, x)
            else:
                x = blk(x)
        return self.norm(x)


class FMRIAutoencoder(StrictLoadMixin, ModelMixin, ConfigMixin):
    """fMRI2fMRI: :class:`FMRIEncoder` plus a CLS-bottleneck decoder that rebuilds every patch.

    Parameters
    ----------
    map_size, patch, width, depth, heads, mlp_ratio : encoder shape (see :class:`FMRIEncoder`)
    decoder_width, decoder_depth, decoder_heads : decoder shape
    bottleneck_mult : int
        The CLS bottleneck is ``width → bottleneck_mult · width`` (2 in NeuroPictor).
    bottleneck_act : {"gelu", "none"}
        Between the bottleneck's two linear maps: a GELU, or nothing (the released UK Biobank model).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, map_size=64, patch=8, width=128, depth=4, heads=4, mlp_ratio=4.0, decoder_width=128,
                 decoder_depth=2, decoder_heads=4, bottleneck_mult=2, bottleneck_act="gelu"):
        super().__init__()
        if bottleneck_act not in ("gelu", "none"):
            raise ValueError(f"bottleneck_act must be 'gelu' or 'none', got {bottleneck_act!r}")
        self.encoder = FMRIEncoder(map_size, patch, width, depth, heads, mlp_ratio)
        grid = map_size // patch
        act = nn.GELU() if bottleneck_act == "gelu" else nn.Identity()
        self.bottleneck = nn.Sequential(nn.Linear(width, bottleneck_mult * width), act,
                                        nn.Linear(bottleneck_mult * width, decoder_width))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.register_buffer("dec_pos", as_buffer(sincos_2d(decoder_width, grid, grid)[None]))
        self.dec_blocks = _blocks(decoder_width, decoder_depth, decoder_heads, mlp_ratio)
        self.dec_norm = nn.LayerNorm(decoder_width)
        self.dec_pred = nn.Linear(decoder_width, patch * patch)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, maps):
        """Reconstruct flat maps (n, H, W) from the CLS token alone."""
        tokens = self.encoder(maps)
        z = self.bottleneck(tokens[:, :1])
        n, p = tokens.shape[0], tokens.shape[1] - 1
        x = torch.cat([z, self.mask_token.expand(n, p, -1)], 1) + self.dec_pos.to(z.dtype)
        for blk in self.dec_blocks:
            x = blk(x)
        patches = self.dec_pred(self.dec_norm(x)[:, 1:])
        size = self.config.map_size
        return unpatchify(patches, self.config.patch, size, size)


def masked_mse(rec, maps, mask):
    """MSE between reconstructions and maps (n, H, W) over the pixels of ``mask`` (H, W) bool."""
    m = mask.to(device=rec.device, dtype=rec.dtype)
    return (((rec - maps.to(rec.dtype)) ** 2) * m).sum() / (m.sum() * maps.shape[0])
