"""Figures of notebooks 03–05: loss curves, flat-map and image reconstructions, the control-scale sweep."""

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..plotting import savefig

__all__ = ["savefig", "smooth", "plot_losses", "plot_map_reconstructions", "plot_r2", "plot_reconstructions",
           "plot_control_sweep", "sweep_table", "load_losses", "metrics_table"]


def smooth(values, window):
    """Trailing moving average (same length)."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) < 2:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    out = np.empty_like(v)
    for i in range(len(v)):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def load_losses(folder):
    """``losses.json`` of a stage: ``{run name: [(step, loss), ...]}`` (a bare list becomes ``{"train": ...}``)."""
    data = json.loads((folder / "losses.json").read_text())
    return data if isinstance(data, dict) else {"train": data}


def plot_losses(losses, window=20, title="training loss"):
    """One panel per run: raw losses (light) and a moving average."""
    fig, axes = plt.subplots(1, len(losses), figsize=(4.5 * len(losses), 3.2), squeeze=False)
    for ax, (name, rows) in zip(axes[0], losses.items()):
        if rows:
            steps, vals = zip(*rows)
            ax.plot(steps, vals, color="0.75", lw=0.8)
            ax.plot(steps, smooth(vals, window), color="C0", lw=1.8)
        ax.set_title(f"{title}: {name}")
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("loss")
    fig.tight_layout()
    return fig


def plot_map_reconstructions(rows, mask, titles):
    """Flat maps: ``rows`` = list of (label, maps (n, H, W)); pixels outside ``mask`` blank."""
    n = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), n, figsize=(1.8 * n, 1.9 * len(rows)), squeeze=False)
    vmax = float(np.percentile(np.abs(np.asarray(rows[0][1], dtype=float)[:, mask]), 99))
    for r, (label, maps) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            m = np.where(mask, np.asarray(maps[c], dtype=float), np.nan)
            ax.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
    fig.tight_layout()
    return fig


def plot_r2(metrics):
    """Bar chart of test R² per subject (held-out subjects hatched)."""
    r2 = metrics[metrics.metric == "r2"].set_index("subject").value
    held = metrics[metrics.metric == "in_pretraining"].set_index("subject").value
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(r2), 3))
    for i, (s, v) in enumerate(r2.items()):
        out = held.get(s, 1.0) == 0
        ax.bar(i, v, color="C1" if out else "C0", hatch="//" if out else None,
               label="held out of pretraining" if out else None)
    ax.set_xticks(range(len(r2)), [f"S{s}" for s in r2.index])
    ax.set_ylabel("test R² (visual mask)")
    ax.axhline(0, color="k", lw=0.6)
    if (held == 0).any():
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _img(x):
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3 and x.shape[0] == 3:
        x = x.transpose(1, 2, 0)
    return np.clip(x / 255.0 if x.max() > 1.5 else x, 0, 1)


def plot_reconstructions(gt, rows, titles=None):
    """Ground truth (first row) beside reconstructions: ``rows`` = {label: images (n, 3, H, W) or (n, H, W, 3)}."""
    n = len(gt)
    labels = ["ground truth"] + list(rows)
    fig, axes = plt.subplots(len(labels), n, figsize=(1.6 * n, 1.7 * len(labels)), squeeze=False)
    for r, label in enumerate(labels):
        images = gt if r == 0 else rows[label]
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(_img(images[c]))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0 and titles is not None:
                ax.set_title(str(titles[c]), fontsize=7)
    fig.tight_layout()
    return fig


def plot_control_sweep(gt, sweep, metrics):
    """Images per control scale (rows) and the metric trend (right panel).

    ``sweep``: {scale: images}; ``metrics``: the stage's tidy metrics (rows of method ``control_sweep``).
    """
    scales = sorted(sweep)
    n = len(gt)
    fig = plt.figure(figsize=(1.5 * n + 4.5, 1.5 * (len(scales) + 1)))
    grid = fig.add_gridspec(len(scales) + 1, n + 3)
    for r, label in enumerate(["ground truth"] + [f"control {s:g}" for s in scales]):
        images = gt if r == 0 else sweep[scales[r - 1]]
        for c in range(n):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(_img(images[c]))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    ax = fig.add_subplot(grid[:, n:])
    trend = sweep_table(metrics)
    for k, col in enumerate(trend.columns):
        ax.plot(trend.index, trend[col], "o-", color=f"C{k}", label=col)
    ax.set_xlabel("control scale")
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="0.6", lw=0.6, ls="--")
    ax.legend(fontsize=8)
    ax.set_title("control scale: semantics → structure", fontsize=9)
    fig.tight_layout()
    return fig


def sweep_table(metrics):
    """Control sweep metrics as a table: index control scale, columns metric names."""
    rows = metrics[metrics.method == "control_sweep"]
    out = {}
    for _, r in rows.iterrows():
        name, scale = r.metric.split("@")
        out.setdefault(name, {})[float(scale)] = r.value
    return pd.DataFrame(out).sort_index()


def metrics_table(metrics, methods, names=("two_way_clip", "pixcorr", "semantic_mse")):
    """Methods × metrics table (test split) in the given method order."""
    rows = metrics[(metrics.split == "test") & metrics.method.isin(methods) & metrics.metric.isin(names)]
    table = rows.pivot_table(index="method", columns="metric", values="value")
    return table.reindex([m for m in methods if m in table.index])[[n for n in names if n in table.columns]]
