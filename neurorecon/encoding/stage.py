"""Stage ``encoding`` (notebook 03): pretrain the calibrated fMRI autoencoder and measure held-out reconstruction.

Pretraining pool: the unlabeled resting maps (the UK Biobank analog) plus the single training trials of every
subject except ``holdout_subjects``; a held-out subject's maps (resting included) are never seen, so its test R²
measures how well the shared grid + shared encoder transfer to a new brain. Reported per subject:
``R² = 1 − Σ(x − x̂)² / Σ(x − x̄)²`` over the visual-mask pixels of the subject's repetition-averaged test maps, with
x̄ the subject's mean test map (so predicting the mean map scores 0).

``init_checkpoint``: start from a pretrained autoencoder instead of a random one, as the paper starts from its
UK Biobank model (``neurorecon import neuropictor --encoder checkpoint_120000.pth --encoder-config
fMRI_AutoEncoder.yaml --out DIR``, then ``init_checkpoint: DIR``); its shape must equal the config's (the error
lists the values to set), ``steps`` of NSD pretraining follow (0: use it as it is, only evaluated here).
"""

import dataclasses
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .. import paths
from ..artifacts import StageWriter, is_complete, require_stage
from ..config import StageConfig
from ..data import open_store
from ..data.stage import store_path
from ..devices import stage_device, to_module
from ..distributed import gather, require_unsharded, shard
from ..errors import ConfigError, DataError
from ..training import checkpoint_root, fit, make_accelerator, remove_checkpoints, resolve_steps
from .data import StackedMaps, check_flat, pretraining_arrays, visual_mask
from .model import FMRIAutoencoder, FMRIEncoder, masked_mse

__all__ = ["EncodingConfig", "run_encoding_stage", "build_autoencoder", "initial_autoencoder", "reconstruct",
           "reconstruction_r2", "load_encoder", "load_autoencoder", "checkpoint_dir"]


@dataclasses.dataclass
class EncodingConfig(StageConfig):
    """Config of the encoding stage (``neurorecon/configs/encoding.yaml``)."""

    STAGE = "encoding"
    NOTEBOOK = "03_calibrated_encoding"
    NOT_TRAINING = ("gradient_checkpointing", "ckpt_every", "keep_checkpoints", "num_threads", "eval_batch")

    patch: int = 8
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    decoder_width: int = 64
    decoder_depth: int = 1
    decoder_heads: int = 4
    bottleneck_mult: int = 2
    holdout_subjects: list[int] = dataclasses.field(default_factory=lambda: [8])
    use_resting: bool = True
    use_trials: bool = True
    steps: Optional[int] = 300
    epochs: Optional[float] = None
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 1.0e-3
    weight_decay: float = 0.01
    seed: int = 0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    ckpt_every: int = 100
    keep_checkpoints: bool = False
    num_threads: Optional[int] = 1
    eval_batch: int = 256
    init_checkpoint: Optional[str] = None


def checkpoint_dir(cfg):
    """Training checkpoints of a stage config (outside the atomically written stage folder, so a killed run
    resumes): ``artifacts/<profile>/<stage>.ckpt/<key>``, keyed by the fields that change training
    (:func:`neurorecon.training.checkpoint_root`) and the data stage's marker."""
    return checkpoint_root(cfg, ("data",))


def build_autoencoder(cfg, map_size, seed=None):
    """A fresh :class:`FMRIAutoencoder` of the config's shape (seeded)."""
    torch.manual_seed(cfg.seed if seed is None else seed)
    return FMRIAutoencoder(map_size=map_size, patch=cfg.patch, width=cfg.width, depth=cfg.depth, heads=cfg.heads,
                           mlp_ratio=cfg.mlp_ratio, decoder_width=cfg.decoder_width, decoder_depth=cfg.decoder_depth,
                           decoder_heads=cfg.decoder_heads, bottleneck_mult=cfg.bottleneck_mult)


def initial_autoencoder(cfg, map_size):
    """The pretrained :class:`FMRIAutoencoder` of ``cfg.init_checkpoint`` (an import folder with
    ``autoencoder/``, or an autoencoder folder), checked against the config's shape and the store's map size."""
    path = Path(cfg.init_checkpoint).expanduser()
    folder = path / "autoencoder" if (path / "autoencoder").is_dir() else path
    if not (folder / "config.json").is_file():
        raise DataError(path, "a folder written by `neurorecon import neuropictor --encoder ...` (with "
                              "autoencoder/ inside) or a saved FMRIAutoencoder folder", "no autoencoder config.json")
    model = FMRIAutoencoder.from_pretrained(folder)
    got = model.config
    want = dict(patch=cfg.patch, width=cfg.width, depth=cfg.depth, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
                decoder_width=cfg.decoder_width, decoder_depth=cfg.decoder_depth, decoder_heads=cfg.decoder_heads,
                bottleneck_mult=cfg.bottleneck_mult)
    diff = {k: v for k, v in want.items() if got[k] != v}
    if diff:
        raise ConfigError(f"encoding config: init_checkpoint {folder} has another shape; set "
                          + ", ".join(f"{k}: {got[k]}" for k in diff) + " (the config has "
                          + ", ".join(f"{k}: {v}" for k, v in diff.items()) + ")")
    if got["map_size"] != map_size:
        raise ConfigError(f"encoding config: init_checkpoint {folder} reads {got['map_size']}x{got['map_size']} "
                          f"flat maps; the prepared store's are {map_size}x{map_size}")
    return model


@torch.no_grad()
def reconstruct_tensor(model, maps, batch_size=256, accelerator=None):
    """Autoencoder reconstructions as a float32 CPU tensor (n, H, W): each batch of ``maps`` (a CPU array, as the
    store holds them) goes to the model's device and dtype. With an ``accelerator`` of several processes each
    reconstructs its share of the maps and every process gets all of them back in order."""
    mine = shard(len(maps), accelerator)
    model.eval()
    with torch.no_grad():
        out = [model(to_module(np.asarray(maps[i:min(i + batch_size, mine.stop)], dtype=np.float32),
                               model)).float().cpu()
               for i in range(mine.start, mine.stop, batch_size)]
    return gather(torch.cat(out) if out else torch.zeros((0,)), accelerator)


def reconstruct(model, maps, batch_size=256, accelerator=None):
    """Autoencoder reconstructions (n, H, W) float32 of maps (n, H, W), as a numpy array."""
    return reconstruct_tensor(model, maps, batch_size, accelerator).numpy()


def reconstruction_r2(maps, recon, mask):
    """Variance-weighted R² inside ``mask`` (see the module docstring)."""
    x = np.asarray(maps, dtype=np.float64)[:, mask]
    r = np.asarray(recon, dtype=np.float64)[:, mask]
    return float(1.0 - ((x - r) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def load_encoder(profile):
    """The pretrained :class:`FMRIEncoder` of a profile's complete encoding stage."""
    return FMRIEncoder.from_pretrained(require_stage("encoding", profile) / "encoder")


def load_autoencoder(profile):
    """The whole pretrained :class:`FMRIAutoencoder` (encoder + decoder) of a profile."""
    return FMRIAutoencoder.from_pretrained(require_stage("encoding", profile) / "autoencoder")


def run_encoding_stage(cfg, force=False, progress=True):
    """Pretrain the autoencoder, evaluate test R² per subject, write the stage; returns its folder.

    Reuses a stage already complete with the same config unless ``force``. Runs under ``torchrun`` /
    ``accelerate launch`` too (every process trains; the main process evaluates and writes).
    """
    folder = paths.stage_dir(cfg.STAGE, cfg.profile)
    if not force and is_complete(cfg.STAGE, cfg.profile, cfg.digest()):
        return folder
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    store = open_store(store_path(cfg.profile))
    size = check_flat(store)[0]
    mask = visual_mask(store)
    train_subjects = [s for s in store.subjects if s not in cfg.holdout_subjects]
    arrays, counts = pretraining_arrays(store, train_subjects, cfg.use_resting, cfg.use_trials)
    data = StackedMaps(arrays)
    model = initial_autoencoder(cfg, size) if cfg.init_checkpoint else build_autoencoder(cfg, size)
    acc = make_accelerator(cfg.mixed_precision)
    require_unsharded(acc, cfg.STAGE)
    mask_t = torch.from_numpy(mask).to(stage_device(acc))
    ckpt = checkpoint_dir(cfg)
    steps, record = resolve_steps(cfg.steps, cfg.epochs, len(data), cfg.batch_size, acc.num_processes,
                                  cfg.grad_accum)
    cpu0 = time.process_time()
    result = fit(model, lambda m, b, g: masked_mse(m(b["maps"]), b["maps"], mask_t), data, steps=steps,
                 batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed, ckpt_dir=ckpt,
                 ckpt_every=cfg.ckpt_every, mixed_precision=cfg.mixed_precision,
                 gradient_checkpointing=cfg.gradient_checkpointing, desc="fMRI autoencoder", progress=progress,
                 accelerator=acc, grad_accum=cfg.grad_accum)
    cpu = time.process_time() - cpu0
    t0 = time.time()  # every process reconstructs its share of each subject's test maps
    r2 = {s: reconstruction_r2(store.subject(s).test_flat,
                               reconstruct(model, store.subject(s).test_flat, cfg.eval_batch, acc), mask)
          for s in store.subjects}
    if acc.is_main_process:
        with StageWriter(cfg) as w:
            model.save_pretrained(w.path / "autoencoder")
            model.encoder.save_pretrained(w.path / "encoder")
            np.save(w.path / "visual_mask.npy", mask)
            (w.path / "losses.json").write_text(json.dumps(result.losses))
            (w.path / "pool.json").write_text(json.dumps(dict(subjects=train_subjects, counts=counts)))
            w.add_metric("autoencoder", "all", "train", "seconds", result.seconds)
            w.add_metric("autoencoder", "all", "train", "cpu_seconds", cpu)
            w.add_metric("autoencoder", "all", "train", "n_maps", len(data))
            for k, v in dict(record, resumed_from=result.resumed_from).items():
                w.add_metric("autoencoder", "all", "train", k, v)
            if result.losses:
                w.add_metric("autoencoder", "all", "train", "final_loss",
                             np.mean([v for _, v in result.losses[-20:]]))
            w.add_metric("autoencoder", "all", "train", "from_init_checkpoint", float(bool(cfg.init_checkpoint)))
            for s in store.subjects:
                w.add_metric("autoencoder", s, "test", "r2", r2[s])
                w.add_metric("autoencoder", s, "test", "in_pretraining", float(s in train_subjects))
            w.add_metric("autoencoder", "all", "test", "eval_seconds", time.time() - t0)
        if not cfg.keep_checkpoints:
            remove_checkpoints(ckpt)
    acc.wait_for_everyone()
    return folder
