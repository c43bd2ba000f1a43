"""Stage ``language`` (notebook 06): instruction data, ViT3D, brain LLaVA (two stages), evaluation, concepts.

Artifacts (``$NEURORECON_HOME/artifacts/<profile>/language/``)::

    sft_data_tr.json, sft_data_te.json   LLaVA instruction data (training images / test images), each record with
                                         the store arrays and rows of its fMRI trials (nv2l/export.py)
    images/, export.json                 the records' images (LLaVA's --image_folder); where the fMRI arrays are
    vit3d/                               the ViT3D encoder (config.json, model.safetensors)
    brain_llava/                         encoder/, projector.safetensors, lm/ (LM + tokenizer), config.json
    encoder_test.csv                     retrieval and latent correlation per subject
    captions_test.csv                    per subject and test image: reference, brain, baseline, control captions
    long_answers_test.csv                the same for detailed descriptions and complex reasoning (long_answers.py)
    qa_test.csv                          per subject, method and question: truth, answer, correct
    vit3d_p<P>/                          extra ViT3Ds of the Grad-CAM ensemble (``concept_patch_sizes``)
    concept_ablation.csv                 per (subject, image, concept): instruction, the LLM's answer and extracted
                                         concept, evidence before/after ablation
    concept_maps.npz                     the concept maps of the first ``concept_map_images`` test images
    losses.json                          training curves
    metrics.csv, config.yaml, COMPLETE
"""

import copy
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch

from .. import paths
from ..artifacts import StageWriter, is_complete
from ..config import StageConfig
from ..devices import stage_device, torch_dtype
from ..distributed import num_processes
from ..errors import ConfigError
from ..training import checkpoint_root, lr_at, make_accelerator, remove_checkpoints, resolve_steps
from .baselines import fit_ridge, nearest_captions
from .captions import METRICS, UNAVAILABLE, CaptionScorer
from .concepts import (EXTRACTION_PROMPT, ablation_check, concept_instructions, concept_maps, extract_concepts,
                       map_specificity, union_truth)
from .encoder import (build_vit3d, compute_targets, evaluate_vit3d, image_means, test_voxels, train_vit3d,
                      training_trials)
from .evaluate import derangement, majority_chance, qa_accuracy, qa_items, run_qa
from .export import export_llava
from .instructions import (add_captions, annotated_categories, build_instruction_data, load_captioner, load_generator,
                           scene_objects)
from .llava import BrainLlava, llava_batches, train_llava_stage
from .long_answers import LONG_TYPES, evaluate_long_answers
from .tuning import LORA_TARGETS, trainable_summary

__all__ = ["LanguageConfig", "run_language_stage", "train_brain_llava", "checkpoint_dir", "load_lm",
           "caption_table", "qa_table", "long_answer_table", "save_concept_maps"]

METHODS = ("brain_llava", "nn_caption", "shuffled_fmri")
#: What the language stage uses of the foundation: CLIP ViT-L/14 (targets, concepts), SD's VAE (latent targets),
#: the LLM. Not the unCLIP model (notebook 07 samples with it).
COMPONENTS = ("sd", "clip_h", "clip_l", "lm")


#: What concept localisation locates: the concept the LLM ``extracted`` from the instruction (NV2L), or the
#: ``annotated`` one (maps and ablation of every case even when the LLM extracts nothing, e.g. random weights)
CONCEPT_SOURCES = ("extracted", "annotated")


@dataclasses.dataclass
class LanguageConfig(StageConfig):
    """Config of the language stage (``neurorecon/configs/language.yaml``)."""

    STAGE = "language"
    NOTEBOOK = "06_language_instruction_tuning"
    NOT_TRAINING = ("eval_subjects", "caption_instruction", "caption_tokens", "qa_tokens", "meteor",
                    "caption_tokenizer", "concept_prompt", "concept_cam", "concept_contrast",
                    "concept_extraction_prompt", "concept_extraction_tokens", "concept_fraction",
                    "concept_random_draws", "concept_map_images", "n_dialogues", "ckpt_every", "torch_threads",
                    "target_batch", "concept_source")

    seed: int = 0
    subjects: Optional[list[int]] = None
    eval_subjects: Optional[list[int]] = None
    dialogue_generator: str = "template"
    n_turns: int = 4
    n_conversations: int = 1
    captioner: Optional[str] = None
    captioner_batch: int = 32
    export_images: bool = True
    patch_size: int = 6
    width: int = 64
    depth: int = 3
    heads: int = 2
    mlp_ratio: float = 4.0
    head_hidden: int = 256
    dropout: float = 0.0
    alpha: float = 0.25
    mixup: bool = True
    enc_epochs: float = 4.5
    enc_steps: Optional[int] = None
    enc_batch: int = 32
    enc_lr: float = 0.001
    enc_weight_decay: float = 0.05
    target_batch: int = 64
    lm_path: Optional[str] = None
    lm_copy: bool = True
    feature_layer: int = -2
    projector: str = "mlp2x_gelu"
    projector_tokens: int = 8
    llava_fmri: str = "trial"
    max_text_tokens: int = 192
    stage1_types: list[str] = dataclasses.field(default_factory=lambda: ["brief", "reconstruction"])
    stage1_epochs: float = 1.0
    stage1_steps: Optional[int] = None
    stage1_batch: int = 32
    stage1_lr: float = 1e-3
    stage2_types: list[str] = dataclasses.field(default_factory=lambda: [
        "brief", "detailed", "conversation", "reasoning", "reconstruction", "concept"])
    stage2_epochs: float = 1.0
    stage2_steps: Optional[int] = None
    stage2_batch: int = 16
    stage2_lr: float = 1e-3
    lr_schedule: str = "constant"
    warmup_ratio: float = 0.0
    group_by_length: bool = True
    lora_r: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: list[str] = dataclasses.field(default_factory=lambda: list(LORA_TARGETS))
    gradient_checkpointing: bool = False
    caption_instruction: str = "Describe the image concisely."
    caption_tokens: int = 32
    long_answer_types: list[str] = dataclasses.field(default_factory=lambda: list(LONG_TYPES))
    long_answer_tokens: int = 96
    long_answer_images: Optional[int] = None
    qa_tokens: int = 16
    meteor: bool = True
    caption_tokenizer: str = "ptb"
    concept_prompt: str = "a {}"
    concept_patch_sizes: list[int] = dataclasses.field(default_factory=list)
    concept_cam: str = "gradcam"
    concept_source: str = "extracted"
    concept_contrast: bool = True
    concept_extraction_prompt: str = EXTRACTION_PROMPT
    concept_extraction_tokens: int = 8
    concept_fraction: float = 0.1
    concept_random_draws: int = 5
    concept_map_images: Optional[int] = 32
    n_dialogues: int = 4
    ckpt_every: int = 0
    grad_accum: int = 1
    mixed_precision: str = "no"
    torch_threads: Optional[int] = None


def checkpoint_dir(cfg, name=None):
    """Where training of one model of this config checkpoints (a killed run resumes from there):
    ``artifacts/<profile>/language.ckpt/<key>/<name>``, keyed by the fields that change training and the
    upstream stages' markers (:func:`neurorecon.training.checkpoint_root`)."""
    root = checkpoint_root(cfg, ("data", "foundation"))
    return root / name if name else root


def _steps(cfg, n, epochs, steps, batch, name):
    """Optimizer steps (``steps`` if set, else ``epochs`` over ``n`` samples for this launch's processes and
    ``grad_accum``) and what the metrics record of them."""
    return resolve_steps(steps, epochs, n, batch, num_processes(), cfg.grad_accum, name)


def load_lm(cfg, fm):
    """The causal LM to fine-tune and its tokenizer: from ``lm_path``, else a copy of the foundation's (or, with
    ``lm_copy: false``, the foundation's own, which then gets trained in place: saves memory for large LMs)."""
    if cfg.lm_path:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(cfg.lm_path).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(f"lm_path {path}: expected a transformers causal-LM folder with config.json")
        dtype = torch_dtype(fm.extras.get("dtype") or "float32")  # frozen weights in the foundation's dtype
        return (AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype),
                AutoTokenizer.from_pretrained(str(path)))
    if fm.lm is None or fm.lm_tokenizer is None:
        raise ConfigError("the foundation has no language model (load it with with_lm=True) and lm_path is null")
    lm, tok = (fm.lm, fm.lm_tokenizer) if not cfg.lm_copy else (copy.deepcopy(fm.lm), copy.deepcopy(fm.lm_tokenizer))
    if not cfg.lora_r:  # every weight is trained: trainable parts in float32 (AdamW on fp16 weights diverges)
        lm = lm.float()
    return lm, tok


def _check_cfg(cfg):
    from .instructions import RECORD_TYPES

    for key in ("stage1_types", "stage2_types", "long_answer_types"):
        bad = [t for t in getattr(cfg, key) if t not in RECORD_TYPES]
        if bad:
            raise ConfigError(f"language config: {key} has unknown type(s) {bad}; expected {list(RECORD_TYPES)}")
    from .concepts import CAM_METHODS

    if cfg.concept_cam not in CAM_METHODS:
        raise ConfigError(f"language config: concept_cam {cfg.concept_cam!r}: expected one of {list(CAM_METHODS)}")
    if cfg.concept_source not in CONCEPT_SOURCES:
        raise ConfigError(f"language config: concept_source {cfg.concept_source!r}: expected one of "
                          f"{list(CONCEPT_SOURCES)}")
    if "{}" not in cfg.concept_extraction_prompt:
        raise ConfigError("language config: concept_extraction_prompt needs a {} for the user's instruction")
    from .llava import PROJECTORS
    from .tuning import FMRI_SAMPLES

    if cfg.projector not in PROJECTORS:
        raise ConfigError(f"language config: projector {cfg.projector!r}: expected one of {list(PROJECTORS)}")
    if cfg.llava_fmri not in FMRI_SAMPLES:
        raise ConfigError(f"language config: llava_fmri {cfg.llava_fmri!r}: expected one of {list(FMRI_SAMPLES)}")
    if cfg.caption_tokenizer not in ("ptb", "simple"):
        raise ConfigError(f"language config: caption_tokenizer {cfg.caption_tokenizer!r}: expected ptb or simple")
    lr_at(1.0, 1, cfg.lr_schedule, cfg.warmup_ratio)  # (raises a ConfigError naming a bad schedule or ratio)


def caption_table(frame):
    """Caption metrics as a (method × metric) table averaged over subjects (from ``metrics.csv`` rows)."""
    rows = frame[(frame.subject == "mean") & frame.metric.isin(METRICS)]
    return rows.pivot_table(index="method", columns="metric", values="value", dropna=False)[list(METRICS)]


def long_answer_table(frame, metric="CIDEr"):
    """One caption metric of the detailed and reasoning answers as a (method × type) table over subjects."""
    names = {f"{t}_{metric}": t for t in LONG_TYPES}
    rows = frame[(frame.subject == "mean") & frame.metric.isin(list(names))]
    t = rows.pivot_table(index="method", columns="metric", values="value", dropna=False)
    return t.rename(columns=names)


def qa_table(frame):
    """QA accuracy as a (method × question type) table averaged over subjects."""
    rows = frame[(frame.subject == "mean") & frame.metric.str.startswith("qa_")]
    t = rows.pivot_table(index="method", columns="metric", values="value")
    t.columns = [c[3:] for c in t.columns]
    return t


def _evaluate_captions(w, cfg, llava, store, subjects, ridge, bank, scorer, log):
    rows, scores = [], {m: [] for m in METHODS}
    for s in subjects:
        x, ids = test_voxels(store, s)
        refs = [store.annotations[int(i)]["captions"] for i in ids]
        shuffled = x[derangement(len(x), cfg.seed + s)]
        caps = {"brain_llava": llava.generate(x, cfg.caption_instruction, max_new_tokens=cfg.caption_tokens),
                "shuffled_fmri": llava.generate(shuffled, cfg.caption_instruction, max_new_tokens=cfg.caption_tokens),
                "nn_caption": nearest_captions(ridge.predict(x), bank[0], bank[1])}
        for m in METHODS:
            sc = scorer.score(refs, caps[m])
            scores[m].append(sc)
            for k, v in sc.items():
                w.add_metric(m, s, "test", k, v)
        for k, i in enumerate(ids):
            rows.append(dict(subject=int(s), image_id=int(i), reference=refs[k][0],
                             **{m: caps[m][k] for m in METHODS}))
        log(f"subj{s:02d}: CIDEr brain {scores['brain_llava'][-1]['CIDEr']:.3f}, nn "
            f"{scores['nn_caption'][-1]['CIDEr']:.3f}, shuffled {scores['shuffled_fmri'][-1]['CIDEr']:.3f}")
    for m in METHODS:
        for k in METRICS:
            w.add_metric(m, "mean", "test", k, float(np.mean([sc[k] for sc in scores[m]])))
    return pd.DataFrame(rows)


def _evaluate_qa(w, cfg, llava, store, subjects, train_ids, voxels_of=test_voxels):
    """QA accuracy per subject and type, real vs shuffled fMRI (``voxels_of(store, subject)``: the test inputs
    and their image ids) and the majority chance, into ``w``; returns the answers."""
    size = store.meta["image_size"]
    train_items = qa_items(store.annotations, train_ids, size, cfg.seed)
    frames, acc = [], {"brain_llava": [], "shuffled_fmri": [], "chance": []}
    for s in subjects:
        x, ids = voxels_of(store, s)
        items = qa_items(store.annotations, ids, size, cfg.seed)
        if items.empty:
            continue
        runs = {"brain_llava": run_qa(llava, x, ids, items, cfg.qa_tokens),
                "shuffled_fmri": run_qa(llava, x[derangement(len(x), cfg.seed + s)], ids, items, cfg.qa_tokens)}
        per = {m: qa_accuracy(r) for m, r in runs.items()}
        per["chance"] = majority_chance(train_items, items)
        for m, a in per.items():
            acc[m].append(a)
            for t, v in a.items():
                w.add_metric(m, s, "test", f"qa_{t}", v)
        for m, r in runs.items():
            frames.append(r.assign(subject=int(s), method=m))
    for m, lst in acc.items():
        for t in sorted({t for a in lst for t in a}):
            w.add_metric(m, "mean", "test", f"qa_{t}", float(np.mean([a[t] for a in lst if t in a])))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _concept_cases(store, subject, seed):
    """(image ids, true concepts, instructions) of a subject's test images: one case per category present."""
    size = store.meta["image_size"]
    _, ids = test_voxels(store, subject)
    rows, cases = [], []
    for k, i in enumerate(ids):
        for c in sorted({o["category"] for o in scene_objects(store.annotations[int(i)], size)}):
            rows.append(k)
            cases.append((int(i), c))
    instr = concept_instructions([c for _, c in cases], seed)
    return np.asarray(rows, dtype=np.int64), cases, instr


def _train_concept_encoders(cfg, store, targets, train_rows, trials, acc, progress, log):
    """The extra ViT3Ds of the Grad-CAM ensemble (``concept_patch_sizes``), trained as the main one."""
    out = {}
    for P in [int(p) for p in cfg.concept_patch_sizes if int(p) != int(cfg.patch_size)]:
        t = time.time()
        model = build_vit3d(store, targets, train_rows, trials, P, cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio,
                            cfg.head_hidden, cfg.dropout, cfg.seed + P)
        steps, _ = _steps(cfg, len(trials), cfg.enc_epochs, cfg.enc_steps, cfg.enc_batch, "enc_steps")
        model = train_vit3d(model, trials, targets, steps=steps, batch_size=cfg.enc_batch, lr=cfg.enc_lr,
                            alpha=cfg.alpha, mixup=cfg.mixup, weight_decay=cfg.enc_weight_decay, seed=cfg.seed + P,
                            ckpt_dir=checkpoint_dir(cfg, f"vit3d_p{P}"), ckpt_every=cfg.ckpt_every,
                            mixed_precision=cfg.mixed_precision, progress=progress, grad_accum=cfg.grad_accum,
                            accelerator=acc).model  # (under FSDP an unsharded copy)
        out[P] = (model.eval().requires_grad_(False), time.time() - t)
        log(f"ViT3D (patch {P}, concept ensemble): {steps} steps in {out[P][1]:.0f} s")
    return out


def _evaluate_concepts(w, cfg, fm, encoders, llava, store, subjects, log=print):
    """Concept localisation (``concepts.py``): LLM extraction from varied instructions, Grad-CAM maps (ensemble),
    the evidence ablation check and the maps' specificity against the simulator's category tuning."""
    cats = annotated_categories(store.annotations)
    text = fm.text_embeds([cfg.concept_prompt.format(c) for c in cats]).float().cpu()
    contrast = text if cfg.concept_contrast else None
    frames, saved, spec = [], {}, []
    n_cases = n_ok = n_none = 0
    for s in subjects:
        x, ids = test_voxels(store, s)
        rows, cases, instr = _concept_cases(store, s, cfg.seed + s)
        if not cases:
            continue
        answers, got = extract_concepts(llava.lm, llava.tokenizer, instr, cats, cfg.concept_extraction_prompt,
                                        cfg.concept_extraction_tokens)
        truth = [c for _, c in cases]
        ok = np.array([g == c for g, c in zip(got, truth)])
        none = np.array([g is None for g in got])
        n_cases, n_ok, n_none = n_cases + len(cases), n_ok + int(ok.sum()), n_none + int(none.sum())
        w.add_metric("concept_extraction", s, "test", "accuracy", float(ok.mean()))
        w.add_metric("concept_extraction", s, "test", "frac_unextracted", float(none.mean()))
        df = pd.DataFrame(dict(subject=int(s), image_id=[i for i, _ in cases], concept=truth, instruction=instr,
                               answer=answers, extracted=[g or "" for g in got], extracted_correct=ok,
                               **{c: np.nan for c in ("evidence", "evidence_located", "evidence_random",
                                                      "drop_located", "drop_random")}))
        if cfg.concept_source == "annotated":  # locate the annotated concept (extraction is still scored above)
            got, none = truth, np.zeros(len(truth), dtype=bool)
        keep = np.flatnonzero(~none)  # an unextracted concept is not located (counted above)
        if len(keep):
            xs = torch.from_numpy(x[rows[keep]])
            ts = text[[cats.index(got[k]) for k in keep]]
            maps = concept_maps(encoders, xs, ts, cfg.concept_cam, contrast)
            res = ablation_check(encoders[0], xs, ts, cfg.concept_fraction, cfg.concept_random_draws, cfg.seed + s,
                                 maps=maps, contrast=contrast)
            for col in res.columns:
                df.loc[keep, col] = res[col].to_numpy()
            w.add_metric("gradcam", s, "test", "evidence_drop_located", float(res.drop_located.mean()))
            w.add_metric("gradcam", s, "test", "evidence_drop_random", float(res.drop_random.mean()))
            w.add_metric("gradcam", s, "test", "frac_located_gt_random",
                         float((res.drop_located > res.drop_random).mean()))
            gt = union_truth(store, s, cats) or {}
            sp = map_specificity(maps.numpy(), df.image_id.to_numpy()[keep], [got[k] for k in keep], cats, **gt)
            for k, v in sp.items():
                w.add_metric("gradcam", s, "test", k, v)
            spec.append(sp)
            limit = cfg.concept_map_images
            first = set(int(i) for i in ids[:limit]) if limit is not None else None
            pick = [j for j, k in enumerate(keep) if first is None or cases[k][0] in first]
            saved[s] = (keep[pick], maps[pick].numpy().astype(np.float16))
        frames.append(df)
    if not frames:
        raise ValueError("concept localisation: no test image of the evaluation subjects has an object")
    out = pd.concat(frames, ignore_index=True)
    w.add_metric("concept_extraction", "all", "test", "accuracy", n_ok / max(n_cases, 1))
    w.add_metric("concept_extraction", "all", "test", "n_unextracted", n_none)
    w.add_metric("concept_extraction", "all", "test", "n_cases", n_cases)
    located = out.dropna(subset=["drop_located"])
    w.add_metric("gradcam", "all", "test", "n_cases", len(located))
    w.add_metric("gradcam", "all", "test", "annotated_concepts", float(cfg.concept_source == "annotated"))
    if len(located):
        w.add_metric("gradcam", "all", "test", "evidence_drop_located", float(located.drop_located.mean()))
        w.add_metric("gradcam", "all", "test", "evidence_drop_random", float(located.drop_random.mean()))
        w.add_metric("gradcam", "all", "test", "frac_located_gt_random",
                     float((located.drop_located > located.drop_random).mean()))
    for k in sorted({k for sp in spec for k in sp}):
        vals = [sp[k] for sp in spec if k in sp and np.isfinite(sp[k])]
        if vals:
            w.add_metric("gradcam", "mean", "test", k, float(np.mean(vals)))
    means = {k: [sp[k] for sp in spec if np.isfinite(sp.get(k, np.nan))]
             for k in ("map_corr_same_image", "tuning_corr_own", "tuning_corr_other", "map_high_ratio")}
    log(f"concepts: extraction accuracy {n_ok / max(n_cases, 1):.3f} ({n_none} of {n_cases} unextracted); "
        + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in means.items() if v))
    return out, saved


def save_concept_maps(path, cases, saved):
    """``concept_maps.npz``: per saved case its row in ``concept_ablation.csv``, subject, image id, extracted
    concept and voxel map (float16) (notebook 07's reconstruction check reads it)."""
    rows, maps = [], []
    for s, (keep, m) in saved.items():
        sub = np.flatnonzero(cases.subject.to_numpy() == s)
        rows.append(sub[keep])
        maps.append(m)
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    np.savez(path, row=rows, subject=cases.subject.to_numpy()[rows], image_id=cases.image_id.to_numpy()[rows],
             concept=cases.extracted.to_numpy()[rows].astype(str),
             maps=np.concatenate(maps) if maps else np.zeros((0, 0), np.float16))
    return path


def run_language_stage(cfg, force=False, fm=None, progress=True, log=print):
    """Run the language stage for a config and return its artifacts folder.

    A stage already complete with the same config is reused unless ``force``.

    Parameters
    ----------
    cfg : LanguageConfig
    force : bool
    fm : Foundation, optional
        Default ``load_foundation(cfg.profile)`` (tests pass a tiny one).
    progress : bool
        tqdm bars during training.
    log : callable
        Progress messages.
    """
    folder = paths.stage_dir(cfg.STAGE, cfg.profile)
    if not force and is_complete(cfg.STAGE, cfg.profile, cfg.digest()):
        return folder
    _check_cfg(cfg)
    threads = torch.get_num_threads()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    acc = make_accelerator(cfg.mixed_precision)
    try:
        _run(cfg, fm, progress, log if acc.is_main_process else (lambda *_: None), acc)
    finally:
        torch.set_num_threads(threads)
    if not acc.is_main_process:  # the other ranks only helped training; the main process evaluates and writes
        shutil.rmtree(_rank_scratch(cfg, acc), ignore_errors=True)
        return None
    remove_checkpoints(checkpoint_dir(cfg))
    return folder


def _rank_scratch(cfg, acc):
    """Where a non-main process's (discarded) stage writer goes."""
    return paths.artifacts_dir(cfg.profile) / f".{cfg.STAGE}.rank{acc.process_index}"


def _run(cfg, fm, progress, log, acc):
    from ..data import open_store
    from ..data.stage import store_path

    store = open_store(store_path(cfg.profile))
    if fm is None:
        from ..foundation import load_foundation

        # on the device every process trains on; raises naming notebook 02 if the foundation stage is missing
        fm = load_foundation(cfg.profile, device=stage_device(acc), components=COMPONENTS)
    subjects = list(cfg.subjects or store.subjects)
    eval_subjects = list(cfg.eval_subjects or subjects)
    size = store.meta["image_size"]
    timings, losses = {}, {}
    main = acc.is_main_process
    with StageWriter(cfg, None if main else _rank_scratch(cfg, acc)) as w:
        t = time.time()
        trials = training_trials(store, subjects)
        train_ids = np.unique(trials.image_ids)
        test_ids = np.unique(np.concatenate([store.subject(s).test_image_ids for s in eval_subjects]))
        gen = load_generator(cfg.dialogue_generator, cfg.n_turns)
        annotations = store.annotations
        captioner = load_captioner(cfg.captioner)
        if captioner is not None:  # instruction data only: evaluation keeps the store's (human) references
            annotations = add_captions(annotations, np.union1d(train_ids, test_ids), store.get_images, captioner,
                                       cfg.captioner_batch)
        tr = build_instruction_data(annotations, train_ids, size, gen, cfg.seed, n_conversations=cfg.n_conversations)
        te = build_instruction_data(annotations, test_ids, size, gen, cfg.seed, n_conversations=cfg.n_conversations)
        if main:
            export_llava(tr, store, w.path, "train", subjects, cfg.export_images)
            export_llava(te, store, w.path, "test", eval_subjects, cfg.export_images)
        for kind, n in pd.Series([r["type"] for r in tr]).value_counts().items():
            w.add_metric("instructions", "all", "train", f"n_{kind}", n)
        w.add_metric("instructions", "all", "test", "n_records", len(te))
        timings["instructions"] = time.time() - t

        t = time.time()
        targets = compute_targets(fm, store, store.image_ids, cfg.target_batch, acc)  # each rank its share
        train_rows = np.searchsorted(targets["ids"], train_ids)
        encoder = build_vit3d(store, targets, train_rows, trials, cfg.patch_size, cfg.width, cfg.depth, cfg.heads,
                              cfg.mlp_ratio, cfg.head_hidden, cfg.dropout, cfg.seed)
        steps, record = _steps(cfg, len(trials), cfg.enc_epochs, cfg.enc_steps, cfg.enc_batch, "enc_steps")
        res = train_vit3d(encoder, trials, targets, steps=steps, batch_size=cfg.enc_batch, lr=cfg.enc_lr,
                          alpha=cfg.alpha, mixup=cfg.mixup, weight_decay=cfg.enc_weight_decay, seed=cfg.seed,
                          ckpt_dir=checkpoint_dir(cfg, "vit3d"), ckpt_every=cfg.ckpt_every,
                          mixed_precision=cfg.mixed_precision, progress=progress, grad_accum=cfg.grad_accum,
                          accelerator=acc)
        losses["ViT3D"] = res.losses
        encoder = res.model.eval().requires_grad_(False)  # (under FSDP an unsharded copy)
        ensemble = _train_concept_encoders(cfg, store, targets, train_rows, trials, acc, progress, log)
        if main:
            encoder.save_pretrained(w.path / "vit3d")
            enc = evaluate_vit3d(encoder, store, eval_subjects, targets)
            enc.to_csv(w.path / "encoder_test.csv", index=False)
            for _, r in enc.iterrows():
                for k in ("top1_brain2image", "top1_image2brain", "chance", "clip_cosine", "latent_r"):
                    w.add_metric("vit3d", int(r.subject), "test", k, r[k])
            for k, v in dict(record, resumed_from=res.resumed_from).items():
                w.add_metric("vit3d", "all", "train", k, v)
            w.add_metric("vit3d", "all", "train", "n_patches", encoder.grid.n_patches)
            for P, (model, seconds) in ensemble.items():
                model.save_pretrained(w.path / f"vit3d_p{P}")
                w.add_metric(f"vit3d_p{P}", "all", "train", "n_patches", model.grid.n_patches)
                timings[f"concept_encoder_p{P}"] = seconds
            timings["encoder"] = time.time() - t
            log(f"ViT3D: {steps} steps in {timings['encoder']:.0f} s; mean top-1 {enc.top1_brain2image.mean():.3f} "
                f"(chance {enc.chance.mean():.3f}), latent r {enc.latent_r.mean():.3f}")

        llava = train_brain_llava(cfg, encoder, fm, tr, trials, acc, w, losses, timings, progress, log)
        encoder = llava.encoder  # the one in the trained LLaVA (under FSDP a copy)
        if not main:
            return
        llava.eval()
        llava.save_pretrained(w.path / "brain_llava")
        (w.path / "losses.json").write_text(json.dumps(losses))

        t = time.time()
        pooled_x, pooled_ids = _image_means(trials)
        ridge = fit_ridge(pooled_x, targets["clip"][np.searchsorted(targets["ids"], pooled_ids)], groups=pooled_ids,
                          seed=cfg.seed)
        bank = (targets["clip"][train_rows], [store.annotations[int(i)]["captions"][0] for i in train_ids])
        with CaptionScorer(cfg.meteor, cfg.caption_tokenizer) as scorer:
            caps = _evaluate_captions(w, cfg, llava, store, eval_subjects, ridge, bank, scorer, log)
            t_long = time.time()
            long = evaluate_long_answers(
                w, llava, lambda s: test_voxels(store, s), te, tr, ridge,
                lambda ids: targets["clip"][np.searchsorted(targets["ids"], ids)], scorer, subjects=eval_subjects,
                seed=cfg.seed, max_new_tokens=cfg.long_answer_tokens, types=cfg.long_answer_types,
                max_images=cfg.long_answer_images)
            timings["long_answers"] = time.time() - t_long
        caps.to_csv(w.path / "captions_test.csv", index=False)
        long.to_csv(w.path / "long_answers_test.csv", index=False)
        qa = _evaluate_qa(w, cfg, llava, store, eval_subjects, train_ids)
        qa.to_csv(w.path / "qa_test.csv", index=False)
        timings["evaluation"] = time.time() - t

        t = time.time()
        encoders = [encoder] + [m for m, _ in ensemble.values()]
        cases, saved = _evaluate_concepts(w, cfg, fm, encoders, llava, store, eval_subjects, log)
        cases.to_csv(w.path / "concept_ablation.csv", index=False)
        save_concept_maps(w.path / "concept_maps.npz", cases, saved)
        timings["concepts"] = time.time() - t
        notes = {"unavailable": {"SPICE": UNAVAILABLE["SPICE"],
                                 **({} if cfg.meteor else {"METEOR": UNAVAILABLE["METEOR"]})}}
        if not cases.drop_located.notna().any():  # recorded, and notebook 06 says so instead of checking maps
            notes["concepts"] = (f"the LM extracted no concept from any of the {len(cases)} instructions: no concept "
                                 "maps and no ablation (concept_extraction accuracy 0 in metrics.csv)")
            log(f"concepts: {notes['concepts']}")
        (w.path / "notes.json").write_text(json.dumps(notes, indent=1))
        for k, v in timings.items():
            w.add_metric("timing", "all", "all", f"seconds_{k}", v)


def train_brain_llava(cfg, encoder, fm, records, trials, acc, w, losses, timings, progress=True, log=print,
                      ckpt=True):
    """The brain LLaVA of ``cfg`` over ``encoder`` (frozen), trained in the config's two stages on ``records``
    (the instruction data) with the fMRI of ``trials``; its metrics go to ``w`` (a :class:`StageWriter`, or
    anything with its ``add_metric``), loss curves and seconds into the dicts ``losses`` and ``timings``.

    ``encoder`` is anything with the ViT3D's ``features(voxels, layer)``, ``n_tokens`` and ``width`` (the
    oracle of ``benchmarks/oracle_language.py`` stands in for it); ``ckpt=False`` trains without checkpoints.
    Returns the trained LLaVA (under FSDP an unsharded copy, as every rank goes on)."""
    t = time.time()
    lm, tok = load_lm(cfg, fm)
    torch.manual_seed(cfg.seed + 1)
    llava = BrainLlava(encoder, lm, tok, cfg.feature_layer, cfg.projector, cfg.projector_tokens)
    max_pos = getattr(lm.config, "max_position_embeddings", None) or 10 ** 6
    max_len = max(16, min(cfg.max_text_tokens, max_pos - encoder.n_tokens))
    vox = torch.from_numpy(trials.voxels)
    for stage, types, epochs, st, batch, lr in (
            (1, cfg.stage1_types, cfg.stage1_epochs, cfg.stage1_steps, cfg.stage1_batch, cfg.stage1_lr),
            (2, cfg.stage2_types, cfg.stage2_epochs, cfg.stage2_steps, cfg.stage2_batch, cfg.stage2_lr)):
        chosen = [r for r in records if r["type"] in types]
        data = llava_batches(chosen, tok, trials.trials_of, max_len, cfg.group_by_length)
        steps, record = _steps(cfg, len(chosen), epochs, st, batch, f"stage{stage}_steps")
        res = train_llava_stage(llava, data, vox, stage, steps=steps, batch_size=batch, lr=lr, seed=cfg.seed,
                                fmri=cfg.llava_fmri, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                lora_dropout=cfg.lora_dropout,
                                lora_targets=cfg.lora_targets, gradient_checkpointing=cfg.gradient_checkpointing,
                                grad_accum=cfg.grad_accum,
                                ckpt_dir=checkpoint_dir(cfg, f"llava{stage}") if ckpt else None,
                                ckpt_every=cfg.ckpt_every, mixed_precision=cfg.mixed_precision,
                                lr_schedule=cfg.lr_schedule, warmup_ratio=cfg.warmup_ratio,
                                progress=progress, accelerator=acc)
        llava = res.model  # (under FSDP an unsharded copy of the sharded model, as every rank goes on)
        params = trainable_summary(llava)
        w.add_metric("brain_llava", "all", "train", f"stage{stage}_trainable_params", params["trainable"])
        w.add_metric("brain_llava", "all", "train", f"stage{stage}_frozen_params", params["frozen"])
        losses[f"LLaVA stage {stage}"] = res.losses
        for k, v in dict(record, resumed_from=res.resumed_from).items():
            w.add_metric("brain_llava", "all", "train", f"stage{stage}_{k}", v)
        # a logged loss is one batch's, and batches grouped by length differ in kind (short captions, long
        # dialogues): report means over the first and last tenth of the logged steps
        tenth = max(1, len(res.losses) // 10)
        first, last = (float(np.mean([v for _, v in part])) for part in (res.losses[:tenth], res.losses[-tenth:]))
        w.add_metric("brain_llava", "all", "train", f"stage{stage}_final_loss", last)
        timings[f"llava_stage{stage}"] = time.time() - t
        log(f"LLaVA stage {stage}: {len(chosen)} records, {steps} steps in {timings[f'llava_stage{stage}']:.0f} s, "
            f"loss {first:.3f} -> {last:.3f} (means of the first and last tenth of the logged steps)")
        t = time.time()
    return llava


def _image_means(trials):
    """Training fMRI averaged over repetitions per (subject, image): (rows, image ids)."""
    means, uniq = image_means(trials.voxels, trials.subjects * (10 ** 9) + trials.image_ids)
    return means, uniq % (10 ** 9)
