"""Figures of notebook 02: training curves, text-to-image generations beside their prompts, VAE reconstructions,
CLIP retrieval examples, and the metrics table."""

import json
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["load_eval", "plot_training_curves", "plot_generations", "plot_vae", "plot_retrieval",
           "metrics_table"]


def load_eval(folder):
    """The stored evaluation samples of a foundation stage: (dict of uint8 arrays, dict of captions/LM samples)."""
    folder = Path(folder)
    with np.load(folder / "eval_samples.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads((folder / "eval_captions.json").read_text())


def plot_training_curves(folder):
    """Loss against step of every model trained in the stage (none in the full profile)."""
    log = folder / "train_log.json"
    if not Path(log).is_file():
        return None
    losses = json.loads(Path(log).read_text())["losses"]
    fig, axes = plt.subplots(1, len(losses), figsize=(3.2 * len(losses), 2.6))
    for ax, (name, curve) in zip(np.atleast_1d(axes), losses.items()):
        steps, values = np.array(curve).T
        ax.plot(steps, values, lw=1)
        if len(values) > 20:
            k = max(5, len(values) // 20)
            ax.plot(steps[k - 1:], np.convolve(values, np.ones(k) / k, "valid"), lw=2)
        ax.set(title=name, xlabel="step", ylabel="loss")
    fig.tight_layout()
    return fig


def _wrap(text, width=22):
    return "\n".join(textwrap.wrap(text, width))


def plot_generations(arrays, captions, n=8, rows=("gt", "t2i_dpm++", "t2i_ddim", "unclip")):
    """Columns: held-out prompts; rows: ground truth, text-to-image (DPM-Solver++, DDIM), unCLIP."""
    labels = {"gt": "ground truth", "t2i_dpm++": "text→image\nDPM-Solver++", "t2i_ddim": "text→image\nDDIM",
              "unclip": "unCLIP\n(GT embedding)", "vae": "VAE recon"}
    rows = [r for r in rows if r in arrays]
    n = min(n, len(captions))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.7 * n, 1.75 * len(rows) + 1.0), squeeze=False)
    for j in range(n):
        axes[0, j].set_title(_wrap(captions[j]), fontsize=6.5)
        for i, r in enumerate(rows):
            axes[i, j].imshow(arrays[r][j])
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if j == 0:
                axes[i, j].set_ylabel(labels.get(r, r), fontsize=8)
    fig.tight_layout()
    return fig


def plot_vae(arrays, n=8):
    """Held-out images (top) and their VAE reconstructions (bottom)."""
    return plot_generations(arrays, [""] * len(arrays["gt"]), n=n, rows=("gt", "vae"))


def plot_retrieval(fm, images, captions, n=4, k=3):
    """For held-out images: the top-``k`` captions the CLIP retrieves among all held-out captions."""
    sims = (fm.image_embeds(images[:len(captions)]) @ fm.text_embeds(captions).T).numpy()
    n, k = min(n, len(sims)), min(k, len(captions))  # fewer held-out pairs than panels (e.g. n_eval 2)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.6))
    for j, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(images[j])
        ax.axis("off")
        top = np.argsort(-sims[j])[:k]
        lines = [("✓ " if t == j else "✗ ") + _wrap(f"{captions[t]} ({sims[j, t]:.2f})", 38) for t in top]
        ax.set_title("\n".join(lines), fontsize=6.5, loc="left")
    fig.tight_layout()
    return fig


def metrics_table(metrics):
    """The measured quality as one table (method × metric)."""
    m = metrics[metrics.split == "test"]
    return m.pivot_table(index="method", columns="metric", values="value", aggfunc="first").round(4)
