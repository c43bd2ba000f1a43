"""Small helpers that turn the reconstruction stage's tidy tables into the wide tables notebooks 07/08 show."""

import pandas as pd


from .paper_figures import _CHANCE, CAPTION_METRICS_SHOWN, IMAGE_METRICS, _methods, headline_metric, sampler_table
from .reconstruction import METHOD_LABELS, SHUFFLED
from .table import LOWER_IS_BETTER

__all__ = ["image_table", "retrieval_table", "caption_table", "sweep_table", "sampler_table", "control_gap",
           "ordering_checks", "headline_metric", "chance"]


def chance(metric):
    """Chance level of an image metric with shuffled fMRI (0.5 for two-way identification, 0 for PixCorr); NaN
    where none is defined."""
    return _CHANCE.get(metric, float("nan"))


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
    """One metric of the sweeps: (method, parameter) × setting (sampler comparisons: :func:`sampler_table`)."""
    df = sweeps[(sweeps.metric == metric) & ~sweeps.parameter.str.endswith(" steps")]
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


def _better(metric, a, b):
    return bool(a < b) if metric in LOWER_IS_BETTER else bool(a > b)


def ordering_checks(results, sweeps=None, variant="averaged", beta=None):
    """The papers' orderings on this profile's numbers, one row per (claim, metric, subject): the two values
    compared and whether the claim holds.

    Claims: refined NeuroPictor > multi-subject-only > its shuffled control (every image metric); NeuroPictor and
    NV2L > the ridge baseline on two-way identification (the CLIP-space one); removing NV2L's VAE path (β = 1)
    lowers PixCorr against the configured β (``beta``: the stage's ``nv2l_beta``, which its β sweep always
    includes; not the best swept β, which would favour the claim).

    Raises
    ------
    ValueError
        The sweeps hold NV2L's β sweep and ``beta`` is missing or not among its settings.
    """
    rows = []
    df = results[(results.variant == variant) & results.metric.isin(IMAGE_METRICS) & results.value.notna()]
    np_, pre, nv, ridge = (METHOD_LABELS[k] for k in ("neuropictor", "neuropictor_pretrain", "nv2l", "ridge"))
    for subject, g in df.groupby("subject", sort=False):
        v = g.set_index(["method", "metric"]).value
        for metric in [m for m in IMAGE_METRICS if m in set(g.metric)]:
            for claim, a, b in (("refined > multi-subject only", np_, pre),
                                ("multi-subject only > shuffled", pre, pre + SHUFFLED),
                                ("refined > shuffled", np_, np_ + SHUFFLED)):
                if (a, metric) in v and (b, metric) in v:
                    rows.append(dict(claim=claim, metric=metric, subject=subject, a=v[a, metric], b=v[b, metric],
                                     holds=_better(metric, v[a, metric], v[b, metric])))
        key = headline_metric(g)
        for m in (np_, nv):
            if (m, key) in v and (ridge, key) in v:
                rows.append(dict(claim=f"{m} > ridge", metric=key, subject=subject, a=v[m, key], b=v[ridge, key],
                                 holds=_better(key, v[m, key], v[ridge, key])))
    if sweeps is not None and len(sweeps):
        s = sweeps[(sweeps.method == nv) & (sweeps.parameter == "beta") & (sweeps.metric == "PixCorr")]
        s = s.set_index("setting").value
        if len(s) and beta is None:
            raise ValueError("ordering_checks: the sweeps hold NV2L's beta sweep; pass beta= the stage's nv2l_beta")
        if len(s) and float(beta) not in s.index:
            raise ValueError(f"the configured NV2L beta {beta} is not among the swept betas {sorted(s.index)}")
        if 1.0 in s.index and len(s) and float(beta) != 1.0:
            rows.append(dict(claim="NV2L: beta = 1 (no VAE path) lowers PixCorr vs the configured beta",
                             metric="PixCorr", subject=sweeps.subject.iloc[0], a=s[1.0], b=s[float(beta)],
                             holds=bool(s[1.0] < s[float(beta)])))
    out = pd.DataFrame(rows, columns=["claim", "metric", "subject", "a", "b", "holds"])
    out["a"], out["b"] = out.a.astype(float), out.b.astype(float)
    return out.assign(holds=out.holds.astype(bool)) if len(out) else out
