"""High-level semantic modulation: fMRI tokens → the cross-attention context of the UNet and the ControlNet.

:class:`SemanticHead` maps the token sequence ``(n, T, W)`` to the text-token shape ``(n, L, D)``: two Conv1d
(k=1) over the token axis (T → ``mid`` → L; 257 → 128 → 77 in the paper) then Linear W → D and LayerNorm.

:class:`FMRIConditioner` bundles the calibrated encoder and the head(s) as one diffusers model:

- ``encoder``: :class:`~neurorecon.encoding.FMRIEncoder` (flat maps → tokens), trained with the rest;
- ``semantic``: the main head; its output is what the semantic loss compares with caption tokens;
- with ``residual=True`` (single-subject refinement) a parallel copy ``residual_head`` whose output passes a
  zero-initialised Conv1d(L → L, k=3) and is added: the context starts equal to the main head's;
- ``empty_context``: the empty prompt's text tokens ``(1, L, D)`` (a buffer saved with the weights), the
  unconditional context of classifier-free guidance and of the 5 % CFG masking during training.
"""

import copy

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ..encoding.model import FMRIEncoder, StrictLoadMixin

__all__ = ["SemanticHead", "FMRIConditioner"]


class SemanticHead(nn.Module):
    """Tokens (n, T, W) → context (n, L, D)."""

    def __init__(self, n_tokens, width, text_len, text_dim, mid):
        super().__init__()
        self.tokens = nn.Sequential(nn.Conv1d(n_tokens, mid, 1), nn.Conv1d(mid, text_len, 1))
        self.proj = nn.Linear(width, text_dim)
        self.norm = nn.LayerNorm(text_dim)

    def forward(self, tokens):
        return self.norm(self.proj(self.tokens(tokens)))


class FMRIConditioner(StrictLoadMixin, ModelMixin, ConfigMixin):
    """Calibrated encoder + semantic head(s) + the empty-prompt context.

    Parameters
    ----------
    map_size, patch, width, depth, heads, mlp_ratio : the encoder's shape
    text_len, text_dim : (L, D) of the foundation's text tokens
    semantic_mid : int
        Intermediate token count of the semantic head (128 in the paper).
    residual : bool
        Add the zero-initialised parallel residual branch (refinement).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, map_size=64, patch=8, width=128, depth=4, heads=4, mlp_ratio=4.0, text_len=77,
                 text_dim=1024, semantic_mid=128, residual=False):
        super().__init__()
        self.encoder = FMRIEncoder(map_size, patch, width, depth, heads, mlp_ratio)
        n = self.encoder.num_tokens
        self.semantic = SemanticHead(n, width, text_len, text_dim, semantic_mid)
        if residual:
            self.residual_head = SemanticHead(n, width, text_len, text_dim, semantic_mid)
            self.residual_conv = nn.Conv1d(text_len, text_len, 3, padding=1)
            nn.init.zeros_(self.residual_conv.weight)
            nn.init.zeros_(self.residual_conv.bias)
        self.register_buffer("empty_context", torch.zeros(1, text_len, text_dim))

    @classmethod
    def from_encoder(cls, encoder, text_len, text_dim, semantic_mid, empty_context=None, seed=0):
        """A conditioner around a pretrained encoder (weights copied), heads freshly initialised (seeded)."""
        c = encoder.config
        torch.manual_seed(seed)
        model = cls(map_size=c.map_size, patch=c.patch, width=c.width, depth=c.depth, heads=c.heads,
                    mlp_ratio=c.mlp_ratio, text_len=text_len, text_dim=text_dim, semantic_mid=semantic_mid)
        model.encoder.load_state_dict(encoder.state_dict())
        if empty_context is not None:
            model.empty_context.copy_(empty_context.reshape(1, text_len, text_dim))
        return model

    def with_residual(self, init="copy", seed=0):
        """A copy with the refinement branch, its output conv at 0: ``residual_head`` starts as a copy of the main
        head (``init="copy"``, our default) or freshly initialised with torch's default layer init, seeded
        (``"random"``, as the official code builds its parallel branch)."""
        if init not in ("copy", "random"):
            raise ValueError(f"residual init must be 'copy' or 'random', got {init!r}")
        if self.config.residual:
            return copy.deepcopy(self)
        kwargs = {k: v for k, v in self.config.items() if not k.startswith("_")}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = type(self)(**{**kwargs, "residual": True})
        missing = model.load_state_dict(self.state_dict(), strict=False).missing_keys
        assert all(k.startswith("residual_") for k in missing), missing
        if init == "copy":
            model.residual_head.load_state_dict(self.semantic.state_dict())
        return model

    def encode(self, maps):
        """Flat maps (n, H, W) → fMRI tokens (n, T, W)."""
        return self.encoder(maps)

    def context(self, tokens):
        """Tokens → (context, main head output): both (n, L, D); equal without the residual branch."""
        main = self.semantic(tokens)
        if not self.config.residual:
            return main, main
        return main + self.residual_conv(self.residual_head(tokens)), main

    def forward(self, maps):
        """Flat maps → (tokens, context, main head output)."""
        tokens = self.encode(maps)
        ctx, main = self.context(tokens)
        return tokens, ctx, main
