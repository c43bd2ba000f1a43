"""Preparation benchmarks: betas streaming vs a bare sequential read, and peak memory vs one session.

Writes a raw NSD-like tree with realistic per-session sizes (not the tiny NSD-mini), then measures side by side
in one run:

- bare: ``h5py`` reads every session's whole ``betas`` dataset, nothing else;
- stream: :func:`neurorecon.data.betas.read_session` (z-slab reads + nsdgeneral masking + int16→float32);
- prepare: the whole :func:`neurorecon.data.prepare` on the same subject (adds z-scoring, resampling onto the
  common grid, images and the atomic store);
- peak memory (tracemalloc) of ``prepare`` against one session's size in memory.
"""

import json
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io

from neurorecon.data import prepare
from neurorecon.data.betas import read_session
from neurorecon.data.layout import NSDLayout

__all__ = ["run", "write_bench_tree"]


def write_bench_tree(root, shape=(81, 104, 83), trials=250, sessions=2, n_shared=100, seed=0):
    """One subject on subject 1's real grid, ``sessions`` HDF5 sessions of ``trials`` int16 betas (~700 MB).

    The nsdgeneral stand-in is a posterior cortical cap of about 16k voxels (real subject 1: 15,724).
    """
    rng = np.random.default_rng(seed)
    n_img = -(-sessions * trials // 3)  # enough images for 3 repetitions of every trial
    ids = rng.permutation(3 * n_img)[:n_img]
    subjectim = np.tile(ids, (8, 1))
    order = rng.permutation(np.repeat(np.arange(n_img), 3))
    d = root / "nsddata/experiments/nsd"
    d.mkdir(parents=True)
    scipy.io.savemat(d / "nsd_expdesign.mat", dict(masterordering=order[None] + 1.0, subjectim=subjectim + 1.0,
                                                    sharedix=np.sort(ids[:n_shared])[None] + 1.0))
    pd.DataFrame(dict(nsdId=np.arange(3 * n_img), cocoId=np.arange(3 * n_img), cocoSplit="train2017",
                      cropBox="(0, 0, 0, 0)")).to_csv(d / "nsd_stim_info_merged.csv")
    st = root / "nsddata_stimuli/stimuli/nsd"
    (st / "annotations").mkdir(parents=True)
    coco_images = [dict(id=i, width=32, height=32) for i in range(3 * n_img)]  # prepare requires COCO captions
    (st / "annotations/captions_train2017.json").write_text(json.dumps(dict(
        images=coco_images, annotations=[dict(id=i, image_id=i, caption=f"image {i}") for i in range(3 * n_img)])))
    (st / "annotations/instances_train2017.json").write_text(json.dumps(dict(images=coco_images, annotations=[])))
    with h5py.File(st / "nsd_stimuli.hdf5", "w") as f:
        f.create_dataset("imgBrick", data=rng.integers(0, 255, (3 * n_img, 32, 32, 3), dtype=np.uint8))
    func = root / "nsddata/ppdata/subj01/func1pt8mm/roi"
    func.mkdir(parents=True)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    mask = ((r > 0.7) & (r < 0.85) & (y < -0.35) & (z > -0.4)).astype(np.float32)
    nib.save(nib.Nifti1Image(mask, np.eye(4)), func / "nsdgeneral.nii.gz")
    bdir = NSDLayout(root).betas_dir(1)
    bdir.mkdir(parents=True)
    for s in range(1, sessions + 1):
        with h5py.File(bdir / f"betas_session{s:02d}.hdf5", "w") as f:
            f.create_dataset("betas", data=rng.integers(-2000, 2000, (trials,) + shape[::-1], dtype=np.int16))
    return int(mask.sum())


def _bare_read(files):
    for path in files:
        with h5py.File(path, "r") as f:
            f["betas"][()]


def run(shape=(81, 104, 83), trials=250, sessions=2, repeats=3):
    """Run the benchmark and return a list of result dicts (figure, value, unit, note)."""
    tmp = Path(tempfile.mkdtemp(prefix="neurorecon-bench-"))
    try:
        n_vox = write_bench_tree(tmp / "nsd", shape, trials, sessions)
        layout = NSDLayout(tmp / "nsd")
        files = list(layout.sessions(1).values())
        mask = nib.load(str(layout.roi(1, "nsdgeneral"))).get_fdata() > 0.5
        ijk = np.argwhere(mask)
        session_bytes = trials * int(np.prod(shape)) * 2
        total_mb = session_bytes * sessions / 2**20
        bare, stream, prep = [], [], []
        for _ in range(repeats):  # interleaved, so both see the same cache state
            t = time.perf_counter()
            _bare_read(files)
            bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            for path in files:
                read_session(path, ijk, shape)
            stream.append(time.perf_counter() - t)
            t = time.perf_counter()
            prepare(tmp / "nsd", tmp / "store", subjects=[1], progress=False)
            prep.append(time.perf_counter() - t)
        tracemalloc.start()
        prepare(tmp / "nsd", tmp / "store", subjects=[1], progress=False)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        b, s, p = min(bare), min(stream), min(prep)
        return [
            dict(figure="prep: betas streaming throughput / bare sequential read", value=b / s, unit="ratio",
                 note=f"{total_mb:.0f} MB of int16 betas ({sessions} sessions × {trials} trials × {shape}, {n_vox} "
                      f"nsdgeneral voxels): bare {total_mb / b:.0f} MB/s, streaming {total_mb / s:.0f} MB/s; goal ≥ 0.7"),
            dict(figure="prep: whole prepare throughput / bare sequential read", value=b / p, unit="ratio",
                 note=f"prepare {total_mb / p:.0f} MB/s (z-scoring, common-grid resampling, images, atomic store)"),
            dict(figure="prep: peak memory / one session's size", value=peak / session_bytes, unit="ratio",
                 note=f"tracemalloc peak {peak / 2**20:.0f} MB vs session {session_bytes / 2**20:.0f} MB; goal ≤ 2"),
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    for row in run():
        print(json.dumps(row))
