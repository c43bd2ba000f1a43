"""Figures of notebook 01: stimuli with captions and boxes, flat maps, volume slices, counts, reliability."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..plotting import savefig
from .reliability import split_half_reliability

__all__ = ["plot_stimuli", "plot_flatmaps", "plot_volume_slices", "plot_counts", "plot_reliability", "savefig"]


def plot_stimuli(store, ids, ncols=4):
    """Images with their first caption and instance boxes."""
    n = len(ids)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.6 * nrows), squeeze=False)
    for ax, image_id in zip(axes.ravel(), ids):
        ann = store.annotations[int(image_id)]
        ax.imshow(store.get_images([image_id])[0])
        for inst in ann["instances"]:
            x, y, w, h = inst["bbox"]
            ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), w, h, fill=False, color="yellow", lw=1))
            ax.text(x, y, inst["category"], color="yellow", fontsize=7, va="bottom")
        caption = ann["captions"][0] if ann["captions"] else "(no caption)"
        ax.set_title("\n".join(caption[i:i + 36] for i in range(0, len(caption), 36)), fontsize=7)
        ax.set_xlabel(f"nsdId {int(image_id)}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_flatmaps(subject_data, store, n=4):
    """Test images beside the subject's repetition-averaged flat maps (``n`` of them, or fewer if fewer are held out)."""
    n = min(n, len(subject_data.test_image_ids))
    ids = subject_data.test_image_ids[:n]
    flats = np.asarray(subject_data.test_flat[:n], dtype=np.float32)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.2), squeeze=False)
    lim = np.percentile(np.abs(flats), 98) or 1.0
    for c in range(n):
        axes[0, c].imshow(store.get_images([ids[c]])[0])
        axes[0, c].set_title(f"nsdId {int(ids[c])}", fontsize=8)
        im = axes[1, c].imshow(flats[c], cmap="RdBu_r", vmin=-lim, vmax=lim)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1, 0].set_ylabel(f"subj{subject_data.subject:02d} flat map (z)")
    fig.colorbar(im, ax=axes[1].tolist(), shrink=0.8)
    return fig


def plot_volume_slices(subject_data):
    """Split-half reliability of nsdgeneral voxels on three axial slices of the subject's volume."""
    shape = tuple(subject_data.info["volume_shape"])
    r = split_half_reliability(subject_data.test_trial_betas, subject_data.test_trial_image_ids)
    vol = np.full(shape, np.nan)
    vol[tuple(subject_data.voxel_ijk.T)] = r
    ks = np.unique(subject_data.voxel_ijk[:, 2])
    picks = ks[np.linspace(0, len(ks) - 1, 3).astype(int)]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    for ax, k in zip(axes, picks):
        im = ax.imshow(vol[:, :, k].T, origin="lower", cmap="viridis", vmin=-0.1, vmax=0.6)
        ax.set_title(f"subj{subject_data.subject:02d} slice z={k}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes.tolist(), shrink=0.8, label="split-half r")
    return fig


def plot_counts(metrics):
    """Per-subject voxel counts and split sizes from the data stage's metrics table."""
    m = metrics[metrics.method == "prepare"]
    m = m[m.subject != "all"]
    table = m.pivot_table(index="subject", columns=["split", "metric"], values="value")
    table.columns = [f"{metric} ({split})" if split != "all" else metric for split, metric in table.columns]
    fig, axes = plt.subplots(1, len(table.columns), figsize=(3.0 * len(table.columns), 3))
    for ax, col in zip(np.atleast_1d(axes), table.columns):
        ax.bar(table.index, table[col], color="steelblue")
        ax.set_title(col, fontsize=9)
        ax.set_xlabel("subject")
    fig.tight_layout()
    return fig, table


def plot_reliability(rows):
    """Bar plot of median split-half reliability per ROI and subject.

    Parameters
    ----------
    rows : DataFrame
        Columns ``subject, kind, roi, r``.
    """
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(10, 3.6))
    sns.barplot(data=rows, x="roi", y="r", hue="subject", ax=ax)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("median split-half r (single trials)")
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


def reliability_frame(store):
    """Tidy DataFrame (subject, kind, roi, r, r3) of per-ROI reliabilities of every prepared subject."""
    from .stage import reliability_table

    recs = []
    for s in store.subjects:
        for kind, roi, r1, r3 in reliability_table(store.subject(s)):
            recs.append(dict(subject=s, kind=kind, roi=roi, r=r1, r3=r3))
    return pd.DataFrame(recs)
