"""A tiny raw NSD tree written by hand (not by our simulator), with odd-sized shapes and known values.

Used to test that preparation follows the real NSD conventions (1-based indices, reversed HDF5 axes, int16 × 300,
z-scoring with training trials only) independently of the NSD-mini simulator.
"""

import json

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io

SHAPES = {1: (7, 9, 5), 3: (6, 8, 7)}
N_SHARED = 5
N_OWN = 9  # per subject, unique
SESSIONS = {1: [11, 13], 3: [12, 12]}  # trials per session (odd counts on purpose)
IMG = 13


def write_tree(root, fmt="hdf5", seed=3):
    """Write the tree; returns a dict of the ground truth (raw betas per subject in psc, design arrays)."""
    rng = np.random.default_rng(seed)
    n_total_images = 80
    ids = rng.permutation(n_total_images)  # 0-based 73k ids
    shared = np.sort(ids[:N_SHARED])
    own = {1: ids[N_SHARED:N_SHARED + N_OWN], 3: ids[N_SHARED + N_OWN:N_SHARED + 2 * N_OWN]}
    subjectim = np.zeros((8, N_SHARED + N_OWN), dtype=np.int64)
    for s in range(8):
        extra = own.get(s + 1, ids[N_SHARED + 2 * N_OWN:N_SHARED + 3 * N_OWN])
        subjectim[s] = np.concatenate([shared, extra])
    n_trials = 3 * (N_SHARED + N_OWN)
    masterordering = rng.permutation(np.repeat(np.arange(N_SHARED + N_OWN), 3))
    d = root / "nsddata/experiments/nsd"
    d.mkdir(parents=True)
    scipy.io.savemat(d / "nsd_expdesign.mat", dict(masterordering=(masterordering + 1)[None].astype(float),
                                                    subjectim=(subjectim + 1).astype(float),
                                                    sharedix=(shared + 1)[None].astype(float)))
    pd.DataFrame(dict(cocoId=np.arange(n_total_images) + 500, cocoSplit="val2017",
                      cropBox=["(0.1, 0, 0, 0.2)"] * n_total_images, nsdId=np.arange(n_total_images),
                      shared1000=np.isin(np.arange(n_total_images), shared))).to_csv(d / "nsd_stim_info_merged.csv")
    st = root / "nsddata_stimuli/stimuli/nsd"
    (st / "annotations").mkdir(parents=True)
    brick = rng.integers(0, 255, size=(n_total_images, IMG, IMG, 3), dtype=np.uint8)
    with h5py.File(st / "nsd_stimuli.hdf5", "w") as f:
        f.create_dataset("imgBrick", data=brick, chunks=(1, IMG, IMG, 3))
    coco_images = [dict(id=500 + i, width=100, height=50, file_name=f"{500 + i:012d}.jpg") for i in range(n_total_images)]
    caps = [dict(id=k, image_id=500 + i, caption=f" image {i} caption {c} ") for k, (i, c) in
            enumerate((i, c) for i in range(n_total_images) for c in range(2))]
    inst = [dict(id=i, image_id=500 + i, category_id=7, bbox=[40.0, 10.0, 20.0, 30.0], area=600, iscrowd=0)
            for i in range(n_total_images)]
    (st / "annotations/captions_val2017.json").write_text(json.dumps(dict(images=coco_images, annotations=caps)))
    (st / "annotations/instances_val2017.json").write_text(json.dumps(
        dict(images=coco_images, annotations=inst, categories=[dict(id=7, name="dog", supercategory="animal")])))
    truth = dict(shared=shared, subjectim=subjectim, masterordering=masterordering, brick=brick, raw={}, masks={})
    for s, shape in SHAPES.items():
        func = root / f"nsddata/ppdata/subj{s:02d}/func1pt8mm"
        (func / "roi").mkdir(parents=True)
        brain = np.zeros(shape, bool)
        brain[1:-1, 1:-1, 1:-1] = True
        gen = (rng.random(shape) < 0.5) & brain
        nsdgeneral = np.where(brain, 0, -1).astype(np.float32)
        nsdgeneral[gen] = 1
        aff = np.diag([1.8, 1.8, 1.8, 1])
        nib.save(nib.Nifti1Image(nsdgeneral, aff), func / "roi/nsdgeneral.nii.gz")
        nib.save(nib.Nifti1Image(rng.integers(0, 8, shape).astype(np.int16), aff), func / "roi/prf-visualrois.nii.gz")
        nib.save(nib.Nifti1Image(brain.astype(np.int16), aff), func / "brainmask.nii.gz")
        bdir = root / f"nsddata_betas/ppdata/subj{s:02d}/func1pt8mm/betas_fithrf_GLMdenoise_RR"
        bdir.mkdir(parents=True)
        raws = []
        for ses, n in enumerate(SESSIONS[s], start=1):
            vol = rng.integers(-3000, 3000, size=shape + (n,)).astype(np.int16)  # X, Y, Z, T
            raws.append(vol)
            if fmt == "hdf5":
                with h5py.File(bdir / f"betas_session{ses:02d}.hdf5", "w") as f:
                    f.create_dataset("betas", data=np.ascontiguousarray(vol.transpose(3, 2, 1, 0)))
            else:
                nib.save(nib.Nifti1Image(vol, aff), bdir / f"betas_session{ses:02d}.nii.gz")
        truth["raw"][s] = raws
        truth["masks"][s] = nsdgeneral == 1
    return truth
