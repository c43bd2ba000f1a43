"""Can the language stage's LLaVA recipe read a perfect brain? The recipe trained on an oracle code (demo profile).

The brain LLaVA of the language config is trained exactly as notebook 06 trains it (both stages, the same
instruction data, :func:`neurorecon.nv2l.stage.train_brain_llava`), but its encoder is replaced by an *oracle*:
each image's "fMRI tokens" are a noise-free code of its annotations (the colour and the shape of the object at
each of NSD-mini's five positions, "none" included, and the number of objects), shaped as the ViT3D's tokens. It
is then scored by the stage's own QA evaluation (real vs shuffled code, majority chance). Two layouts:

- ``distributed``: a random projection of the whole code into every token (as a brain's tokens mix everything);
- ``factorised``: token p holds position p's attributes plus a fixed signature of its own (as image patches do).

A recipe that cannot answer from the oracle cannot answer from the brain, whatever the ViT3D: this separates
what the LLaVA's training can read from what the fMRI holds (``benchmarks/probe_language.py``).

Usage (after notebook 02; ``--tokens`` / ``--width`` default to the demo ViT3D's: 26 cubes + the class token, 64)::

    NEURORECON_HOME=... python benchmarks/oracle_language.py [--layout distributed] [--set stage2_epochs=3.0]
"""

import argparse
import dataclasses

import numpy as np
import torch
import yaml

from neurorecon.config import load_config
from neurorecon.data import open_store
from neurorecon.data.stage import store_path
from neurorecon.foundation import load_foundation
from neurorecon.nv2l.encoder import training_trials
from neurorecon.nv2l.instructions import build_instruction_data, load_generator
from neurorecon.nv2l.stage import COMPONENTS, LanguageConfig, _evaluate_qa, train_brain_llava
from neurorecon.training import make_accelerator

from probe_language import attribute_labels

__all__ = ["OracleEncoder", "oracle_codes", "run"]

LAYOUTS = ("distributed", "factorised")


class OracleEncoder(torch.nn.Module):
    """Stands in for the ViT3D: its inputs are already the tokens (flattened), ``features`` only reshapes them."""

    def __init__(self, n_tokens, width):
        super().__init__()
        self.n_tokens, self.width = int(n_tokens), int(width)

    def features(self, voxels, layer=-2):
        return voxels.reshape(len(voxels), self.n_tokens, self.width)


def oracle_codes(annotations, image_ids, image_size, n_tokens, width, layout="distributed", seed=0):
    """(n_images, n_tokens * width) float32 oracle tokens of ``image_ids`` (see the module docstring)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {LAYOUTS}")
    lab = attribute_labels(annotations, image_ids, image_size)
    col, shp, cnt = lab["color"][0], lab["shape"][0], np.minimum(lab["count"][0], 4)
    n_col, n_shp, n_pos = len(lab["color"][1]) + 1, len(lab["shape"][1]) + 1, col.shape[1]
    rng = np.random.default_rng(seed)
    if layout == "distributed":
        code = np.concatenate([np.eye(n_col, dtype=np.float32)[col].reshape(len(col), -1),
                               np.eye(n_shp, dtype=np.float32)[shp].reshape(len(shp), -1),
                               np.eye(5, dtype=np.float32)[cnt]], 1)
        x = code @ rng.normal(size=(code.shape[1], n_tokens * width)).astype(np.float32)
        return ((x - x.mean(0)) / (x.std(0) + 1e-6)).astype(np.float32)
    if n_tokens <= n_pos:
        raise ValueError(f"the factorised layout needs more than {n_pos} tokens, got {n_tokens}")
    emb_col, emb_shp, emb_cnt, signature = (rng.normal(size=(k, width)).astype(np.float32)
                                            for k in (n_col, n_shp, 5, n_tokens))
    x = np.broadcast_to(signature, (len(col), n_tokens, width)).copy()
    x[:, :n_pos] += emb_col[col] + emb_shp[shp]
    x[:, n_pos] += emb_cnt[cnt]
    return x.reshape(len(col), -1)


class _Metrics:
    """Collects ``add_metric`` calls (the stage writes them to metrics.csv)."""

    def __init__(self):
        self.rows = []

    def add_metric(self, method, subject, split, metric, value):
        self.rows.append((method, subject, split, metric, value))


def run(profile="demo", layout="distributed", n_tokens=27, width=64, overrides=None, subjects=None, log=print):
    """QA accuracy (method -> type -> value, mean over the evaluation subjects) of the recipe on the oracle."""
    cfg = load_config(LanguageConfig, profile, overrides=overrides or {})
    store = open_store(store_path(profile))
    fm = load_foundation(profile, components=COMPONENTS)
    train_subjects = list(cfg.subjects or store.subjects)
    subjects = list(subjects or cfg.eval_subjects or train_subjects)
    trials = training_trials(store, train_subjects)
    train_ids = np.unique(trials.image_ids)
    records = build_instruction_data(store.annotations, train_ids, store.meta["image_size"],
                                     load_generator(cfg.dialogue_generator, cfg.n_turns), cfg.seed,
                                     n_conversations=cfg.n_conversations)
    ids = np.asarray(store.image_ids)
    codes = oracle_codes(store.annotations, ids, store.meta["image_size"], n_tokens, width, layout, cfg.seed)
    trials = dataclasses.replace(trials, voxels=codes[np.searchsorted(ids, trials.image_ids)])
    w = _Metrics()
    llava = train_brain_llava(cfg, OracleEncoder(n_tokens, width), fm, records, trials, make_accelerator("no"), w,
                              {}, {}, progress=False, log=log, ckpt=False).eval()

    def oracle_of(store_, s):
        test = np.asarray(store_.subject(s).test_image_ids)
        return codes[np.searchsorted(ids, test)], test

    with torch.no_grad():
        _evaluate_qa(w, cfg, llava, store, subjects, train_ids, voxels_of=oracle_of)
    table = {}
    for method, subject, _, metric, value in w.rows:
        if subject == "mean" and metric.startswith("qa_"):
            table.setdefault(method, {})[metric[3:]] = value
    for method, accs in table.items():
        log(f"{layout} oracle, {method:>13}: " + ", ".join(f"{t} {v:.3f}" for t, v in sorted(accs.items())))
    return table


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="demo")
    p.add_argument("--layout", default="distributed", choices=LAYOUTS)
    p.add_argument("--tokens", type=int, default=27)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--subjects", default=None, help="evaluation subjects, e.g. 1,2 (default: the config's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=YAML", help="language config overrides")
    a = p.parse_args()
    run(a.profile, a.layout, a.tokens, a.width, {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)},
        [int(s) for s in a.subjects.split(",")] if a.subjects else None)
