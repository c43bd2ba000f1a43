"""``make seeds``: the demo chain for several NSD-mini simulator seeds, and the spread of its findings.

Each seed runs the whole chain (:func:`neurorecon.runner.reproduce`) in its own home,
``$NEURORECON_HOME/seeds/<profile>/seed<k>/``, with a run config that sets the data stage's ``sim_seed`` (on top of
the user's run config, if one is given). Complete stages are reused, so an interrupted run resumes where it
stopped. Then :func:`aggregate` reads every seed's stages and returns

- ``metrics``: the headline numbers (two-way identification in the demo-CLIP space, PixCorr and SSIM of every
  reconstruction method and its shuffled control, brief-caption CIDEr of the brain LLaVA, the nearest-neighbour
  baseline and shuffled fMRI, QA accuracy, ViT3D retrieval, notebook 05's refined models), one row per (metric,
  seed); and, where the tree is NSD-mini, the *decoding ceiling* (:mod:`neurorecon.simulate.ceiling`): two-way identification in the CLIP
  image-embedding space from the simulator's noise-free scene features (linear and RBF-kernel ridge) beside ridge
  and the ViT3D from the fMRI, the measure of how linear the simulated brains are;
- ``orderings``: each paper's ordering per seed: on how many of the evaluated subjects it holds.

:func:`summarise` turns them into the tables the README quotes: mean, sd, min and max over seeds, and "holds on k
of n seeds" (on every subject of a seed). The recipes were tuned on seed 0: report the other seeds.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from . import paths

__all__ = ["seed_home", "run_seeds", "aggregate", "summarise", "markdown", "write_report"]


#: The simulator seed the demo recipes were chosen on (reported apart from the others).
TUNED_ON = 0


def seed_home(profile, seed, root=None):
    """The home of one seed's chain."""
    return Path(root or paths.home() / "seeds" / profile) / f"seed{int(seed)}"


def _home(home):
    """NEURORECON_HOME = ``home`` inside the block; figures go into it too (a seed never overwrites figures/)."""
    return paths.environ(NEURORECON_HOME=home, NEURORECON_FIGURES=Path(home) / "figures")


def _seed_config(home, seed, config_file=None):
    from .config import _read_yaml, is_run_config
    from .errors import ConfigError

    run = {}
    if config_file:
        run = _read_yaml(config_file)
        if run and not is_run_config(run):
            raise ConfigError(f"{config_file}: make seeds needs a run config (a 'shared' section and stage sections)")
    run.setdefault("data", {})["sim_seed"] = int(seed)
    out = Path(home) / "run_config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(run, sort_keys=False))
    return out


def run_seeds(seeds, profile="demo", root=None, config_file=None, log=print):
    """Run the chain for every seed (resuming complete stages); returns ``{seed: home}``, or raises at the first
    seed whose chain fails (its executed notebooks are kept in that seed's home)."""
    from .errors import NeuroreconError
    from .runner import reproduce

    homes = {}
    for k, seed in enumerate(seeds, 1):
        home = seed_home(profile, seed, root)
        log(f"[seed {seed}: {k} of {len(seeds)}] chain in {home}")
        with _home(home):
            code = reproduce(profile, config_file=_seed_config(home, seed, config_file), log=log)
        if code:
            raise NeuroreconError(f"seed {seed}: the chain failed (executed notebooks in {home / 'executed'}); "
                                  f"fix it and rerun: complete stages and seeds are reused")
        homes[int(seed)] = home
    return homes


def _recon_rows(seed, results, sweeps, beta):
    from .evaluation.report import image_table, ordering_checks

    metrics, orderings = [], []
    table = image_table(results, "averaged")
    for method in table.index:
        for metric in table.columns:
            value = float(table.loc[method, metric])
            if np.isfinite(value):  # a metric network that is not configured is NaN ("unavailable"): not a number
                metrics.append(dict(seed=seed, source="reconstruction", method=method, metric=metric, value=value))
    checks = ordering_checks(results, sweeps, beta=beta)
    for (claim, metric), g in checks.groupby(["claim", "metric"], sort=False):
        orderings.append(dict(seed=seed, claim=claim, metric=metric, subjects=len(g), holds_on=int(g.holds.sum())))
    return metrics, orderings


def _language_rows(seed, lang):
    metrics, orderings = [], []
    mean = lang[lang.subject == "mean"]
    keep = mean[mean.metric.isin(["CIDEr", "BLEU-4", "qa_color", "qa_shape", "qa_count"])]
    for r in keep[keep.value.notna()].itertuples(index=False):
        metrics.append(dict(seed=seed, source="language", method=r.method, metric=r.metric, value=float(r.value)))
    extracted = lang[(lang.method == "concept_extraction") & (lang.subject == "all") & (lang.metric == "accuracy")]
    if len(extracted):  # the LM naming an instruction's concept: what the concept orderings below rest on
        metrics.append(dict(seed=seed, source="language", method="concept_extraction", metric="accuracy",
                            value=float(extracted.value.iloc[0])))
    top1 = lang[(lang.method == "vit3d") & (lang.metric == "top1_brain2image")]
    if len(top1):
        metrics.append(dict(seed=seed, source="language", method="vit3d", metric="top1_brain2image",
                            value=float(top1.value.mean())))
    per = lang[(lang.metric == "CIDEr") & (lang.subject != "mean")].pivot_table(
        index="subject", columns="method", values="value")
    for claim, a, b in (("brain captions > nearest-neighbour captions", "brain_llava", "nn_caption"),
                        ("brain captions > shuffled-fMRI captions", "brain_llava", "shuffled_fmri")):
        if {a, b} <= set(per.columns):
            orderings.append(dict(seed=seed, claim=claim, metric="CIDEr", subjects=len(per),
                                  holds_on=int((per[a] > per[b]).sum())))
    subj = lang[~lang.subject.astype(str).isin(["mean", "all"])]
    for qa in sorted(m for m in subj.metric.unique() if str(m).startswith("qa_")):
        q = subj[subj.metric == qa].pivot_table(index="subject", columns="method", values="value")
        if {"brain_llava", "shuffled_fmri"} <= set(q.columns):
            orderings.append(dict(seed=seed, claim="QA: brain > shuffled fMRI + .05", metric=qa, subjects=len(q),
                                  holds_on=int((q.brain_llava > q.shuffled_fmri + 0.05).sum())))
    cam = subj[subj.method == "gradcam"].pivot_table(index="subject", columns="metric", values="value")
    if {"evidence_drop_located", "evidence_drop_random"} <= set(cam.columns):
        orderings.append(dict(seed=seed, claim="concept: located > random voxels", metric="evidence drop",
                              subjects=len(cam), holds_on=int((cam.evidence_drop_located
                                                               > cam.evidence_drop_random).sum())))
    return metrics, orderings


def _refine_rows(seed, refine):
    """Notebook 05's table: two-way identification of every refined model (the recipe, its CFG-mask phase, the
    sampling variants such as the official one trial per image) and of the multi-subject start, on the refined
    subject."""
    test = refine[(refine.split == "test") & (refine.metric == "two_way_clip")]
    return [dict(seed=seed, source="refinement", method=r.method, metric="two_way_clip", value=float(r.value))
            for r in test.itertuples(index=False) if not r.method.endswith("_shuffled")]


def _concept_rows(seed, results):
    """NV2L's concept check in the reconstruction stage: located vs random voxels, per subject."""
    c = results[(results.method == "nv2l_concepts") & (results.subject.astype(str) != "all")]
    c = c.pivot_table(index="subject", columns="metric", values="value")
    if not {"score_drop_located", "score_drop_random"} <= set(c.columns):
        return []
    return [dict(seed=seed, claim="concept: located > random voxels", metric="reconstruction score drop",
                 subjects=len(c), holds_on=int((c.score_drop_located > c.score_drop_random).sum()))]


def _ceiling_rows(seed, profile, log=print):
    """Two-way identification in the CLIP image-embedding space of the test images: from the simulator's
    noise-free scene features (linear and RBF-kernel ridge: :mod:`neurorecon.simulate.ceiling`), and from each
    evaluated subject's fMRI by ridge (nsdgeneral betas) and by the trained ViT3D (mean over subjects)."""
    from .artifacts import require_stage
    from .baselines.ridge import fit_ridge, training_samples
    from .data import open_store
    from .data.stage import store_path
    from .foundation import load_foundation
    from .metrics import two_way_identification
    from .nv2l.encoder import test_voxels
    from .nv2l.vit3d import ViT3D
    from .simulate.ceiling import decoding_ceiling
    from .simulate.truth import TRUTH_FILE, load_truth

    recorded = yaml.safe_load((require_stage("data", profile) / "config.yaml").read_text())
    nsd_root = Path(recorded["nsd_root"]) if recorded.get("nsd_root") else paths.simulated_nsd_dir(profile)
    if load_truth(nsd_root) is None:
        log(f"seed {seed}: {nsd_root} is not a simulated tree (no {TRUTH_FILE}): no decoding ceiling")
        return []
    store = open_store(store_path(profile))
    fm = load_foundation(profile, components=("sd", "clip_h", "clip_l"), with_lm=False)  # NV2L's CLIP target
    test_ids = store.subject(store.subjects[0]).test_image_ids
    train_ids = np.unique(np.concatenate([store.subject(s).train_image_ids for s in store.subjects]))
    emb = {int(i): e for i, e in zip(store.image_ids, fm.image_embeds(store.get_images(store.image_ids),
                                                                      normalize=False).numpy())}
    ceil = decoding_ceiling(nsd_root, train_ids, test_ids, np.stack([emb[int(i)] for i in train_ids]),
                            np.stack([emb[int(i)] for i in test_ids]), seed=seed)
    vit3d = ViT3D.from_pretrained(require_stage("language", profile) / "vit3d", "cpu")
    ridge, deep = [], []
    for s in store.subjects:
        sub = store.subject(s)
        x, ids = training_samples(sub.train_betas, sub.train_image_ids)
        truth = np.stack([emb[int(i)] for i in sub.test_image_ids])
        model = fit_ridge(x, np.stack([emb[int(i)] for i in ids]), groups=ids, seed=seed)
        ridge.append(two_way_identification(truth, model.predict(sub.test_betas)))
        vx, vids = test_voxels(store, s)
        deep.append(two_way_identification(np.stack([emb[int(i)] for i in vids]), vit3d.predict(vx)["clip"]))
    rows = {"noise-free scene features, linear (ceiling)": ceil["linear"],
            "noise-free scene features, RBF kernel": ceil["nonlinear"],
            "ridge from fMRI": float(np.mean(ridge)), "ViT3D from fMRI": float(np.mean(deep))}
    return [dict(seed=seed, source="ceiling", method=m, metric="embedding two-way", value=float(v))
            for m, v in rows.items()]


def aggregate(homes, profile="demo", log=print):
    """``(metrics, orderings)`` DataFrames over the seeds' homes (``{seed: home}``), see the module docstring."""
    from .artifacts import read_metrics, require_stage
    from .evaluation.reconstruction import load_results

    metrics, orderings = [], []
    for seed, home in sorted(homes.items()):
        with _home(home):
            res = load_results(profile)
            beta = yaml.safe_load((res["folder"] / "config.yaml").read_text())["nv2l_beta"]  # as the stage ran
            m, o = _recon_rows(seed, res["results"], res["sweeps"], beta)
            o += _concept_rows(seed, read_metrics(res["folder"]))
            m2, o2 = _language_rows(seed, read_metrics(require_stage("language", profile)))
            m3 = _ceiling_rows(seed, profile, log)
            m4 = _refine_rows(seed, read_metrics(require_stage("refine", profile)))
        metrics += m + m2 + m3 + m4
        orderings += o + o2
    return pd.DataFrame(metrics), _untested(pd.DataFrame(orderings), sorted(homes))


def _untested(orderings, seeds):
    """Every ordering measured on some seed, on every seed: where a seed gives nothing to compare (its LM extracted
    no concept, so no map was located) the ordering is recorded as holding on none of its subjects, ``tested``
    False, instead of dropping out of that seed's count."""
    if orderings.empty:
        return orderings.assign(tested=pd.Series(dtype=bool))
    orderings = orderings.assign(tested=True)
    extra = []
    for (claim, metric), g in orderings.groupby(["claim", "metric"], sort=False):
        for seed in sorted(set(seeds) - set(g.seed)):
            extra.append(dict(seed=seed, claim=claim, metric=metric, subjects=int(g.subjects.max()), holds_on=0,
                              tested=False))
    return pd.concat([orderings, pd.DataFrame(extra)], ignore_index=True) if extra else orderings


def summarise(metrics, orderings):
    """Mean, sd, min, max and n over seeds per headline metric; per ordering the seeds on which it holds on every
    subject (``k_of_n``) and the share of (seed, subject) cases."""
    g = metrics.groupby(["source", "method", "metric"], sort=False).value
    table = pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1), "min": g.min(), "max": g.max(),
                          "n_seeds": g.count()}).reset_index()
    o = orderings.assign(all_subjects=orderings.holds_on == orderings.subjects)
    h = o.groupby(["claim", "metric"], sort=False)
    untested = (~o.tested).groupby([o.claim, o.metric], sort=False).sum() if "tested" in o else 0
    holds = pd.DataFrame({"seeds_holding": h.all_subjects.sum().astype(int), "n_seeds": h.seed.nunique(),
                          "subject_cases_holding": h.holds_on.sum() / h.subjects.sum(),
                          "seeds_untested": untested}).reset_index()
    holds["seeds_untested"] = holds.seeds_untested.fillna(0).astype(int)
    holds["k_of_n"] = holds.seeds_holding.astype(str) + " of " + holds.n_seeds.astype(str)
    return table, holds


def _fmt(v):
    return "" if not np.isfinite(v) else f"{v:.3f}".replace("0.", ".", 1) if abs(v) < 1 else f"{v:.3f}"


def markdown(table, holds, seeds=None):
    """The two summaries as Markdown tables (what the README's demo section quotes).

    Parameters
    ----------
    table, holds : DataFrame
        :func:`summarise`'s outputs.
    seeds : sequence of int, optional
        The seeds the summary is over (stated in the header).
    """
    over = f" over seeds {', '.join(str(s) for s in seeds)}" if seeds is not None else ""
    lines = [f"| source | method | metric | mean{over} | sd | min | max |", "|---|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.source} | {r.method} | {r.metric} | {_fmt(r.mean)} | {_fmt(r.sd)} | {_fmt(r.min)} | "
                     f"{_fmt(r.max)} |")
    lines += ["", "| ordering | metric | holds on every subject | (seed, subject) cases |", "|---|---|---|---|"]
    for r in holds.itertuples(index=False):
        untested = f" ({r.seeds_untested} with nothing to compare)" if getattr(r, "seeds_untested", 0) else ""
        lines.append(f"| {r.claim} | {r.metric} | {r.k_of_n} seeds{untested} | {r.subject_cases_holding:.0%} |")
    return "\n".join(lines) + "\n"


def write_report(metrics, orderings, out_dir, profile="demo", command=""):
    """Write ``seeds_<profile>_metrics.csv``, ``seeds_<profile>_orderings.csv`` (per seed), their summaries and a
    figure (the headline two-way identification per method and seed); returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plotting import savefig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, holds = summarise(metrics, orderings)
    written = {}
    for name, df in (("metrics", metrics), ("orderings", orderings), ("summary", table), ("holds", holds)):
        path = out_dir / f"seeds_{profile}_{name}.csv"
        with open(path, "w") as fh:
            if command:
                fh.write(f"# {command}\n")
            df.to_csv(fh, index=False)
        written[name] = path
    head = f"<!-- {command} -->\n" if command else ""
    written["markdown"] = out_dir / f"seeds_{profile}.md"
    written["markdown"].write_text(head + markdown(table, holds, sorted(metrics.seed.unique())))
    held_out = sorted(set(metrics.seed) - {TUNED_ON})
    if TUNED_ON in set(metrics.seed) and held_out:  # the recipes were chosen on seed 0: the others are the report
        keep = metrics.seed.isin(held_out)
        written["markdown_held_out"] = out_dir / f"seeds_{profile}_held_out.md"
        written["markdown_held_out"].write_text(
            head + markdown(*summarise(metrics[keep], orderings[orderings.seed.isin(held_out)]), held_out))
    key = "CLIP" if (metrics.metric == "CLIP").any() else "demo-CLIP"
    two_way = metrics[(metrics.source == "reconstruction") & (metrics.metric == key)]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    methods = list(dict.fromkeys(two_way.method))
    for i, method in enumerate(methods):
        v = two_way[two_way.method == method].value.to_numpy()
        ax.scatter(np.full(len(v), i), v, s=18, color="C0" if "shuffled" not in method else "0.6")
        ax.hlines(v.mean(), i - 0.3, i + 0.3, color="k")
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=7)
    ax.axhline(0.5, color="0.8", lw=0.8, ls="--")
    ax.set_ylabel(f"two-way ({key})")
    ax.set_title(f"{profile}: {two_way.seed.nunique()} simulator seeds (dots), mean (bar)", fontsize=9)
    written["figure"] = paths.figures_dir(profile) / f"seeds_{profile}.png"
    savefig(fig, written["figure"], close=True)
    return written
