"""ViT3D: a 3-D vision transformer over fMRI volumes on subject 1's grid (one model for every subject).

The input is a subject's volume already resampled onto subject 1's grid and restricted to the union nsdgeneral
mask (``PreparedSubject.train_common``: ``(n, n_union)``). The model

1. z-scores every voxel with training statistics (buffers ``voxel_mean``/``voxel_std``);
2. zero-pads the grid to a multiple of the patch size and cuts it into non-overlapping ``P×P×P`` cubes,
   keeping only the cubes that touch the union mask (:class:`PatchGrid`; a gather, no dense volume is built);
3. embeds each cube linearly, prepends a class token, adds learned positions;
4. runs standard pre-norm transformer blocks (``torch.nn.TransformerEncoderLayer``);
5. maps the last layer's class token through two 2-layer MLP heads to the CLIP image embedding and to the VAE
   latent, both in *standardised* target units (per-dimension training mean/std, buffers); :meth:`ViT3D.predict`
   returns them in the original units.

The penultimate layer's tokens (class + patches), :meth:`ViT3D.features`, are what the brain LLaVA reads.
"""

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..devices import as_buffer

__all__ = ["PatchGrid", "ViT3D", "mlp_head"]


class PatchGrid:
    """Cubes of the zero-padded grid that touch the mask, and where each mask voxel sits in them.

    Parameters
    ----------
    grid_shape : tuple of 3 int
        Subject 1's volume shape (X, Y, Z).
    union_ijk : ndarray (V, 3)
        Indices of the union mask voxels (the columns of the ``*_common`` arrays).
    patch_size : int

    Attributes
    ----------
    index : ndarray (n_patches, P**3) int64
        Column of each cube cell in a voxel row extended by one zero column (``V`` = padding or outside the mask).
    patch_ijk : ndarray (n_patches, 3)
        Cube coordinates (in units of patches) of the kept cubes.
    voxel_patch : ndarray (V,)
        The kept cube each mask voxel belongs to.
    """

    def __init__(self, grid_shape, union_ijk, patch_size):
        P = int(patch_size)
        ijk = np.asarray(union_ijk, dtype=np.int64)
        if ijk.ndim != 2 or ijk.shape[1] != 3 or len(ijk) == 0:
            raise ValueError(f"union_ijk: expected a non-empty (V, 3) index array, found shape {ijk.shape}")
        self.grid_shape = tuple(int(s) for s in grid_shape)
        if (ijk < 0).any() or (ijk >= np.asarray(self.grid_shape)).any():
            raise ValueError(f"union_ijk: indices outside the grid {self.grid_shape}")
        self.patch_size = P
        self.padded_shape = tuple(-(-s // P) * P for s in self.grid_shape)
        self.n_cubes = tuple(s // P for s in self.padded_shape)
        cube = np.ravel_multi_index((ijk // P).T, self.n_cubes)
        kept = np.unique(cube)
        self.voxel_patch = np.searchsorted(kept, cube)
        offset = np.ravel_multi_index((ijk % P).T, (P, P, P))
        V = len(ijk)
        self.index = np.full((len(kept), P ** 3), V, dtype=np.int64)
        self.index[self.voxel_patch, offset] = np.arange(V)
        self.patch_ijk = np.stack(np.unravel_index(kept, self.n_cubes), 1)
        self.n_voxels = V

    @property
    def n_patches(self):
        return len(self.index)

    def patch_values_to_voxels(self, values):
        """Per-patch values ``(..., n_patches)`` → per-voxel values ``(..., V)`` (each voxel takes its cube's)."""
        return values[..., self.voxel_patch]


def mlp_head(d_in, hidden, d_out):
    """A 2-layer MLP head (Linear, GELU, Linear)."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class ViT3D(nn.Module):
    """The ViT3D fMRI encoder with CLIP and VAE-latent heads.

    Parameters
    ----------
    grid_shape : tuple of 3 int
    union_ijk : ndarray (V, 3)
    patch_size, width, depth, heads : int
        Cube side (14 in NV2L), transformer width (768), blocks (16) and attention heads (12).
    mlp_ratio : float
        Block MLP width over ``width``.
    head_hidden : int
        Hidden width of the two output heads (1024 in NV2L).
    clip_dim : int
        CLIP image embedding size.
    latent_shape : tuple of int
        VAE latent shape (C, h, w).
    dropout : float
    """

    def __init__(self, grid_shape, union_ijk, patch_size=14, width=768, depth=16, heads=12, mlp_ratio=4.0,
                 head_hidden=1024, clip_dim=768, latent_shape=(4, 64, 64), dropout=0.0):
        super().__init__()
        self.config = dict(grid_shape=[int(s) for s in grid_shape], patch_size=int(patch_size), width=int(width),
                           depth=int(depth), heads=int(heads), mlp_ratio=float(mlp_ratio),
                           head_hidden=int(head_hidden), clip_dim=int(clip_dim),
                           latent_shape=[int(s) for s in latent_shape], dropout=float(dropout))
        self.grid = PatchGrid(grid_shape, union_ijk, patch_size)
        V, n_lat = self.grid.n_voxels, int(np.prod(latent_shape))
        self.register_buffer("union_ijk", as_buffer(np.asarray(union_ijk), torch.int64))
        self.register_buffer("patch_index", as_buffer(self.grid.index), persistent=False)
        for name, size in (("voxel", V), ("clip", clip_dim), ("latent", n_lat)):
            self.register_buffer(f"{name}_mean", torch.zeros(size))
            self.register_buffer(f"{name}_std", torch.ones(size))
        self.patch_embed = nn.Linear(patch_size ** 3, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid.n_patches + 1, width) * 0.02)
        self.blocks = nn.ModuleList([
            nn.TransformerEncoderLayer(width, heads, int(width * mlp_ratio), dropout, activation="gelu",
                                       batch_first=True, norm_first=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.clip_head = mlp_head(width, head_hidden, clip_dim)
        self.latent_head = mlp_head(width, head_hidden, n_lat)

    @property
    def width(self):
        return self.config["width"]

    @property
    def n_tokens(self):
        """Class token + kept patches."""
        return self.grid.n_patches + 1

    def set_normalisation(self, voxel=None, clip=None, latent=None):
        """Store (mean, std) pairs of voxels and standardised targets (arrays or tensors)."""
        for name, stats in (("voxel", voxel), ("clip", clip), ("latent", latent)):
            if stats is None:
                continue
            mean, std = (torch.as_tensor(np.asarray(s, dtype=np.float32)).reshape(-1) for s in stats)
            getattr(self, f"{name}_mean").copy_(mean)
            getattr(self, f"{name}_std").copy_(torch.clamp(std, min=1e-6))
        return self

    def embed(self, voxels):
        """Voxel rows ``(b, V)`` (raw units) → input tokens ``(b, 1 + n_patches, width)``."""
        x = (voxels.float() - self.voxel_mean) / self.voxel_std
        x = torch.cat([x, x.new_zeros(x.shape[0], 1)], 1)  # column V: zero padding / outside the mask
        patches = x[:, self.patch_index]  # (b, n_patches, P^3)
        tokens = self.patch_embed(patches)
        cls = self.cls_token.expand(len(tokens), -1, -1)
        return torch.cat([cls, tokens], 1) + self.pos_embed

    def run_blocks(self, tokens, start=0, stop=None):
        for block in self.blocks[start:stop]:
            tokens = block(tokens)
        return tokens

    def heads(self, tokens):
        """Last-layer tokens → dict of standardised ``clip`` (b, E) and ``latent`` (b, C*h*w) predictions."""
        cls = self.norm(tokens[:, 0])
        return {"clip": self.clip_head(cls), "latent": self.latent_head(cls)}

    def forward(self, voxels):
        return self.heads(self.run_blocks(self.embed(voxels)))

    def features(self, voxels, layer=-2):
        """Tokens after block ``layer`` (``-2``: the penultimate layer's output), shape (b, n_tokens, width)."""
        depth = len(self.blocks)
        stop = layer % depth + 1
        return self.run_blocks(self.embed(voxels), 0, stop)

    def unstandardise(self, out):
        """Standardised head outputs → CLIP embeddings (b, E) and latents (b, C, h, w) in target units."""
        clip = out["clip"] * self.clip_std + self.clip_mean
        latent = (out["latent"] * self.latent_std + self.latent_mean).reshape(-1, *self.config["latent_shape"])
        return {"clip": clip, "latent": latent}

    @torch.no_grad()
    def predict(self, voxels, batch_size=256):
        """Predicted CLIP embeddings and VAE latents (target units) for voxel rows (array or tensor)."""
        was = self.training
        self.eval()
        outs = {"clip": [], "latent": []}
        device = self.voxel_mean.device
        for a in range(0, len(voxels), batch_size):
            x = torch.as_tensor(np.asarray(voxels[a:a + batch_size], dtype=np.float32), device=device)
            o = self.unstandardise(self(x))
            for k in outs:
                outs[k].append(o[k].cpu())
        self.train(was)
        return {k: torch.cat(v) for k, v in outs.items()}

    # --- persistence --------------------------------------------------------------------------------------------
    def save_pretrained(self, folder):
        """Write ``config.json`` and ``model.safetensors`` into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config, indent=1))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))
        return folder

    @classmethod
    def from_pretrained(cls, folder, device="cpu"):
        """Load a model written by :meth:`save_pretrained`."""
        from safetensors.torch import load_file

        from ..errors import DataError

        folder = Path(folder)
        cfg_path, weights = folder / "config.json", folder / "model.safetensors"
        if not (cfg_path.is_file() and weights.is_file()):
            raise DataError(folder, "a ViT3D folder with config.json and model.safetensors", "missing files")
        config = json.loads(cfg_path.read_text())
        state = load_file(str(weights), device=str(device))
        model = cls(union_ijk=state["union_ijk"].cpu().numpy(), **config)
        model.load_state_dict(state)
        return model.to(device).eval()
