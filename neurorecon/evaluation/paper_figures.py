"""Stage ``figures`` (notebook 08): the papers' figures and tables from the reconstruction stage (notebook 07).

- :func:`plot_reconstructions`: ground truth above every method's reconstructions (NeuroPictor Fig. 3 / NV2L
  Fig. 4 style);
- :func:`plot_metric_bars`: each image metric per method, averaged vs single-trial fMRI vs the shuffled-fMRI
  control, with chance;
- :func:`plot_subject_bars`: one metric per subject and method (seaborn);
- :func:`plot_sweeps` and :func:`plot_sweep_images`: metrics and images against each swept parameter
  (NeuroPictor's control and guidance scales, NV2L's β, the ridge baseline's img2img strength);
  :func:`sampler_table`: DDIM 50 vs DPM-Solver++ 20 steps, metrics and seconds;
- :func:`plot_retrieval`, :func:`plot_captions`: NV2L's retrieval and caption scores against controls;
- :func:`paper_table`: our numbers in the layout of the papers' main table, beside the published ones
  (:data:`PUBLISHED`, real NSD; ours are on whatever data the profile uses — NSD-mini in demo/smoke — so the two
  are not comparable number for number).

Every figure is written as PNG and PDF. Artifacts (``artifacts/<profile>/figures/``): ``paper_table.csv``,
``paper_table.md``, ``paper_table.tex``, ``sampler_table.csv``, ``figures.json`` (the figure files written);
metrics: the number of figures.
"""

import dataclasses
import json
import re
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import paths
from ..artifacts import StageWriter, is_complete
from ..config import StageConfig
from ..plotting import savefig
from .io import load_reconstructions
from .reconstruction import METHOD_LABELS, SHUFFLED, load_results
from .table import LOWER_IS_BETTER

__all__ = ["FiguresConfig", "PUBLISHED", "PUBLISHED_SOURCES", "PAPER_COLUMNS", "IMAGE_METRICS", "CAPTION_METRICS_SHOWN",
           "run_figures_stage", "paper_table", "plot_reconstructions", "plot_metric_bars", "plot_sweeps",
           "plot_sweep_images", "plot_subject_bars", "headline_metric", "sampler_table", "latex_table", "plot_retrieval", "plot_captions", "savefig"]

#: The papers' main-table columns (our metric names → the papers' headers).
PAPER_COLUMNS = {"PixCorr": "PixCorr", "SSIM": "SSIM", "AlexNet(2)": "Alex(2)", "AlexNet(5)": "Alex(5)",
                 "Inception": "Incep", "CLIP": "CLIP", "EffNet-B": "EffNet↓", "SwAV": "SwAV↓"}
#: Image metrics in report order (demo-CLIP only exists in smoke/demo).
IMAGE_METRICS = ("PixCorr", "SSIM", "AlexNet(2)", "AlexNet(5)", "Inception", "CLIP", "demo-CLIP", "EffNet-B", "SwAV")
CAPTION_METRICS_SHOWN = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "CLIP-S", "demo-CLIP-S")
_PERCENT = ("AlexNet(2)", "AlexNet(5)", "Inception", "CLIP", "demo-CLIP")
_CHANCE = {"AlexNet(2)": 0.5, "AlexNet(5)": 0.5, "Inception": 0.5, "CLIP": 0.5, "demo-CLIP": 0.5, "PixCorr": 0.0}

#: Published image-reconstruction numbers on real NSD: means of subjects 1, 2, 5, 7 on the shared test images
#: (982 in the 37-session release; MindEye2 used 1000), two-way identification in %. Each row's source, a paper
#: table, is in :data:`PUBLISHED_SOURCES`; protocol: docs/evaluation_protocol.md.
PUBLISHED = pd.DataFrame(
    [("Brain-Diffuser", .254, .356, 94.2, 96.2, 87.2, 91.5, .775, .423),
     ("MindEye1", .309, .323, 94.7, 97.8, 93.8, 94.1, .645, .367),
     ("NeuroPictor", .229, .375, 96.5, 98.4, 94.5, 93.3, .639, .350),
     ("NeuroPictor (multi-subject only)", .141, .349, 91.4, 95.7, 88.3, 88.9, .722, .417),
     ("NV2L", .265, .357, 93.1, 97.1, 96.8, 97.5, .633, .321),
     ("NV2L (single trial)", .257, .336, 91.2, 96.3, 94.6, 95.3, .671, .324),
     ("MindBridge", .151, .263, 87.7, 95.5, 92.4, 94.7, .712, .418),
     ("UMBRAE", .283, .328, 93.9, 96.7, 93.4, 94.1, .700, .393),
     ("MindEye2 (refined)", .322, .431, 96.1, 98.6, 95.4, 93.0, .619, .344),
     ("MindEye2 (unrefined)", .278, .328, 95.2, 99.0, 96.4, 94.5, .622, .343),
     ("MindEye2 (1 hour of data)", .195, .419, 84.2, 90.6, 81.2, 79.2, .810, .468),
     ("MindTuner", .322, .421, 95.8, 98.8, 95.6, 93.8, .612, .340),
     ("Brain-IT", .386, .486, 98.4, 99.5, 97.3, 96.4, .564, .320)],
    columns=["method"] + list(PAPER_COLUMNS.values())).set_index("method")
#: Where each :data:`PUBLISHED` row comes from (the paper table; "unverified" where only a third-party summary of
#: the paper was at hand when the row was added, 2026-12-01).
PUBLISHED_SOURCES = {
    "Brain-Diffuser": "Ozcelik & VanRullen, Sci. Rep. 2023, as tabulated in MindEye1 (Scotti et al., NeurIPS 2023) "
                      "Tab. 1",
    "MindEye1": "Scotti et al., NeurIPS 2023 (arXiv 2305.18274), Tab. 1",
    "NeuroPictor": "Huo et al. 2024 (arXiv 2403.18211), main results table",
    "NeuroPictor (multi-subject only)": "Huo et al. 2024 (arXiv 2403.18211), results of multi-subject pretraining "
                                        "alone (before single-subject refinement)",
    "NV2L": "Shen et al., NeurIPS 2024 (arXiv 2404.19438), Tab. 2",
    "NV2L (single trial)": "Shen et al., NeurIPS 2024 (arXiv 2404.19438), Tab. 2",
    "MindBridge": "Wang et al., CVPR 2024, as tabulated in NV2L Tab. 2",
    "UMBRAE": "Xia et al. 2024 (arXiv 2404.07202), as tabulated in NV2L Tab. 2 (ZEBRA, NeurIPS 2025, Tab. 1 lists "
              "SSIM .341, Alex(2) 95.5, Alex(5) 97.0, Incep 91.7, CLIP 93.5 for it)",
    "MindEye2 (refined)": "Scotti et al., ICML 2024 (arXiv 2403.11207v2), Tab. 1, 40 sessions, refined with SDXL",
    "MindEye2 (unrefined)": "Scotti et al., ICML 2024 (arXiv 2403.11207v2), Tab. 1, 40 sessions, before refinement",
    "MindEye2 (1 hour of data)": "Scotti et al., ICML 2024 (arXiv 2403.11207v2), Tab. 1, 1 session per subject",
    "MindTuner": "Gong et al. 2024 (arXiv 2404.12630), 40 hours, as tabulated in ZEBRA (NeurIPS 2025) Tab. 1",
    "Brain-IT": "Beliy et al., ICLR 2026 (arXiv 2510.25976): unverified, from a third-party summary of its table",
}


@dataclasses.dataclass
class FiguresConfig(StageConfig):
    """Config of the figures stage (``neurorecon/configs/figures.yaml``)."""

    STAGE = "figures"
    NOTEBOOK = "08_paper_figures"

    subject: Optional[int] = None
    n_show: int = 8
    variant: str = "averaged"
    dpi: int = 120


def _img(x):
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3 and x.shape[0] == 3:
        x = x.transpose(1, 2, 0)
    return np.clip(x / 255.0 if x.max() > 1.5 else x, 0, 1)


def _methods(results):
    """Methods with image metrics, real ones first in :data:`METHOD_LABELS` order."""
    order = list(METHOD_LABELS.values())
    names = results[results.metric == "PixCorr"].method.unique().tolist()
    return sorted(names, key=lambda m: (m.endswith(SHUFFLED), order.index(m.replace(SHUFFLED, ""))
                                        if m.replace(SHUFFLED, "") in order else len(order), m))


def plot_reconstructions(gt, rows, titles=None, col_width=1.5):
    """Ground truth (first row) above reconstructions; ``rows`` = {label: images (n, H, W, 3) or (n, 3, H, W)}."""
    n = len(gt)
    labels = ["ground truth"] + list(rows)
    fig, axes = plt.subplots(len(labels), n, figsize=(col_width * n + 1.2, col_width * len(labels)), squeeze=False)
    for r, label in enumerate(labels):
        images = gt if r == 0 else rows[label]
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(_img(images[c]))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label.replace(" (", "\n("), fontsize=8)
            if r == 0 and titles is not None:
                ax.set_title(str(titles[c]), fontsize=7)
    fig.tight_layout()
    return fig


def plot_metric_bars(results, subject=None):
    """One panel per image metric with values: bars per method for averaged and single-trial fMRI and the
    shuffled-fMRI control; the dashed line is chance (two-way 50 %, PixCorr 0)."""
    df = results if subject is None else results[results.subject == str(subject)]
    df = df[df.metric.isin(IMAGE_METRICS) & df.value.notna()]
    metrics = [m for m in IMAGE_METRICS if m in set(df.metric)]
    methods = [m for m in _methods(df) if not m.endswith(SHUFFLED)]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(2.3 + 2.2 * len(metrics), 3.4), squeeze=False)
    kinds = (("averaged", "", "C0"), ("single-trial", "", "C1"), ("averaged", SHUFFLED, "0.6"))
    for ax, metric in zip(axes[0], metrics):
        x = np.arange(len(methods))
        for k, (variant, suffix, color) in enumerate(kinds):
            vals = []
            for m in methods:
                sel = df[(df.method == m + suffix) & (df.variant == variant) & (df.metric == metric)].value
                vals.append(sel.mean() if len(sel) else np.nan)
            label = "shuffled fMRI" if suffix else f"{variant} fMRI"
            ax.bar(x + (k - 1) * 0.27, vals, width=0.27, color=color, label=label)
        if metric in _CHANCE:
            ax.axhline(_CHANCE[metric], ls="--", color="k", lw=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels([m.replace(" (", "\n(") for m in methods], rotation=60, ha="right", fontsize=7)
        ax.set_title(metric + (" ↓" if metric in LOWER_IS_BETTER else ""), fontsize=9)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def _method_color(method):
    labels = list(METHOD_LABELS.values())
    return f"C{labels.index(method)}" if method in labels else "0.5"


def _numeric_sweeps(df):
    return df[~df.parameter.str.endswith(" steps")]


def plot_sweeps(sweeps, subject=None, metrics=("PixCorr", "SSIM", "demo-CLIP", "CLIP", "AlexNet(2)", "Inception")):
    """Metrics (columns) against each swept parameter (rows), one line per method; sampler comparisons (parameter
    ``"<sampler> steps"``) are left to :func:`sampler_table`."""
    df = sweeps if subject is None else sweeps[sweeps.subject == str(subject)]
    df = _numeric_sweeps(df[df.value.notna()])
    metrics = [m for m in metrics if m in set(df.metric)]
    params = list(dict.fromkeys(df.parameter))
    fig, axes = plt.subplots(max(1, len(params)), max(1, len(metrics)),
                             figsize=(0.5 + 2.8 * len(metrics), 0.4 + 2.4 * len(params)), squeeze=False)
    for r, param in enumerate(params):
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            for method, g in df[(df.parameter == param) & (df.metric == metric)].groupby("method", sort=False):
                g = g.sort_values("setting")
                ax.plot(g.setting, g.value, marker="o", label=method, color=_method_color(method))
            if metric in _CHANCE:
                ax.axhline(_CHANCE[metric], ls="--", color="k", lw=0.8)
            ax.set_xlabel(param.replace("_", " "), fontsize=8)
            if r == 0:
                ax.set_title(metric, fontsize=9)
            if c == len(metrics) - 1:
                ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return fig


def sampler_table(sweeps, subject=None):
    """DDIM vs DPM-Solver++ rows of the sweeps: (method, sampler, steps) × metric, with ``seconds``."""
    df = sweeps if subject is None else sweeps[sweeps.subject == str(subject)]
    df = df[df.parameter.str.endswith(" steps")].copy()
    if df.empty:
        return pd.DataFrame()
    df["sampler"] = df.parameter.str.replace(" steps", "", regex=False)
    df["steps"] = df.setting.astype(int)
    return df.pivot_table(index=["method", "sampler", "steps"], columns="metric", values="value", sort=False)


def headline_metric(results):
    """The CLIP metric the tables and checks read: ``CLIP`` (OpenAI ViT-L/14, the papers') where it has values,
    else the foundation's ``demo-CLIP``, else ``PixCorr`` (a full run without metric-network weights: the
    missing networks are listed in ``protocol.json``'s ``unavailable``)."""
    have = set(results.metric[results.value.notna()])
    return next((m for m in ("CLIP", "demo-CLIP") if m in have), "PixCorr")


def plot_subject_bars(results, metric="demo-CLIP", variant="averaged"):
    """One metric per evaluation subject and method (seaborn bars; shuffled controls included)."""
    import seaborn as sns

    df = results[(results.metric == metric) & (results.variant == variant) & results.value.notna()
                 & results.subject.str.isdigit()].copy()
    df["subject"] = "subj" + df.subject.str.zfill(2)
    order = _methods(results[results.metric == "PixCorr"]) if (results.metric == "PixCorr").any() else None
    fig, ax = plt.subplots(figsize=(3.0 + 1.1 * max(1, df.subject.nunique()), 3.2))
    sns.barplot(df, x="subject", y="value", hue="method", hue_order=[m for m in (order or []) if m in set(df.method)]
                or None, ax=ax, palette="tab10")
    if metric in _CHANCE:
        ax.axhline(_CHANCE[metric], ls="--", color="k", lw=0.8)
    ax.set_ylabel(metric)
    ax.set_xlabel("")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    return fig


def plot_sweep_images(gt, images_by_setting, parameter, col_width=1.4):
    """Ground truth and reconstructions per setting of one method's sweep (rows)."""
    rows = {f"{parameter.replace('_', ' ')} = {k:g}": v for k, v in sorted(images_by_setting.items())}
    return plot_reconstructions(gt, rows, col_width=col_width)


def plot_retrieval(results):
    """MindEye retrieval (top-1, both directions) of brain-predicted CLIP embeddings vs the shuffled control and
    chance, with 95 % intervals."""
    df = results[results.metric.str.startswith("Retrieval") & ~results.metric.str.contains("CI95")]
    fig, ax = plt.subplots(figsize=(5.2, 3.0))
    labels = []
    for k, ((method, variant), g) in enumerate(df.groupby(["method", "variant"], sort=False)):
        for d, direction in enumerate(("brain->image", "image->brain")):
            v = g[g.metric == f"Retrieval {direction}"].value.mean()
            lo = results[(results.method == method) & (results.variant == variant)
                         & (results.metric == f"Retrieval {direction} CI95 low")].value.mean()
            hi = results[(results.method == method) & (results.variant == variant)
                         & (results.metric == f"Retrieval {direction} CI95 high")].value.mean()
            ax.bar(k + (d - 0.5) * 0.4, v, width=0.4, color=f"C{d}", label=direction if k == 0 else None,
                   yerr=[[v - lo], [hi - v]] if np.isfinite(lo) else None)
        labels.append(f"{method}\n{variant}")
    found = [int(m.group(1)) for note in df.note.dropna().unique() if (m := re.search(r"chance 1/(\d+)", note))]
    n = found[0] if found else None
    if n:
        ax.axhline(1 / n, ls="--", color="k", lw=0.8, label=f"chance 1/{n}")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("top-1 accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_captions(results):
    """Caption metrics of NV2L's captions, the nearest-neighbour caption baseline and the shuffled control."""
    df = results[results.metric.isin(CAPTION_METRICS_SHOWN) & results.value.notna()]
    metrics = [m for m in CAPTION_METRICS_SHOWN if m in set(df.metric)]
    methods = list(dict.fromkeys(df.method))
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(metrics), 3.0))
    x = np.arange(len(metrics))
    w = 0.8 / max(1, len(methods))
    for k, m in enumerate(methods):
        vals = [df[(df.method == m) & (df.metric == metric)].value.mean() for metric in metrics]
        ax.bar(x + (k - (len(methods) - 1) / 2) * w, vals, width=w, label=m, color=f"C{k}")
    ax.set_xticks(x)
    ax.set_xticklabels(metrics, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def paper_table(results, variant="averaged", subjects=None):
    """Our image metrics in the papers' main-table layout (mean over subjects; two-way in %), with the published
    rows below.

    Returns
    -------
    pandas.DataFrame
        Rows: our methods (``(ours)``) then :data:`PUBLISHED`; columns: :data:`PAPER_COLUMNS` (plus ``demo-CLIP``
        when present); NaN where a metric is unavailable.
    """
    df = results[(results.variant == variant) & results.metric.isin(IMAGE_METRICS)]
    if subjects is not None:
        df = df[df.subject.isin([str(s) for s in subjects])]
    mean = df.groupby(["method", "metric"], sort=False).value.mean().unstack()
    for m in _PERCENT:
        if m in mean:
            mean[m] = mean[m] * 100
    cols = [c for c in IMAGE_METRICS if c in mean.columns or c in PAPER_COLUMNS]
    mean = mean.reindex(columns=cols).reindex(_methods(df))
    mean.index = [f"{m} (ours)" for m in mean.index]
    mean = mean.rename(columns=PAPER_COLUMNS)
    published = PUBLISHED.copy()
    published.index = [f"{m} (published, real NSD)" for m in published.index]
    out = pd.concat([mean, published.reindex(columns=mean.columns)])
    out.index.name = "method"
    return out


def latex_table(table, caption=r"Image reconstruction metrics (two-way identification in \%)."):
    """The paper table as a LaTeX ``table`` (booktabs; – where a metric is unavailable)."""
    def cell(v):
        return "--" if not np.isfinite(v) else (f"{v:.1f}" if abs(v) >= 2 else f"{v:.3f}")

    cols = list(table.columns)
    esc = str.maketrans({"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#"})
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * len(cols) + "}", r"\toprule",
             "Method & " + " & ".join(c.replace("↓", r"$\downarrow$").translate(esc) for c in cols) + r" \\",
             r"\midrule"]
    for name, row in table.iterrows():
        lines.append(str(name).translate(esc) + " & " + " & ".join(cell(v) for v in row.values) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _markdown(table):
    cols = list(table.columns)
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, row in table.iterrows():
        cells = ["–" if not np.isfinite(v) else (f"{v:.1f}" if abs(v) >= 2 else f"{v:.3f}") for v in row.values]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    sources = [f"- {m}: {PUBLISHED_SOURCES[m]}" for m in PUBLISHED.index if f"{m} (published, real NSD)" in table.index]
    return "\n".join(lines + (["", "Sources of the published rows:"] + sources if sources else [])) + "\n"


def _load_images(folder, key, subject, variant):
    path = folder / "reconstructions" / f"{key}_subj{int(subject):02d}_{variant}.npz"
    return load_reconstructions(path) if path.is_file() else None


def run_figures_stage(cfg, force=False, log=print):
    """Draw every figure and table (see the module docstring); returns the stage folder."""
    folder = paths.stage_dir(cfg.STAGE, cfg.profile)
    if not force and is_complete(cfg.STAGE, cfg.profile, cfg.digest()):
        return folder
    from ..data import open_store
    from ..data.stage import store_path

    res = load_results(cfg.profile)
    results, sweeps, src = res["results"], res["sweeps"], res["folder"]
    store = open_store(store_path(cfg.profile))
    subjects = [s for s in results.subject.unique() if s.isdigit()]
    subject = str(cfg.subject) if cfg.subject is not None else subjects[0]
    fig_dir = paths.figures_dir(cfg.profile)
    written = {}

    def save(fig, name):
        written[name] = str(savefig(fig, fig_dir / f"08_{name}.png", dpi=cfg.dpi, pdf=True, close=True))

    keys = [k for k in METHOD_LABELS if _load_images(src, k, subject, cfg.variant) is not None]
    if keys:
        first = _load_images(src, keys[0], subject, cfg.variant)
        ids = first["image_ids"][:cfg.n_show]
        rows = {}
        for k in keys:
            rec = _load_images(src, k, subject, cfg.variant)
            rows[METHOD_LABELS[k]] = rec["images"][:cfg.n_show]
        save(plot_reconstructions(store.get_images(ids), rows, titles=ids), f"reconstructions_subj{int(subject):02d}")
        shuffled = {METHOD_LABELS[k] + SHUFFLED: r["images"][:cfg.n_show]
                    for k in keys if (r := _load_images(src, f"{k}_shuffled", subject, "averaged")) is not None}
        if shuffled:
            save(plot_reconstructions(store.get_images(ids), shuffled, titles=ids), "shuffled_control")
    save(plot_metric_bars(results, subject), "metrics")
    metric = headline_metric(results)
    if (results.metric == metric).any():
        save(plot_subject_bars(results, metric, cfg.variant), "subjects")
    samplers = pd.DataFrame()
    if len(sweeps):
        save(plot_sweeps(sweeps, subject), "sweeps")
        samplers = sampler_table(sweeps, subject)
        sweep_subject = sweeps.subject.iloc[0]
        for k in keys:
            files = sorted((src / "reconstructions" / "sweeps").glob(f"{k}_subj{int(sweep_subject):02d}_*.npz"))
            by_param = {}
            for f in files:
                rec = load_reconstructions(f)
                param, value = rec["variant"].split("=")
                if not param.endswith(" steps"):
                    by_param.setdefault(param, (rec["image_ids"], {}))[1][float(value)] = rec["images"][:cfg.n_show]
            for param, (ids_, by) in by_param.items():
                save(plot_sweep_images(store.get_images(ids_[:cfg.n_show]), by, param), f"sweep_{k}_{param}")
    if results.metric.str.startswith("Retrieval").any():
        save(plot_retrieval(results), "retrieval")
    if results.metric.isin(CAPTION_METRICS_SHOWN).any():
        save(plot_captions(results), "captions")
    table = paper_table(results, cfg.variant)
    with StageWriter(cfg) as w:
        table.to_csv(w.path / "paper_table.csv")
        (w.path / "paper_table.md").write_text(_markdown(table))
        (w.path / "paper_table.tex").write_text(latex_table(table))
        samplers.to_csv(w.path / "sampler_table.csv")
        (w.path / "figures.json").write_text(json.dumps(written, indent=1))
        w.add_metric("figures", "all", "all", "n_figures", len(written))
    log(f"{len(written)} figures in {fig_dir}")
    return folder

