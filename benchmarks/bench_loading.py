"""Data-loading benchmarks: random training mini-batches from the prepared store vs one ``.npy`` file per trial.

Builds NSD-mini (demo sizes: 64×64 flat maps, ~1.4k nsdgeneral voxels; ``subjects`` complete subjects of 1,200
training trials each, plus their 300 resting maps) with the simulator and :func:`neurorecon.data.prepare` in a
temporary folder, then measures side by side in one run, both from the page cache (the files were just written):

- flat maps: the store read the way the encoding stage reads it (:class:`neurorecon.encoding.StackedMaps` over
  the memory-mapped ``train_flat``/``resting_flat`` arrays of every subject, as
  :func:`neurorecon.encoding.pretraining_arrays` returns them; NeuroPictor's ``PairBatches`` gathers its maps with
  the same code) vs the layout NeuroPictor ships, one ``.npy`` per trial, loaded with one ``np.load`` per sample
  and stacked into the same float32 batch;
- betas: :class:`neurorecon.training.ArrayBatches` over the memory-mapped ``train_betas`` of each subject vs one
  ``.npy`` per trial.

Batches are drawn as :func:`neurorecon.training.fit` draws them (:func:`neurorecon.training.epoch_order`, one
epoch of ``batch_size`` batches); the two layouts alternate A B A B and each keeps its best epoch. torch runs on
one thread, as the training stages do (``num_threads: 1`` in their configs): on a loaded 2-core machine torch's
default intra-op threads made the store's gathers 30-300x slower (measured 2026-12-01: flat maps 2.5x,
betas 0.43x the per-trial files with the default threads; 47x and 74x with one).
"""

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from neurorecon.config import load_config
from neurorecon.data import open_store, prepare
from neurorecon.encoding import StackedMaps, pretraining_arrays
from neurorecon.simulate import SimConfig, simulate
from neurorecon.training import ArrayBatches, epoch_order

__all__ = ["run", "build_store", "write_per_trial", "PerTrialFiles"]


def build_store(root, subjects=(1, 2), profile="demo", seed=0, overrides=None):
    """Simulate NSD-mini (``profile`` sizes, only ``subjects``) under ``root/nsd`` and prepare ``root/store``."""
    cfg = dataclasses.replace(load_config(SimConfig, profile), subjects=tuple(subjects), **(overrides or {}))
    simulate(root / "nsd", config=cfg, seed=seed, progress=False)
    return prepare(root / "nsd", root / "store", progress=False)


def write_per_trial(arrays, folder):
    """Write every row of the arrays as ``folder/NNNNNN.npy`` (global row order); returns the file paths."""
    folder.mkdir(parents=True)
    files, k = [], 0
    for a in arrays:
        for row in np.asarray(a):
            path = folder / f"{k:06d}.npy"
            np.save(path, row)
            files.append(path)
            k += 1
    return files


class PerTrialFiles:
    """The one-file-per-trial loader: ``batch(idx)`` = one ``np.load`` per sample, stacked into float32."""

    def __init__(self, files, key):
        self.files, self.key = list(files), key

    def __len__(self):
        return len(self.files)

    def batch(self, indices):
        x = np.stack([np.load(self.files[i]) for i in indices]).astype(np.float32)
        return {self.key: torch.from_numpy(x)}


def _epoch(source, batch_size, seed, epoch):
    """Seconds to draw one epoch of training batches from ``source`` (as ``fit`` orders them)."""
    order = epoch_order(len(source), seed, epoch)
    n = len(order) // batch_size * batch_size
    t = time.perf_counter()
    for i in range(0, n, batch_size):
        source.batch(order[i:i + batch_size])
    return time.perf_counter() - t, n


def _compare(store_source, file_source, batch_size, repeats, seed):
    a, b = store_source.batch(np.arange(min(8, len(store_source)))), file_source.batch(np.arange(8))
    for k in a:  # same samples, same values
        assert torch.equal(a[k].float(), b[k].float()), k
    ts, tf = [], []
    for r in range(repeats):  # interleaved A B A B: a loaded machine slows both alike
        sec, n = _epoch(store_source, batch_size, seed, r)
        ts.append(sec)
        sec, _ = _epoch(file_source, batch_size, seed, r)
        tf.append(sec)
    return n / min(ts), n / min(tf)


def run(subjects=(1, 2), profile="demo", batch_size=64, repeats=5, seed=0, overrides=None, threads=1):
    """Run the benchmark and return a list of result dicts (figure, value, unit, note).

    ``overrides`` are :class:`neurorecon.simulate.SimConfig` fields (tests make the data tiny with them);
    ``threads``: torch threads (None: torch's default).
    """
    if threads:
        torch.set_num_threads(threads)
    tmp = Path(tempfile.mkdtemp(prefix="neurorecon-bench-"))
    try:
        t0 = time.perf_counter()
        store = open_store(build_store(tmp, subjects, profile, seed, overrides))
        build = time.perf_counter() - t0
        subjects = store.subjects
        rows = []

        maps, _ = pretraining_arrays(store, subjects)
        h, w = maps[0].shape[1:]
        files = write_per_trial(maps, tmp / "per_trial_flat")
        store_rate, file_rate = _compare(StackedMaps(maps), PerTrialFiles(files, "maps"), batch_size, repeats, seed)
        rows.append(dict(
            figure="loading: flat-map samples/s, prepared store / one .npy per trial", value=store_rate / file_rate,
            unit="ratio",
            note=f"{len(files)} maps {h}x{w} float16 ({len(subjects)} subjects' training trials + resting maps), "
                 f"random batches of {batch_size} → float32: store (StackedMaps, memory-mapped) {store_rate:,.0f} "
                 f"samples/s, per-trial np.load {file_rate:,.0f} samples/s; best epoch of {repeats}; "
                 f"data built in {build:.0f} s; {torch.get_num_threads()} thread(s); goal ≥ 20"))

        s = subjects[0]  # betas of one subject (voxel counts differ between subjects; one is representative)
        sub = store.subject(s)
        files = write_per_trial([sub.train_betas], tmp / "per_trial_betas")
        store_rate, file_rate = _compare(ArrayBatches(betas=sub.train_betas), PerTrialFiles(files, "betas"),
                                         batch_size, repeats, seed)
        rows.append(dict(
            figure=f"loading: betas samples/s (subject {s}), prepared store / one .npy per trial",
            value=store_rate / file_rate, unit="ratio",
            note=f"{len(files)} trials × {sub.train_betas.shape[1]} voxels float32, random batches of {batch_size}: "
                 f"store (ArrayBatches, memory-mapped) {store_rate:,.0f} samples/s, per-trial np.load "
                 f"{file_rate:,.0f} samples/s; best epoch of {repeats}; {torch.get_num_threads()} thread(s); goal ≥ 20"))
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    for row in run():
        print(json.dumps(row))
