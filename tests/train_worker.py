"""A tiny training run used by tests (imported, or launched per process by torchrun).

Launched by torchrun (``train_worker.py OUT``), every rank trains the toy with checkpoints (2 processes × batch 2
× 2 micro-batches), saves its weights as ``OUT/rank<r>.pt`` and lists the checkpoint folder in ``OUT/ckpt.json``;
then exercises :mod:`neurorecon.distributed` on uneven splits (plain tensors, ``cache_latents``, NeuroPictor's
validation sampling, the encoding stage's test reconstructions) and writes what rank 0 gathered to ``OUT/gathered.pt``.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from neurorecon.training import ArrayBatches, fit


class Toy(torch.nn.Module):
    def __init__(self, noise=0.1):
        super().__init__()
        torch.manual_seed(0)
        self.noise = noise
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))

    def forward(self, x, y, generator):
        noise = torch.randn(x.shape, generator=generator) * self.noise  # per-step randomness, like diffusion noise
        return torch.nn.functional.mse_loss(self.net(x + noise), y)


def toy_data(n=37):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = np.tanh(x[:, :3] * 2).astype(np.float32)
    return ArrayBatches(x=x, y=y)


def run(steps=12, ckpt_dir=None, stop_after=None, ckpt_every=4, batch_size=4, grad_accum=1, noise=0.1,
        schedule="constant"):
    model = Toy(noise)
    res = fit(model, lambda m, b, g: m(b["x"], b["y"], g), toy_data(), steps=steps, batch_size=batch_size, lr=1e-2,
              ckpt_dir=ckpt_dir, ckpt_every=ckpt_every, stop_after=stop_after, progress=False, grad_accum=grad_accum,
              lr_schedule=schedule, warmup_ratio=0.2 if schedule == "cosine" else 0.0)
    return model, res


def latent_cache_check(out, rank):
    """``cache_latents`` sharded over the ranks (each encodes its slice) with a stand-in encoder."""
    from neurorecon.neuropictor.data import cache_latents
    from neurorecon.training import make_accelerator

    class Store:
        def get_images(self, ids):
            return np.stack([np.full((4, 4, 3), int(i), dtype=np.uint8) for i in ids])

    class Encoder:
        def encode_images(self, images):
            x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
            return x.mean(-1, keepdim=True).permute(0, 3, 1, 2) * 0.5 + float(rank) * 0  # rank-independent

    ids = np.arange(3, 10)  # 7 images over 2 ranks, batches of 2: uneven slices
    lat = cache_latents(Encoder(), Store(), ids, Path(out) / "cache", make_accelerator(), batch_size=2)
    return torch.from_numpy(np.array(lat))


def nv2l_targets(accelerator=None):
    """NV2L's ViT3D targets (CLIP embedding, VAE latent) of 7 images with stand-in encoders, shared by the ranks."""
    from neurorecon.nv2l.encoder import compute_targets

    class Store:
        def get_images(self, ids):
            return np.stack([np.full((4, 4, 3), int(i), dtype=np.uint8) for i in ids])

    class Foundation:
        def image_embeds(self, images, normalize=True):
            x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
            return torch.stack([x.mean((1, 2, 3)), x.amax((1, 2, 3)) * 2], 1)

        def encode_images(self, images):
            return torch.as_tensor(np.asarray(images), dtype=torch.float32).permute(0, 3, 1, 2)[:, :1] * 0.5

    out = compute_targets(Foundation(), Store(), np.arange(11, 18), batch_size=2, accelerator=accelerator)
    return {k: torch.from_numpy(np.asarray(v)) for k, v in out.items()}


def sampled_images(accelerator=None):
    """NeuroPictor's validation sampling (tiny random foundation and model) of 5 maps, shared by the ranks."""
    from neurorecon.encoding import FMRIEncoder
    from neurorecon.foundation import tiny_random_foundation
    from neurorecon.neuropictor import SampleSettings, build_neuropictor, pipeline_from_model, reconstruct

    fm = tiny_random_foundation(image_size=32, with_lm=False)
    torch.manual_seed(0)
    model = build_neuropictor(fm, FMRIEncoder(map_size=32, patch=8, width=32, depth=1, heads=2), semantic_mid=8)
    torch.nn.init.normal_(model.controlnet.controlnet_cond_embedding.zero_conv.weight, std=0.1)  # not a no-op
    pipe = pipeline_from_model(fm, model.conditioner, model.controlnet)
    maps = torch.randn(5, 32, 32, generator=torch.Generator().manual_seed(3)).numpy()
    return reconstruct(pipe, maps, SampleSettings(2, 3.0, 1.0, "ddim", 7, 2), accelerator=accelerator)


def autoencoder_reconstructions(accelerator=None):
    """The encoding stage's test-map reconstructions (tiny autoencoder) of 5 maps, shared by the ranks."""
    from neurorecon.encoding.model import FMRIAutoencoder
    from neurorecon.encoding.stage import reconstruct

    torch.manual_seed(0)
    model = FMRIAutoencoder(map_size=16, patch=8, width=16, depth=1, heads=2, decoder_width=16, decoder_depth=1,
                            decoder_heads=2)
    maps = np.random.default_rng(4).normal(size=(5, 16, 16)).astype(np.float32)
    return torch.from_numpy(reconstruct(model, maps, batch_size=2, accelerator=accelerator))


def _main():
    import torch.distributed as dist

    from neurorecon.distributed import gather, shard
    from neurorecon.training import make_accelerator

    out = Path(sys.argv[1])
    model, res = run(steps=8, ckpt_dir=out / "ck", ckpt_every=4, batch_size=2, grad_accum=2, noise=0.0)
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"rank{rank}.pt")
    acc = make_accelerator()
    gathered = {}
    for n in (0, 1, 5, 8):  # fewer items than ranks, uneven and even splits
        mine = shard(n, acc)
        x = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)[mine]
        x = x if len(x) else torch.zeros((0,))  # an empty share of unknown shape
        gathered[f"n{n}"] = gather(x, acc)
    gathered["latents"] = latent_cache_check(out, rank)
    gathered["images"] = sampled_images(acc)
    gathered["targets"] = nv2l_targets(acc)
    gathered["autoencoder"] = autoencoder_reconstructions(acc)
    if rank == 0:
        torch.save(gathered, out / "gathered.pt")
        (out / "ckpt.json").write_text(json.dumps(sorted(p.name for p in (out / "ck").iterdir())))
        (out / "ranks.json").write_text(json.dumps(sorted(p.name for p in (out / "ck/latest").iterdir())))


if __name__ == "__main__":
    from neurorecon.distributed import ending_process_group

    with ending_process_group():  # a live gloo group at exit can abort the rank (SIGABRT)
        _main()
