"""A tiny training run used by tests (imported, or launched per process by torchrun)."""

import sys

import numpy as np
import torch

from neurorecon.training import ArrayBatches, fit


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))

    def forward(self, x, y, generator):
        noise = torch.randn(x.shape, generator=generator) * 0.1  # per-step randomness, like diffusion noise
        return torch.nn.functional.mse_loss(self.net(x + noise), y)


def toy_data(n=37):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = np.tanh(x[:, :3] * 2).astype(np.float32)
    return ArrayBatches(x=x, y=y)


def run(steps=12, ckpt_dir=None, stop_after=None, ckpt_every=4):
    model = Toy()
    res = fit(model, lambda m, b, g: m(b["x"], b["y"], g), toy_data(), steps=steps, batch_size=4, lr=1e-2,
              ckpt_dir=ckpt_dir, ckpt_every=ckpt_every, stop_after=stop_after, progress=False)
    return model, res


if __name__ == "__main__":
    model, res = run(ckpt_dir=None)
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, f"{sys.argv[1]}/rank{rank}.pt")
