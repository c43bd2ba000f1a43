"""Figures of notebook 06: training curves, captions beside ground truth, metric bars, QA accuracy, concept maps."""

import textwrap

import matplotlib.pyplot as plt
import numpy as np

from ..plotting import savefig
from .concepts import volume_from_voxels

__all__ = ["savefig", "plot_losses", "plot_captions", "plot_caption_metrics", "plot_qa", "plot_concept_maps"]


def plot_losses(losses):
    """Training losses: ``{name: [(step, loss), ...]}``, one panel each."""
    fig, axes = plt.subplots(1, len(losses), figsize=(4 * len(losses), 3), squeeze=False)
    for ax, (name, values) in zip(axes[0], losses.items()):
        if values:
            steps, vals = zip(*values)
            ax.plot(steps, vals)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
    axes[0, 0].set_ylabel("loss")
    fig.tight_layout()
    return fig


def _wrap(text, width=34):
    return "\n".join(textwrap.wrap(str(text), width)) or "(empty)"


def plot_captions(store, captions, n=6, columns=("reference", "brain_llava", "nn_caption", "shuffled_fmri")):
    """Test images with the reference caption and each method's caption.

    Parameters
    ----------
    captions : pandas.DataFrame
        ``image_id`` and one column per entry of ``columns``.
    """
    rows = captions.head(n)
    fig, axes = plt.subplots(1, len(rows), figsize=(3.1 * len(rows), 4.6), squeeze=False)
    for ax, (_, r) in zip(axes[0], rows.iterrows()):
        ax.imshow(store.get_images([int(r["image_id"])])[0])
        ax.set_xticks([])
        ax.set_yticks([])
        text = "\n".join(f"{c}: {_wrap(r[c])}" for c in columns if c in r)
        ax.set_xlabel(text, fontsize=6.5, loc="left")
        ax.set_title(f"nsdId {int(r['image_id'])}", fontsize=8)
    fig.tight_layout()
    return fig


def _grouped_bars(table, columns, ylabel, group_width, ylim=None):
    """One group of bars per column of ``table`` (in ``columns``), one bar per row (method) in each group."""
    fig, ax = plt.subplots(figsize=(group_width * len(columns) + 2, 3.2))
    width = 0.8 / len(table)
    for k, (method, r) in enumerate(table.iterrows()):
        ax.bar(np.arange(len(columns)) + k * width, [r[c] for c in columns], width, label=method)
    ax.set_xticks(np.arange(len(columns)) + 0.4 - width / 2)
    ax.set_xticklabels(columns)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_caption_metrics(table, metrics=("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")):
    """Grouped bars: caption metrics (rows of ``table``: methods; columns: metrics)."""
    metrics = [m for m in metrics if m in table.columns and np.isfinite(table[m]).any()]
    return _grouped_bars(table, metrics, "score (test images)", 1.6)


def plot_qa(table):
    """Grouped bars: QA accuracy per question type (rows: methods incl. chance; columns: types)."""
    return _grouped_bars(table, list(table.columns), "accuracy", 1.5, ylim=(0, 1))


def plot_concept_maps(image, maps, concepts, grid_shape, union_ijk, n_slices=4):
    """An image beside GradCAM voxel maps of concepts on axial slices of subject 1's grid.

    Parameters
    ----------
    image : ndarray (S, S, 3)
    maps : ndarray (n_concepts, V)
    concepts : list of str
    grid_shape : tuple
    union_ijk : ndarray (V, 3)
    """
    ijk = np.asarray(union_ijk)
    zs = np.unique(ijk[:, 2])
    picks = zs[np.linspace(0, len(zs) - 1, n_slices + 2).round().astype(int)[1:-1]]
    fig, axes = plt.subplots(len(concepts), n_slices + 1, figsize=(2.2 * (n_slices + 1), 2.3 * len(concepts)),
                             squeeze=False)
    mask = volume_from_voxels(np.ones(len(ijk)), grid_shape, ijk)
    for r, (concept, m) in enumerate(zip(concepts, maps)):
        axes[r, 0].imshow(image)
        axes[r, 0].set_title(f'"{concept}"', fontsize=9)
        vol = volume_from_voxels(m / (np.nanmax(m) + 1e-12), grid_shape, ijk)
        for c, z in enumerate(picks, start=1):
            axes[r, c].imshow(np.nan_to_num(mask[:, :, z]).T, cmap="gray", vmin=0, vmax=3, origin="lower")
            im = axes[r, c].imshow(vol[:, :, z].T, cmap="hot", vmin=0, vmax=1, origin="lower", alpha=0.85)
            axes[r, c].set_title(f"z = {int(z)}", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[:, 1:].ravel().tolist(), shrink=0.7, label="GradCAM (max = 1)")
    return fig
