"""(fMRI flat map, image) training pairs for NeuroPictor, with cached VAE latents.

Repetitions: NSD shows each training image up to 3 times. NeuroPictor trained on one sample per (subject, image);
``repetitions="average"`` (our default) follows that with the mean of the image's trials, which also matches
the test inputs (repetition-averaged, as the field evaluates). ``repetitions="last"`` is the official code's
choice: the last trial of each image alone (its image → trial lookup keeps the last trial). ``repetitions="trials"``
keeps every single trial as its own sample (3× the samples, each noisier: a form of noise augmentation).

Latents are the VAE posterior means of the training images, computed once (the VAE is frozen) into a cache folder
as ``.npy`` files the processes memory-map; in multi-process runs every rank encodes its share of the images
and the main process assembles them.
The per-image maps of ``average`` and ``last`` are written the same way (:func:`training_maps`): one ``.npy``
per subject in the cache folder, each made by one rank, then memory-mapped by all (held in memory per process,
real NSD's 8 subjects x ~9,000 images of 256 x 256 float16 maps are 9.4 GB on every rank).
Caption tokens for the semantic loss are computed per batch by the frozen text tower.
"""

import json

import numpy as np
import torch

from ..data.store import average_by_image
from ..encoding.data import StackedMaps
from ..errors import DataError

__all__ = ["REPETITIONS", "subject_pairs", "training_maps", "PairBatches", "cache_latents", "caption_lists"]


#: How the training samples of a (subject, image) are drawn from its trials (``repetitions`` of the configs).
REPETITIONS = ("average", "last", "trials")


def subject_pairs(store, subject, repetitions="average", out=None):
    """One subject's training samples: (flat maps (n, H, W) float16, image ids (n,)).

    ``out``, optional: ``(shape, dtype) -> array`` to write the ``average``/``last`` maps into (a memory map);
    ``trials`` returns the store's own memory-mapped array either way."""
    sub = store.subject(subject)
    if sub.train_flat is None:
        raise DataError(sub.folder / "train_flat.npy", "training flat maps (NeuroPictor's input)", "no such file")
    if repetitions == "average":
        ids, maps = average_by_image(sub.train_flat, sub.train_image_ids, dtype=np.float16, out=out)  # by block
        return maps, ids
    if repetitions == "trials":
        return sub.train_flat, np.asarray(sub.train_image_ids)
    if repetitions == "last":
        trial_ids = np.asarray(sub.train_image_ids)
        ids, rev = np.unique(trial_ids[::-1], return_index=True)
        rows = np.sort(len(trial_ids) - 1 - rev)  # the last trial of each (sorted) image
        maps = (out or (lambda shape, dtype: np.empty(shape, dtype)))((len(rows),) + sub.train_flat.shape[1:],
                                                                       sub.train_flat.dtype)
        for a in range(0, len(rows), 256):  # a block of rows at a time (the store's array is memory-mapped)
            maps[a:a + 256] = sub.train_flat[rows[a:a + 256]]
        return maps, trial_ids[rows]
    raise ValueError(f"repetitions must be one of {REPETITIONS}, got {repetitions!r}")


def training_maps(store, subjects, repetitions, folder=None, accelerator=None):
    """Every subject's training samples, as :func:`subject_pairs` gives them: (list of maps, list of image ids).

    With ``folder``, the ``average``/``last`` maps are written there once (``flat_<repetitions>_subj<S>.npy``
    and its ``_ids.npy``; subject k by rank k mod processes, through a ``.partial`` file renamed into place) and
    memory-mapped by every rank; files of an earlier run are reused when their ids and shape match the store's.
    The folder must be one every rank sees (the latent cache's). Without it, each process holds its own copy.
    """
    from ..distributed import world

    if folder is None or repetitions == "trials":
        pairs = [subject_pairs(store, s, repetitions) for s in subjects]
        return [m for m, _ in pairs], [i for _, i in pairs]
    folder.mkdir(parents=True, exist_ok=True)
    num, rank = world(accelerator)
    files = [(folder / f"flat_{repetitions}_subj{int(s):02d}.npy", folder / f"flat_{repetitions}_subj{int(s):02d}"
              "_ids.npy") for s in subjects]

    def valid(path, ids_path, s):
        if not (path.is_file() and ids_path.is_file()):
            return False
        sub = store.subject(s)
        ids = np.load(ids_path)
        want = np.unique(np.asarray(sub.train_image_ids))
        return np.array_equal(np.sort(ids), want) and np.load(path, mmap_mode="r").shape == (len(want),) + tuple(
            sub.train_flat.shape[1:])

    for k, (s, (path, ids_path)) in enumerate(zip(subjects, files)):
        if k % num != rank or valid(path, ids_path, s):
            continue
        tmp = path.with_name(path.name.replace(".npy", ".partial.npy"))
        maps, ids = subject_pairs(store, s, repetitions, out=lambda shape, dtype: np.lib.format.open_memmap(
            tmp, mode="w+", dtype=dtype, shape=shape))  # the maps it returns are that memory map
        maps.flush()
        del maps
        np.save(ids_path, ids)
        tmp.replace(path)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return [np.load(p, mmap_mode="r") for p, _ in files], [np.load(i) for _, i in files]


def cache_latents(fm, store, image_ids, folder, accelerator=None, batch_size=64):
    """VAE latents of ``image_ids`` (sorted unique) cached as ``folder/latents.npy`` (float32, memory-mapped).

    With several processes each rank encodes its :func:`~neurorecon.distributed.shard` of the images into
    ``latents.part-<rank>-of-<n>.npy`` (memory-mapped, so memory stays at one batch); the main process then
    concatenates the parts in rank order (the single-process result) and renames the file into place. The
    folder must be on a file system every rank sees (as the training checkpoints are).
    """
    from ..distributed import shard, world

    folder.mkdir(parents=True, exist_ok=True)
    path, ids_path = folder / "latents.npy", folder / "latent_ids.npy"
    image_ids = np.asarray(image_ids)
    main = accelerator is None or accelerator.is_main_process
    ok = ids_path.is_file() and path.is_file() and np.array_equal(np.load(ids_path), image_ids)
    if not ok:
        num, rank = world(accelerator)
        part = folder / f"latents.part-{rank}-of-{num}.npy"
        mine = image_ids[shard(len(image_ids), accelerator)]
        part.unlink(missing_ok=True)  # a killed earlier run's part (this rank's share may now be empty)
        out = None
        for i in range(0, len(mine), batch_size):
            z = fm.encode_images(store.get_images(mine[i:i + batch_size])).float().cpu().numpy()
            if out is None:
                out = np.lib.format.open_memmap(part, mode="w+", dtype=np.float32, shape=(len(mine),) + z.shape[1:])
            out[i:i + len(z)] = z
        if out is not None:
            out.flush()
            del out
        if accelerator is not None:
            accelerator.wait_for_everyone()
        if main:
            parts = [folder / f"latents.part-{r}-of-{num}.npy" for r in range(num)]
            arrays = [np.load(p, mmap_mode="r") for p in parts if p.is_file()]
            if not arrays:
                raise DataError(folder, "latents of at least one image", "no images to encode")
            tmp = folder / "latents.partial.npy"
            full = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                             shape=(len(image_ids),) + arrays[0].shape[1:])
            row = 0
            for a in arrays:
                for i in range(0, len(a), batch_size):
                    full[row:row + len(a[i:i + batch_size])] = a[i:i + batch_size]
                    row += len(a[i:i + batch_size])
            if row != len(image_ids):
                raise DataError(folder, f"latents of {len(image_ids)} images from {num} processes", f"{row}")
            full.flush()
            del full, arrays
            tmp.replace(path)
            np.save(ids_path, image_ids)
            for p in parts:
                p.unlink(missing_ok=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return np.load(path, mmap_mode="r")


def caption_lists(store, image_ids):
    """The captions of each image (list of lists of str)."""
    ann = store.annotations
    out = []
    for i in image_ids:
        caps = ann.get(int(i), {}).get("captions") or []
        if not caps:
            raise DataError(store.folder / "annotations.json", f"captions for image {int(i)}", "none")
        out.append(list(caps))
    return out


class PairBatches:
    """Batch source over (flat map, image) pairs of several subjects.

    ``batch(idx)`` returns ``{"maps": float32 (b, H, W), "latents": float32 (b, C, h, w)}`` plus ``"captions"``
    (a list of caption lists, for the semantic loss) when ``captions`` is given.

    Parameters
    ----------
    maps : list of (n_i, H, W) arrays
    image_ids : list of (n_i,) arrays
    latent_ids : (m,) sorted unique ids, latents : (m, C, h, w) array
    captions : list of caption lists aligned with ``latent_ids``, optional
    """

    def __init__(self, maps, image_ids, latent_ids, latents, captions=None):
        self.maps = StackedMaps(maps)
        ids = np.concatenate([np.asarray(i) for i in image_ids])
        self.rows = np.searchsorted(latent_ids, ids)
        if not np.array_equal(np.asarray(latent_ids)[np.minimum(self.rows, len(latent_ids) - 1)], ids):
            raise ValueError("some image ids have no cached latent")
        self.latents = latents
        self.captions = captions

    def __len__(self):
        return len(self.maps)

    def batch(self, indices):
        indices = np.asarray(indices)
        out = self.maps.batch(indices)
        rows = self.rows[indices]
        order = np.argsort(rows)
        lat = np.empty((len(indices),) + self.latents.shape[1:], dtype=np.float32)
        lat[order] = self.latents[rows[order]]
        out["latents"] = torch.from_numpy(lat)
        if self.captions is not None:
            out["captions"] = [self.captions[r] for r in rows]
        return out

    def describe(self):
        return json.dumps({"samples": len(self), "images": int(len(np.unique(self.rows)))})
