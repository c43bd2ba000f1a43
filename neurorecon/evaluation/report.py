"""Small helpers that turn the reconstruction stage's tidy tables into the wide tables notebooks 07/08 show."""

import pandas as pd

from .figures import CAPTION_METRICS_SHOWN, IMAGE_METRICS, _methods

__all__ = ["image_table", "retrieval_table", "caption_table", "sweep_table", "control_gap"]


def image_table(results, variant="averaged", subject=None):
    """Methods (rows, shuffled controls included) × image metrics (columns) for one variant."""
    df = results[(results.variant == variant) & results.metric.isin(IMAGE_METRICS)]
    if subject is not None:
        df = df[df.subject == str(subject)]
    wide = df.groupby(["method", "metric"], sort=False).value.mean().unstack()
    return wide.reindex(index=_methods(df), columns=[m for m in IMAGE_METRICS if m in wide.columns])


def retrieval_table(results):
    """MindEye retrieval rows (method, variant) × (direction, mean and 95 % interval)."""
    df = results[results.metric.str.startswith("Retrieval")]
    return df.pivot_table(index=["method", "variant"], columns="metric", values="value", sort=False)


def caption_table(results, subject=None):
    """Caption methods × caption metrics (NaN where unavailable, e.g. SPICE offline)."""
    df = results[results.metric.isin(CAPTION_METRICS_SHOWN)]
    if subject is not None:
        df = df[df.subject == str(subject)]
    wide = df.groupby(["method", "metric"], sort=False).value.mean().unstack()
    return wide.reindex(columns=[m for m in CAPTION_METRICS_SHOWN if m in wide.columns])


def sweep_table(sweeps, metric):
    """One metric of the sweeps: (method, parameter) × setting."""
    df = sweeps[sweeps.metric == metric]
    return df.pivot_table(index=["method", "parameter"], columns="setting", values="value", sort=False)


def control_gap(results, metric, variant="averaged"):
    """Per method: the metric with real fMRI, with shuffled fMRI, and their difference (a Series per column)."""
    table = image_table(results, variant)
    if metric not in table:
        return pd.DataFrame(columns=["real", "shuffled", "gap"])
    real = [m for m in table.index if not m.endswith(" (shuffled fMRI)")]
    out = pd.DataFrame({"real": table.loc[real, metric],
                        "shuffled": [table[metric].get(m + " (shuffled fMRI)") for m in real]}, index=real)
    out["gap"] = out.real - out.shuffled
    return out
