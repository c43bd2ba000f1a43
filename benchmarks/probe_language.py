"""What the brain LLaVA could read: ridge probes of the language stage's inputs (demo profile).

For each evaluation subject's test images (fMRI averaged over repetitions) this fits ridge regressions, on the
training images' mean fMRI of every training subject, from

- the voxels themselves,
- the ViT3D's tokens after each block (flattened; ``feature_layer`` of the config is what the projector reads),
- the ViT3D's predicted CLIP embedding and VAE latent,

to the colour and the shape of the object at each of NSD-mini's five positions (one-hot, "none" included) and to
the number of objects, and scores them on the questions the stage's QA evaluation asks (:func:`qa_items`: the
colour / shape of one object named by its position, the count). The brain LLaVA's own accuracy on the same
questions is in the stage's ``metrics.csv`` (``qa_*``); a probe far above it means the information reaches the
projector and the LLaVA does not read it.

Usage (after notebook 06, or with ``--vit3d`` pointing at any saved ViT3D folder)::

    NEURORECON_HOME=... python benchmarks/probe_language.py [--profile demo] [--subjects 1,2] [--vit3d DIR]
"""

import argparse

import numpy as np
import torch

from neurorecon.artifacts import require_stage
from neurorecon.config import load_config
from neurorecon.data import open_store
from neurorecon.data.stage import store_path
from neurorecon.nv2l.baselines import fit_ridge
from neurorecon.nv2l.encoder import test_voxels, training_trials
from neurorecon.nv2l.evaluate import parse_counts, qa_items
from neurorecon.nv2l.instructions import WHERE, scene_objects
from neurorecon.nv2l.stage import LanguageConfig, _image_means
from neurorecon.nv2l.vit3d import ViT3D
from neurorecon.simulate.scenes import COLORS, POSITIONS, SHAPES

__all__ = ["attribute_labels", "probe_accuracy", "run"]

_POSITION_OF = {phrase: pos for pos, phrase in WHERE.items()}


def attribute_labels(annotations, image_ids, image_size):
    """Per image: colour and shape class at each position (last class = no object there) and object count."""
    colors, shapes = list(COLORS), sorted(set(SHAPES))
    col = np.full((len(image_ids), len(POSITIONS)), len(colors), dtype=np.int64)
    shp = np.full((len(image_ids), len(POSITIONS)), len(shapes), dtype=np.int64)
    count = np.zeros(len(image_ids), dtype=np.int64)
    for k, i in enumerate(image_ids):
        objs = scene_objects(annotations[int(i)], image_size)
        count[k] = len(objs)
        for o in objs:
            p = POSITIONS.index(o["position"])
            col[k, p], shp[k, p] = colors.index(o["color"]), shapes.index(o["shape"])
    return {"color": (col, colors), "shape": (shp, shapes), "count": (count, None)}


def probe_accuracy(x_train, labels_train, x_test, test_ids, items, groups):
    """Ridge probes fitted on ``x_train`` and scored on the QA ``items`` of the test images (a dict per type)."""
    row = {int(i): k for k, i in enumerate(test_ids)}
    out = {}
    for qtype, (lab, names) in labels_train.items():
        it = items[items.type == qtype]
        if it.empty:
            continue
        if qtype == "count":
            n_cls = int(lab.max()) + 1
            pred = fit_ridge(x_train, np.eye(n_cls)[lab], groups=groups).predict(x_test).argmax(1)
            out[qtype] = float(np.mean([{int(pred[row[int(i)]])} == parse_counts(str(t))
                                        for i, t in zip(it.image_id, it.truth)]))
            continue
        n_cls = len(names) + 1
        y = np.concatenate([np.eye(n_cls)[lab[:, p]] for p in range(len(POSITIONS))], 1)
        scores = fit_ridge(x_train, y, groups=groups).predict(x_test).reshape(len(x_test), len(POSITIONS), n_cls)
        scores[:, :, -1] = -np.inf  # the asked object exists
        ok = []
        for i, q, t in zip(it.image_id, it.question, it.truth):
            pos = next(p for phrase, p in _POSITION_OF.items() if phrase in q)
            ok.append(names[int(scores[row[int(i)], POSITIONS.index(pos)].argmax())] == t)
        out[qtype] = float(np.mean(ok))
    return out


def _features(encoder, kind, x):
    if kind == "voxels":
        return np.asarray(x, dtype=np.float32)
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
    with torch.no_grad():
        if kind == "predicted":
            out = encoder.predict(xt)
            return np.concatenate([out["clip"].reshape(len(x), -1).numpy(),
                                   out["latent"].reshape(len(x), -1).numpy()], 1)
        return encoder.features(xt, int(kind.split()[-1])).flatten(1).numpy()


def run(profile="demo", subjects=None, vit3d=None, log=print):
    """Probe accuracies per input (rows) and question type, averaged over the evaluation subjects."""
    cfg = load_config(LanguageConfig, profile)
    store = open_store(store_path(profile))
    folder = vit3d or require_stage(cfg.STAGE, profile) / "vit3d"  # names notebook 06 if it has not run
    encoder = ViT3D.from_pretrained(folder).eval()
    train_subjects = list(cfg.subjects or store.subjects)
    subjects = list(subjects or cfg.eval_subjects or train_subjects)
    trials = training_trials(store, train_subjects)
    x_train, train_ids = _image_means(trials)  # per (subject, image), as the stage's ridge baseline
    size = store.meta["image_size"]
    labels = attribute_labels(store.annotations, train_ids, size)
    kinds = ["voxels"] + [f"tokens after block {b}" for b in range(len(encoder.blocks))] + ["predicted"]
    table = {}
    for kind in kinds:
        f_train = _features(encoder, kind, x_train)
        accs = []
        for s in subjects:
            x, ids = test_voxels(store, s)
            accs.append(probe_accuracy(f_train, labels, _features(encoder, kind, x), ids,
                                       qa_items(store.annotations, ids, size, cfg.seed), train_ids))
        table[kind] = {t: float(np.mean([a[t] for a in accs])) for t in accs[0]}
        log(f"{kind:>24}: " + ", ".join(f"{t} {v:.3f}" for t, v in table[kind].items()))
    log(f"(the projector reads the tokens after block {cfg.feature_layer % len(encoder.blocks)})")
    return table


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="demo")
    p.add_argument("--subjects", default=None, help="evaluation subjects, e.g. 1,2 (default: the config's)")
    p.add_argument("--vit3d", default=None, help="a saved ViT3D folder (default: the language stage's)")
    a = p.parse_args()
    run(a.profile, [int(s) for s in a.subjects.split(",")] if a.subjects else None, a.vit3d)
