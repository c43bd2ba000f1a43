"""Stage ``reconstruction`` (notebook 07): every method reconstructs the evaluation subjects' test images and one
harness scores them all.

For each subject and method: reconstructions from the repetition-averaged test fMRI (``averaged``) and from the
first repetition of each test image alone (``single-trial``); the shuffled-fMRI control (a derangement of the
averaged test inputs, same sampling noise) scored against the unshuffled ground truth, which must fall to chance;
reconstructions are rounded to uint8 before scoring, so the saved files re-score to the same numbers;
parameter sweeps on the first ``sweep_n`` images (:data:`SWEEPS`: NeuroPictor's control and guidance scales,
NV2L's β, the ridge baseline's img2img strength, and DDIM 50 vs DPM-Solver++ 20 steps for NeuroPictor and NV2L,
with their sampling times); NV2L's captions (notebook 06) with pycocoevalcap and CLIP-S.

NV2L reconstructs as the paper does: the ViT3D's predicted CLIP image embedding conditions the unCLIP UNet, the
sampler starts from ``(1 - β) · predicted VAE latent + β · noise`` (β = 0.93; β = 1 ignores the VAE path) and
denoises over every step, and the text context is the brain LLaVA's answer to the reconstruction instruction
("Provide the corresponding Stable Diffusion prompts for the image.") from the same fMRI (``nv2l_prompt: false``:
the empty prompt).

NeuroPictor is refined on one subject (the refine stage's); the other evaluation subjects get every other method
(the multi-subject NeuroPictor model covers them all).

Artifacts (``$NEURORECON_HOME/artifacts/<profile>/reconstruction/``)::

    results.csv            the tidy table (method, subject, metric, value, variant, note), every method and control
    sweeps.csv             method, subject, parameter, setting, metric, value
    nv2l_prompts.csv       the brain LLaVA's Stable Diffusion prompts NV2L reconstructs with
    concept_reconstruction.csv  NV2L's concept check: the concept's CLIP score in reconstructions of the fMRI with
                           the located vs as many random voxels ablated (:func:`concept_check`)
    reconstructions/       <method>_subjNN_<variant>.npz in the `neurorecon evaluate` format (re-scorable)
    protocol.json          resize/antialias settings, metric networks used and unavailable ones, sampling
    metrics.csv, config.yaml, COMPLETE
"""

import dataclasses
import gc
import hashlib
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch
import yaml

from .. import paths
from ..artifacts import StageWriter, is_complete, require_stage
from ..config import StageConfig, config_source, load_config
from ..distributed import require_single_process
from ..devices import stage_device
from ..errors import ConfigError
from ..metrics import derangement
from .config import EvaluationConfig
from .images import protocol_settings, to_uint8
from .io import save_reconstructions
from .networks import load_metric_networks
from .table import evaluate_captions, evaluate_reconstructions, write_metrics

__all__ = ["ReconstructionConfig", "METHOD_LABELS", "run_reconstruction_stage", "eval_inputs", "derangement",
           "load_results", "SWEEPS", "sweep_settings", "concept_check"]

#: Method key → the name used in tables and figures.
METHOD_LABELS = {"neuropictor": "NeuroPictor", "neuropictor_pretrain": "NeuroPictor (multi-subject only)",
                 "nv2l": "NV2L", "ridge": "Ridge (Takagi & Nishimoto)",
                 "neuropictor_released": "NeuroPictor (released checkpoint)"}
_INPUTS = {"neuropictor": "flat", "neuropictor_pretrain": "flat", "nv2l": "common", "ridge": "betas",
           "neuropictor_released": "flat"}
_NEEDS = {"neuropictor": "refine", "neuropictor_pretrain": "pretrain", "nv2l": "language", "ridge": None,
          "neuropictor_released": None}
SHUFFLED = " (shuffled fMRI)"
#: What reconstruction uses of the foundation: SD 2.1 (NeuroPictor, ridge), its text encoder, CLIP ViT-L/14
#: (metrics, NV2L's embedding space) and Stable unCLIP (NV2L). Not the foundation's LLM: the brain LLaVA
#: carries its own fine-tuned one.
COMPONENTS = ("sd", "clip_h", "clip_l", "unclip")
#: Method key → the parameters swept on it (config lists: control_scales, guidance_scales, betas, strengths,
#: samplers). A sampler setting "ddim:50" is recorded as parameter "ddim steps", setting 50, with its seconds.
SWEEPS = {"neuropictor": ("control_scale", "guidance_scale", "sampler"), "nv2l": ("beta", "sampler"),
          "ridge": ("strength",)}
_SWEEP_LISTS = {"control_scale": "control_scales", "guidance_scale": "guidance_scales", "beta": "betas",
                "strength": "strengths", "sampler": "samplers"}


@dataclasses.dataclass
class ReconstructionConfig(StageConfig):
    """Config of the reconstruction stage (``neurorecon/configs/reconstruction.yaml``; comments there).

    Its :meth:`digest` also covers the evaluation settings (:class:`EvaluationConfig` of the profile with
    ``evaluation_file``), so changing a metric network's weight file reruns the stage.
    """

    STAGE = "reconstruction"
    NOTEBOOK = "07_reconstruction_and_evaluation"

    subjects: Optional[list[int]] = None
    methods: list[str] = dataclasses.field(default_factory=lambda: list(METHOD_LABELS)[:4])
    n_eval: int = 0
    single_trial: bool = True
    shuffle_seed: int = 0
    seed: int = 42
    batch_size: int = 50
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    control_scale: float = 1.0
    nv2l_beta: float = 0.93
    nv2l_noise_level: int = 0
    nv2l_prompt: bool = True
    nv2l_prompt_tokens: int = 48
    ridge_strength: float = 0.8
    ridge_average: bool = True
    ridge_batch: int = 64
    sweep_n: int = 24
    control_scales: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.5, 1.0])
    guidance_scales: list[float] = dataclasses.field(default_factory=lambda: [1.0, 3.0, 5.0])
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.6, 0.75, 0.9, 0.93, 0.98, 1.0])
    strengths: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.8, 1.0])
    samplers: list[str] = dataclasses.field(default_factory=lambda: ["ddim:50", "dpm++:20"])
    captions: bool = True
    evaluation_file: Optional[str] = None
    num_threads: Optional[int] = None
    released_neuropictor: Optional[str] = None
    concept_images: int = 32
    concept_random_draws: int = 3

    def evaluation(self):
        """The :class:`EvaluationConfig` of this profile with ``evaluation_file`` applied, else the run config this
        config came from (its ``evaluation`` section)."""
        return load_config(EvaluationConfig, self.profile, path=self.evaluation_file or config_source(self))

    def digest(self):
        blob = json.dumps([self.to_dict(), self.evaluation().to_dict()], sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def eval_inputs(sub, kind, variant, n):
    """Test inputs of the first ``n`` sorted test images: ``kind`` ``betas``/``flat``/``common``; ``variant``
    ``averaged`` (mean over repetitions) or ``single-trial`` (the first repetition of each image).

    Returns
    -------
    ids : ndarray (n,), x : ndarray (n, ...) float32
    """
    ids = np.asarray(sub.test_image_ids)[:n]
    if variant == "averaged":
        x = {"betas": sub.test_betas, "flat": sub.test_flat, "common": sub.test_common}[kind]
    else:
        first = np.unique(np.asarray(sub.test_trial_image_ids), return_index=True)[1]  # aligned with the ids
        name = {"betas": "test_trial_betas", "flat": "test_trial_flat", "common": "test_trial_common"}[kind]
        path = sub.folder / f"{name}.npy"
        x = np.load(path, mmap_mode="r")[first] if path.is_file() else None
    if x is None:
        raise ConfigError(f"subject {sub.subject}: the prepared store has no '{kind}' test inputs")
    return ids, np.asarray(x[:n], dtype=np.float32)


class _Method:
    """One method's reconstruction function on test inputs (float images (n, 3, S, S) in [0, 1])."""

    def __init__(self, key, cfg, fm, store, subject, log):
        self.key, self.cfg, self.fm = key, cfg, fm
        self.label = METHOD_LABELS[key]
        self.kind = _INPUTS[key]
        self.brain_embeds = None
        if key in ("neuropictor", "neuropictor_pretrain"):
            from ..neuropictor import load_pipeline

            stage = require_stage(_NEEDS[key], cfg.profile)
            self.pipe = load_pipeline(fm, stage / ("refined_mask" if key == "neuropictor" else "model"), "ddim")
        elif key == "neuropictor_released":
            from ..neuropictor import load_pipeline

            self.pipe = load_pipeline(fm, _released_folder(cfg), "ddim")
        elif key == "nv2l":
            from ..nv2l import BrainLlava, ViT3D

            lang = require_stage("language", cfg.profile)
            # on the foundation's device; the brain LLaVA's LLM in the foundation's (frozen) dtype
            self.encoder = ViT3D.from_pretrained(lang / "vit3d", fm.device)
            self.llava = BrainLlava.from_pretrained(lang / "brain_llava", fm.device, fm.extras.get("dtype")) \
                if cfg.nv2l_prompt else None
            self.prompts = None
        elif key == "ridge":
            from ..baselines import fit_subject_ridge

            t = time.time()
            self.ridge = fit_subject_ridge(fm, store, subject, average=cfg.ridge_average, seed=cfg.seed,
                                           batch_size=cfg.ridge_batch)
            log(f"  ridge fit for subject {subject} in {time.time() - t:.0f} s (alpha latent "
                f"{self.ridge.latent_map.alpha:g}, text {self.ridge.text_map.alpha:g})")
        else:
            raise ConfigError(f"reconstruction config: unknown method {key!r}; expected {', '.join(METHOD_LABELS)}")

    @torch.no_grad()
    def __call__(self, x, control_scale=None, guidance_scale=None, beta=None, strength=None, scheduler="ddim",
                 steps=None):
        """Reconstructions of inputs ``x`` with the config's settings, or the ones given (sweeps)."""
        cfg, fm = self.cfg, self.fm
        steps = int(steps or cfg.num_inference_steps)
        guidance = float(cfg.guidance_scale if guidance_scale is None else guidance_scale)
        if self.key.startswith("neuropictor"):
            from ..neuropictor import SampleSettings, reconstruct

            scale = cfg.control_scale if control_scale is None else control_scale
            settings = SampleSettings(steps, guidance, float(scale), scheduler, cfg.seed, cfg.batch_size)
            return reconstruct(self.pipe, x, settings)
        if self.key == "nv2l":
            pred = self.encoder.predict(x)
            self.brain_embeds = pred["clip"].numpy()
            if self.llava is not None:  # the brain LLaVA's answer to the reconstruction instruction
                from ..nv2l.instructions import RECONSTRUCTION_PROMPT

                self.prompts = self.llava.generate(x, RECONSTRUCTION_PROMPT, max_new_tokens=cfg.nv2l_prompt_tokens)
                context = fm.text_tokens(self.prompts)
            else:
                context = fm.empty_tokens(len(x))
            return fm.sample(context, image_embeds=pred["clip"], noise_level=cfg.nv2l_noise_level,
                             init_latents=pred["latent"], beta=float(cfg.nv2l_beta if beta is None else beta),
                             num_steps=steps, guidance_scale=guidance, scheduler=scheduler, seed=cfg.seed,
                             batch_size=cfg.batch_size).cpu()
        strength = cfg.ridge_strength if strength is None else strength
        return self.ridge.reconstruct(fm, x, strength=strength, num_steps=steps, guidance_scale=guidance,
                                      seed=cfg.seed, batch_size=cfg.batch_size)


def _released_folder(cfg):
    """The folder of ``released_neuropictor`` (written by ``neurorecon import neuropictor --ckpt``)."""
    if not cfg.released_neuropictor:
        raise ConfigError("reconstruction config: method neuropictor_released needs released_neuropictor: the "
                          "folder written by `neurorecon import neuropictor --ckpt ...` (docs/neuropictor_import.md)")
    folder = Path(cfg.released_neuropictor).expanduser()
    if not (folder / "conditioner").is_dir() or not (folder / "controlnet").is_dir():
        raise ConfigError(f"reconstruction config: released_neuropictor {folder} has no conditioner/ and "
                          "controlnet/: write it with `neurorecon import neuropictor --ckpt ... --out` first")
    return folder


def _released_subject(cfg):
    """The subject a released single-subject checkpoint was refined on (``--subject`` at import), else None."""
    info = _released_folder(cfg) / "import.json"
    return json.loads(info.read_text()).get("subject") if info.is_file() else None


def _refined_subject(cfg):
    refine = require_stage("refine", cfg.profile)
    return int(yaml.safe_load((refine / "config.yaml").read_text())["subject"])


def _subjects(cfg, store):
    """The evaluation subjects: the config's list, else the refine stage's subject (with NeuroPictor among the
    methods), else the store's first subject."""
    if cfg.subjects:
        missing = [int(s) for s in cfg.subjects if int(s) not in [int(x) for x in store.subjects]]
        if missing:
            raise ConfigError(f"reconstruction config: subjects {missing} are not in the prepared store "
                              f"(it has {[int(x) for x in store.subjects]})")
        return [int(s) for s in cfg.subjects]
    if "neuropictor" in cfg.methods:
        return [_refined_subject(cfg)]
    return [int(store.subjects[0])]


def _caption_rows(cfg, ev, fm, store, subject, gt_ids, gt, scorer, log):
    table = pd.read_csv(require_stage("language", cfg.profile) / "captions_test.csv")
    table = table[table.subject == subject].set_index("image_id")
    keep = [i for i in gt_ids if int(i) in table.index]
    if not keep:
        log(f"  no NV2L captions for subject {subject} (not among the language stage's evaluation subjects)")
        return []
    rows = np.array([k for k, i in enumerate(gt_ids) if int(i) in table.index])
    refs = [list(store.annotations[int(i)]["captions"]) for i in keep]
    out = []
    for col, label in (("brain_llava", "NV2L captions"), ("nn_caption", "nearest-neighbour caption"),
                       ("shuffled_fmri", "NV2L captions" + SHUFFLED)):
        cands = [str(c) for c in table.loc[keep, col]]
        out.append(evaluate_captions(refs, cands, label, subject, "averaged", fm=fm, images=gt[rows], scorer=scorer,
                                     clip_s_weight=ev.clip_s_weight, clip_s_prefix=ev.clip_s_prefix))
    return out


def run_reconstruction_stage(cfg, force=False, fm=None, log=print):
    """Reconstruct and evaluate every method (see the module docstring); returns the stage folder.

    Parameters
    ----------
    cfg : ReconstructionConfig
    force : bool
        Rerun even if complete with the same config (and evaluation settings).
    fm : Foundation, optional
        Default ``load_foundation(cfg.profile, components=COMPONENTS)`` on the accelerator's device.
    log : callable
    """
    folder = paths.stage_dir(cfg.STAGE, cfg.profile)
    if not force and is_complete(cfg.STAGE, cfg.profile, cfg.digest()):
        return folder
    require_single_process(cfg.STAGE)
    bad = [m for m in cfg.methods if m not in METHOD_LABELS]
    if bad:
        raise ConfigError(f"reconstruction config: unknown method(s) {bad}; expected {', '.join(METHOD_LABELS)}")
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        _run(cfg, fm, log)
    finally:
        torch.set_num_threads(threads)
    return folder


def _run(cfg, fm, log):
    from ..data import open_store
    from ..data.stage import store_path

    store = open_store(store_path(cfg.profile))
    for m in cfg.methods:  # fail before any work if an input stage is missing (the error names its notebook)
        if _NEEDS[m]:
            require_stage(_NEEDS[m], cfg.profile)
        if m == "neuropictor_released":
            _released_folder(cfg)
    if fm is None:
        from ..foundation import load_foundation

        from ..training import make_accelerator

        fm = load_foundation(cfg.profile, device=stage_device(make_accelerator()), components=COMPONENTS)
    ev = cfg.evaluation()
    nets = load_metric_networks(ev, fm)
    variants = ["averaged"] + (["single-trial"] if cfg.single_trial else [])
    tables, sweeps, timings, prompts, concepts = [], [], {}, [], []
    scorer = None
    with StageWriter(cfg) as w:
        rec_dir = w.path / "reconstructions"
        try:
            subjects = _subjects(cfg, store)
            sweep_subject = subjects[0]
            for s in subjects:
                sub = store.subject(s)
                n = len(sub.test_image_ids) if cfg.n_eval <= 0 else min(cfg.n_eval, len(sub.test_image_ids))
                gt_ids = np.asarray(sub.test_image_ids)[:n]
                gt = store.get_images(gt_ids)
                gt_embeds = fm.image_embeds(gt, normalize=False).numpy()  # NV2L's target space (retrieval)
                perm = derangement(n, cfg.shuffle_seed)
                for key in cfg.methods:
                    if key == "neuropictor" and s != _refined_subject(cfg):
                        log(f"  subject {s}: no refined NeuroPictor (notebook 05 refines subject "
                            f"{_refined_subject(cfg)}); skipped")
                        continue
                    if key == "neuropictor_released" and _released_subject(cfg) not in (None, s):
                        log(f"  subject {s}: the released checkpoint is subject {_released_subject(cfg)}'s; skipped")
                        continue
                    # the last method's models go before this one's load: at full size two methods' trained
                    # parts at once (ControlNet + conditioner, or the brain LLaVA's LLM) held ~5 GB more
                    method = None
                    gc.collect()
                    method = _Method(key, cfg, fm, store, s, log)
                    for variant in variants:
                        ids, x = eval_inputs(sub, method.kind, variant, n)
                        t = time.time()
                        rec = to_uint8(method(x))  # scored exactly as saved (and 4x smaller than float)
                        timings[f"{key}_subj{s:02d}_{variant}"] = time.time() - t
                        tables.append(evaluate_reconstructions(
                            gt, rec, method.label, s, variant, nets, brain_embeds=method.brain_embeds,
                            image_embeds=gt_embeds, retrieval_size=ev.retrieval_size,
                            retrieval_draws=ev.retrieval_draws, retrieval_seed=ev.retrieval_seed))
                        save_reconstructions(rec_dir / f"{key}_subj{s:02d}_{variant}.npz", rec, ids, subject=s,
                                             method=method.label, variant=variant, brain_embeds=method.brain_embeds)
                        if getattr(method, "prompts", None) is not None:
                            prompts.append(pd.DataFrame(dict(subject=s, variant=variant, image_id=ids,
                                                             prompt=method.prompts)))
                        log(f"  subject {s} {method.label} {variant}: {n} images in {time.time() - t:.0f} s")
                        if variant == "averaged":
                            shuffled = to_uint8(method(x[perm]))
                            tables.append(evaluate_reconstructions(
                                gt, shuffled, method.label + SHUFFLED, s, variant, nets,
                                brain_embeds=method.brain_embeds, image_embeds=gt_embeds,
                                retrieval_size=ev.retrieval_size, retrieval_draws=ev.retrieval_draws,
                                retrieval_seed=ev.retrieval_seed))
                            save_reconstructions(rec_dir / f"{key}_shuffled_subj{s:02d}_{variant}.npz", shuffled,
                                                 ids, subject=s, method=method.label + SHUFFLED, variant=variant)
                    if key == "nv2l" and cfg.concept_images > 0:
                        t = time.time()
                        concepts.append(concept_check(cfg, method, fm, store, s, w, log))
                        timings[f"nv2l_concepts_subj{s:02d}"] = time.time() - t
                    if s == sweep_subject:  # sweeps of the final models on the first subject only
                        _sweep(cfg, method, sub, gt[:cfg.sweep_n], nets, s, sweeps, rec_dir, log)
                if cfg.captions and "nv2l" in cfg.methods:
                    if scorer is None:
                        from ..nv2l.captions import CaptionScorer

                        scorer = CaptionScorer(meteor=ev.caption_meteor, tokenizer=ev.caption_tokenizer)
                    tables.extend(_caption_rows(cfg, ev, fm, store, s, gt_ids, gt, scorer, log))
        finally:
            if scorer is not None:
                scorer.close()
        table = pd.concat(tables, ignore_index=True)
        table.to_csv(w.path / "results.csv", index=False)
        if prompts:
            pd.concat(prompts, ignore_index=True).to_csv(w.path / "nv2l_prompts.csv", index=False)
        if concepts:
            cc = pd.concat(concepts, ignore_index=True)
            cc.to_csv(w.path / "concept_reconstruction.csv", index=False)
            _concept_metrics(w, "all", cc)
        sweep_table = pd.DataFrame(sweeps, columns=["method", "subject", "parameter", "setting", "metric", "value"])
        sweep_table.to_csv(w.path / "sweeps.csv", index=False)
        write_metrics(w, table)
        for r in sweep_table.itertuples(index=False):
            if np.isfinite(r.value):
                w.add_metric(r.method, r.subject, f"sweep-{r.parameter}={r.setting:g}", r.metric, r.value)
        for k, v in timings.items():
            w.add_metric("timing", "all", "test", f"seconds_{k}", v)
        unavailable = dict(nets.unavailable)
        if scorer is not None:  # caption metrics that were not computed, and why (shown by notebook 07)
            from ..nv2l.captions import UNAVAILABLE

            unavailable.update({m: f"unavailable ({UNAVAILABLE[m]})" for m in ("SPICE", "METEOR")
                                if m == "SPICE" or not scorer.meteor})
        (w.path / "protocol.json").write_text(json.dumps(dict(
            protocol_settings(nets.antialias), networks=nets.sources(), unavailable=unavailable,
            foundation={k: str(v) for k, v in fm.names.items()}, evaluation=ev.to_dict(),
            sampling=dict(scheduler="ddim", steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                          seed=cfg.seed)), indent=1))


def _concept_metrics(w, subject, df):
    w.add_metric("nv2l_concepts", subject, "test", "n_cases", len(df))
    if len(df):
        w.add_metric("nv2l_concepts", subject, "test", "score_drop_located", float(df.drop_located.mean()))
        w.add_metric("nv2l_concepts", subject, "test", "score_drop_random", float(df.drop_random.mean()))
        w.add_metric("nv2l_concepts", subject, "test", "frac_located_gt_random",
                     float((df.drop_located > df.drop_random).mean()))


def concept_check(cfg, method, fm, store, subject, w=None, log=print):
    """NV2L's concept validation by ablation → reconstruction on one subject.

    The language stage's concept maps (``concept_maps.npz``: the concept the brain LLaVA's LM extracted from an
    instruction, located by Grad-CAM) of the subject's first ``concept_images`` test images; for each case the
    averaged test fMRI, the fMRI with the top ``concept_fraction`` (the language stage's) of the map's voxels set
    to their training mean, and with as many random voxels (``concept_random_draws`` draws) go through NV2L's
    reconstruction path (``method``: ViT3D → CLIP embedding + latent, the brain LLaVA's prompt → unCLIP, the same
    noise for every variant of a case); the concept's score is the CLIP similarity of the reconstruction to the
    concept's text (the language stage's ``concept_prompt``).

    Returns
    -------
    pandas.DataFrame
        Per case: subject, image_id, concept and :func:`neurorecon.nv2l.concepts.reconstruction_ablation`'s
        columns (also recorded as ``nv2l_concepts`` metrics of the subject when ``w`` is given).
    """
    from ..errors import DataError
    from ..nv2l.concepts import reconstruction_ablation
    from ..nv2l.encoder import test_voxels

    lang = require_stage("language", cfg.profile)
    path = lang / "concept_maps.npz"
    if not path.is_file():
        raise DataError(path, "the language stage's concept maps", "no such file: re-run notebook 06")
    lcfg = yaml.safe_load((lang / "config.yaml").read_text())
    z = np.load(path)
    sel = np.flatnonzero(z["subject"] == subject)
    x, ids = test_voxels(store, subject)
    first = set(int(i) for i in ids[:cfg.concept_images])
    sel = sel[[int(z["image_id"][k]) in first for k in sel]]
    if not len(sel):
        log(f"  subject {subject}: no concept maps (not among the language stage's evaluation subjects, or no "
            "concept extracted)")
        return pd.DataFrame(columns=["subject", "image_id", "concept", "score", "score_located", "score_random",
                                     "drop_located", "drop_random"])
    image_ids, concepts = z["image_id"][sel].astype(np.int64), [str(c) for c in z["concept"][sel]]
    maps = torch.from_numpy(z["maps"][sel].astype(np.float32))
    text = fm.text_embeds([lcfg["concept_prompt"].format(c) for c in concepts])

    def score(images, t):
        emb = fm.image_embeds(to_uint8(images))  # scored as saved; L2-normalised
        return (emb * torch.nn.functional.normalize(t.float(), dim=-1)).sum(-1).numpy()

    res = reconstruction_ablation(method, score, method.encoder, x[np.searchsorted(ids, image_ids)], maps, text,
                                  fraction=float(lcfg["concept_fraction"]), n_random=cfg.concept_random_draws,
                                  seed=cfg.seed + subject)
    res.insert(0, "concept", concepts)
    res.insert(0, "image_id", image_ids)
    res.insert(0, "subject", int(subject))
    if w is not None:
        _concept_metrics(w, subject, res)
    log(f"  subject {subject} NV2L concepts: {len(res)} cases, concept score drop located "
        f"{res.drop_located.mean():.4f} vs random {res.drop_random.mean():.4f}")
    return res


def sweep_settings(cfg, key):
    """(parameter, setting, keyword arguments of the method call) of every sweep of method ``key`` (NV2L's β sweep
    always includes the configured ``nv2l_beta``)."""
    out = []
    for param in SWEEPS.get(key, ()):
        values = list(getattr(cfg, _SWEEP_LISTS[param]))
        if param == "beta" and float(cfg.nv2l_beta) not in map(float, values):  # the β = 1 check compares with it
            values = sorted(values + [cfg.nv2l_beta])
        for value in values:
            if param == "sampler":
                name, _, steps = str(value).partition(":")
                if name not in ("ddim", "dpm++") or not steps.isdigit():
                    raise ConfigError(f"reconstruction config: samplers entry {value!r}; expected 'ddim:<steps>' "
                                      "or 'dpm++:<steps>'")
                out.append((f"{name} steps", float(steps), dict(scheduler=name, steps=int(steps))))
            else:
                out.append((param, float(value), {param: float(value)}))
    return out


def _sweep(cfg, method, sub, gt, nets, subject, rows, rec_dir, log):
    settings = sweep_settings(cfg, method.key)
    if len(gt) < 2 or not settings:
        return
    ids, x = eval_inputs(sub, method.kind, "averaged", len(gt))
    for param, value, kwargs in settings:
        t = time.time()
        rec = to_uint8(method(x, **kwargs))
        seconds = time.time() - t
        table = evaluate_reconstructions(gt, rec, method.label, subject, "averaged", nets)
        rows.extend(dict(method=method.label, subject=str(subject), parameter=param, setting=value, metric=r.metric,
                         value=r.value) for r in table.itertuples(index=False))
        rows.append(dict(method=method.label, subject=str(subject), parameter=param, setting=value,
                         metric="seconds", value=seconds))
        name = param.replace(" steps", "").replace("+", "p")
        save_reconstructions(rec_dir / "sweeps" / f"{method.key}_subj{subject:02d}_{name}{value:g}.npz", rec, ids,
                             subject=subject, method=method.label, variant=f"{param}={value:g}")
    log(f"  subject {subject} {method.label}: sweeps done")


def load_results(profile):
    """The complete reconstruction stage's tables: ``results``, ``sweeps`` (DataFrames) and ``protocol`` (dict)."""
    folder = require_stage(ReconstructionConfig.STAGE, profile)
    return dict(results=pd.read_csv(folder / "results.csv", dtype={"subject": str}, keep_default_na=True),
                sweeps=pd.read_csv(folder / "sweeps.csv", dtype={"subject": str}),
                protocol=json.loads((folder / "protocol.json").read_text()), folder=Path(folder))
