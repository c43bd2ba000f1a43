"""Projection of surface (fsaverage-space) data onto a 2-D cortical flat map.

A flat-map file is an ``.npz`` with

- ``shape``: ``[H, W]`` of the map;
- ``pixel``: flat indices (``row * W + col``) of the pixels inside the cortex mask;
- ``hemi``: 0 (left) or 1 (right) for each listed pixel;
- ``vertex``: the vertex of that hemisphere each listed pixel samples;
- ``n_vertices`` (optional): ``[n_lh, n_rh]``, the vertex count of the mesh the indices refer to (163842 per
  hemisphere for fsaverage). With it, surface betas on another mesh are an error naming both counts; betas on a
  finer fsaverage than the map's are accepted, since an icosahedral fsaverage's first vertices are those of the
  coarser ones (fsaverage5's 10242 vertices are fsaverage's first 10242).

Pixels outside the mask stay 0, as in NeuroPictor's input. For real NSD (betas on fsaverage) build one with
:func:`build_flatmap` from flat 2-D vertex coordinates (a flattened fsaverage patch, nilearn's fsaverage flat
meshes, or the fMRI-PTE grid's vertex coordinates) and a visual-cortex vertex mask (NSD's fsaverage nsdgeneral
labels): the masked vertices' bounding box is cropped and stretched to the grid (256×256 in NeuroPictor), the
hemispheres side by side; ``docs/neuropictor_import.md`` has the commands. The NSD-mini simulator writes one.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import DataError

__all__ = ["FlatMap", "load_flatmap", "build_flatmap", "save_flatmap", "read_flat_coords", "read_vertex_mask",
           "FSAVERAGE_VERTICES"]

HEMIS = ("lh", "rh")
#: Vertices per hemisphere of the icosahedral fsaverage meshes.
FSAVERAGE_VERTICES = {2562: "fsaverage4", 10242: "fsaverage5", 40962: "fsaverage6", 163842: "fsaverage"}


def _mesh_name(n):
    return f"{FSAVERAGE_VERTICES[n]}, {n} vertices" if n in FSAVERAGE_VERTICES else f"{n} vertices"


@dataclass
class FlatMap:
    shape: tuple
    pixel: np.ndarray
    hemi: np.ndarray
    vertex: np.ndarray
    path: str = ""
    n_vertices: Optional[tuple] = None

    def check_mesh(self, hemi, n, source):
        """Error unless surface data of ``n`` vertices (file ``source``) is on this map's mesh (or a finer
        fsaverage of it); without ``n_vertices`` only the sampled vertices must exist."""
        h = HEMIS.index(hemi)
        need = int(self.vertex[self.hemi == h].max()) + 1 if (self.hemi == h).any() else 0
        if self.n_vertices is None:
            if n < need:
                raise DataError(source, f"at least {need} vertices (the flat map {self.path} samples vertex "
                                        f"{need - 1})", f"{n} vertices")
            return
        mesh = int(self.n_vertices[h])
        finer = mesh in FSAVERAGE_VERTICES and n in FSAVERAGE_VERTICES and n >= mesh
        if n != mesh and not finer:
            raise DataError(source, f"{hemi} surface data on the flat map's mesh ({_mesh_name(mesh)}; map "
                                    f"{self.path})", f"{_mesh_name(n)}: build the flat map on the betas' mesh")

    def vertices(self, hemi):
        """Sorted unique vertices of a hemisphere ('lh' or 'rh') the map samples."""
        return np.unique(self.vertex[self.hemi == HEMIS.index(hemi)])

    @property
    def mask(self):
        m = np.zeros(self.shape[0] * self.shape[1], dtype=bool)
        m[self.pixel] = True
        return m.reshape(self.shape)

    def project(self, lh, rh, dtype=np.float16):
        """Flat maps from per-hemisphere data sampled at :meth:`vertices`.

        Parameters
        ----------
        lh, rh : ndarray (n, len(vertices('lh'))) and (n, len(vertices('rh')))
            Data at the sorted unique vertices of each hemisphere.

        Returns
        -------
        ndarray (n, H, W)
        """
        n = lh.shape[0]
        out = np.zeros((n, self.shape[0] * self.shape[1]), dtype=dtype)
        for h, data in enumerate((lh, rh)):
            sel = self.hemi == h
            cols = np.searchsorted(self.vertices(HEMIS[h]), self.vertex[sel])
            out[:, self.pixel[sel]] = data[:, cols]
        return out.reshape(n, *self.shape)


def load_flatmap(path):
    """Read and validate a flat-map ``.npz`` file."""
    try:
        z = np.load(path)
        shape, pixel, hemi, vertex = (z[k] for k in ("shape", "pixel", "hemi", "vertex"))
    except FileNotFoundError:
        raise DataError(path, "a flat-map .npz (keys shape, pixel, hemi, vertex)", "no such file") from None
    except KeyError as err:
        raise DataError(path, "a flat-map .npz with keys shape, pixel, hemi, vertex", f"missing {err}") from None
    except Exception as err:
        raise DataError(path, "a flat-map .npz", f"an unreadable file ({err})") from err
    shape = tuple(int(s) for s in np.ravel(shape))
    if len(shape) != 2 or not (pixel.shape == hemi.shape == vertex.shape) or pixel.ndim != 1:
        raise DataError(path, "shape [H, W] and equally long 1-D pixel/hemi/vertex arrays",
                        f"shape {shape}, lengths {pixel.shape}, {hemi.shape}, {vertex.shape}")
    if pixel.size and (pixel.min() < 0 or pixel.max() >= shape[0] * shape[1] or not set(np.unique(hemi)) <= {0, 1}):
        raise DataError(path, f"pixels in 0..{shape[0] * shape[1] - 1} and hemi in {{0, 1}}")
    n_vertices = tuple(int(v) for v in np.ravel(z["n_vertices"])) if "n_vertices" in z.files else None
    if n_vertices is not None and len(n_vertices) != 2:
        raise DataError(path, "n_vertices [n_lh, n_rh]", f"{n_vertices}")
    fm = FlatMap(shape, pixel.astype(np.int64), hemi.astype(np.int8), vertex.astype(np.int64), str(path), n_vertices)
    if n_vertices is not None:
        for h in (0, 1):
            if (fm.hemi == h).any() and fm.vertex[fm.hemi == h].max() >= n_vertices[h]:
                raise DataError(path, f"{HEMIS[h]} vertices below n_vertices {n_vertices[h]}",
                                f"vertex {fm.vertex[fm.hemi == h].max()}")
    return fm


def save_flatmap(fm, path):
    """Write a :class:`FlatMap` as the ``.npz`` :func:`load_flatmap` reads."""
    extra = {} if fm.n_vertices is None else {"n_vertices": np.asarray(fm.n_vertices, np.int64)}
    np.savez(path, shape=np.asarray(fm.shape), pixel=fm.pixel, hemi=fm.hemi, vertex=fm.vertex, **extra)
    return path


def build_flatmap(lh_xy, rh_xy, shape=(256, 256), lh_mask=None, rh_mask=None, gap=0.1, margin=0.02,
                  max_distance=None):
    """A vertex → pixel map from flat 2-D vertex coordinates of both hemispheres.

    The vertices of ``lh_mask``/``rh_mask`` (default: all) are kept, the right hemisphere is placed to the right
    of the left one (``gap``: a fraction of the left hemisphere's width), the bounding box of the kept vertices
    (plus ``margin`` of its size on each side) is stretched onto ``shape`` (row 0 = largest y), and each pixel
    samples its nearest kept vertex if that is within ``max_distance`` pixels (default: 1.5 × the median spacing
    of neighbouring vertices, at least 1): pixels beyond the cortex stay outside the mask.

    Parameters
    ----------
    lh_xy, rh_xy : ndarray (n_lh, 2) and (n_rh, 2)
        Flat coordinates of every vertex of each hemisphere's mesh (a flat mesh's x, y).
    shape : (H, W)
    lh_mask, rh_mask : bool ndarray (n_lh,), (n_rh,), optional
        Vertices to keep (e.g. a visual-cortex label; vertices cut out of a flat patch must be False).

    Returns
    -------
    FlatMap
        With ``n_vertices = (n_lh, n_rh)``.
    """
    from scipy.spatial import cKDTree

    xy = [np.asarray(a, dtype=np.float64)[:, :2] for a in (lh_xy, rh_xy)]
    masks = [np.ones(len(a), bool) if m is None else np.asarray(m, bool) for a, m in zip(xy, (lh_mask, rh_mask))]
    for h, (a, m) in enumerate(zip(xy, masks)):
        if m.shape != (len(a),) or not m.any():
            raise ValueError(f"{HEMIS[h]} mask: expected a non-empty bool vector of {len(a)} vertices, got shape "
                             f"{m.shape} with {int(m.sum())} kept")
    kept = [a[m] for a, m in zip(xy, masks)]
    width_l = np.ptp(kept[0][:, 0])
    kept[1] = kept[1] - [kept[1][:, 0].min() - kept[0][:, 0].max() - gap * width_l, 0]
    pts = np.concatenate(kept)
    lo, hi = pts.min(0), pts.max(0)
    pad = margin * (hi - lo)
    lo, hi = lo - pad, hi + pad
    h, w = shape
    px = np.stack([(pts[:, 0] - lo[0]) / (hi[0] - lo[0]) * w, (hi[1] - pts[:, 1]) / (hi[1] - lo[1]) * h], 1)
    tree = cKDTree(px)
    if max_distance is None:
        spacing = np.median(tree.query(px, k=2)[0][:, 1])
        max_distance = max(1.0, 1.5 * spacing)
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    dist, idx = tree.query(np.stack([cols.ravel(), rows.ravel()], 1))
    inside = np.nonzero(dist <= max_distance)[0]
    idx = idx[inside]
    hemi = (idx >= len(kept[0])).astype(np.int8)
    ids = [np.nonzero(m)[0] for m in masks]
    vertex = np.where(hemi == 0, ids[0][np.minimum(idx, len(ids[0]) - 1)],
                      ids[1][np.clip(idx - len(kept[0]), 0, len(ids[1]) - 1)])
    return FlatMap(tuple(shape), inside.astype(np.int64), hemi, vertex.astype(np.int64), "",
                   (len(xy[0]), len(xy[1])))


def read_flat_coords(path):
    """(n, 2) flat coordinates of a mesh file: GIFTI (``.gii``, ``.gii.gz``: the pointset's x, y), a FreeSurfer
    surface (``read_geometry``) or a ``.npy`` (n, 2|3) array."""
    import nibabel as nib

    path = str(path)
    try:
        if path.endswith(".npy"):
            xy = np.load(path)
        elif path.endswith((".gii", ".gii.gz")):
            img = nib.load(path)
            xy = next(d.data for d in img.darrays if d.data.ndim == 2 and d.data.shape[1] == 3)
        else:
            xy = nib.freesurfer.read_geometry(path)[0]
    except (OSError, ValueError, StopIteration, EOFError) as err:
        raise DataError(path, "a flat mesh (.gii, FreeSurfer surface or .npy of (n, 2|3) coordinates)",
                        f"an unreadable file ({err!r})") from err
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] not in (2, 3):
        raise DataError(path, "(n, 2) or (n, 3) vertex coordinates", f"shape {xy.shape}")
    return xy[:, :2]


def read_vertex_mask(path, n_vertices):
    """Bool (n_vertices,) vertex mask: a FreeSurfer ``.label`` (its vertices), a surface volume
    ``.mgz``/``.mgh``/``.gii`` (values > 0, e.g. NSD's fsaverage ``nsdgeneral``) or a ``.npy``."""
    import nibabel as nib

    path = str(path)
    try:
        if path.endswith(".label"):
            mask = np.zeros(n_vertices, bool)
            mask[nib.freesurfer.read_label(path)] = True
            return mask
        if path.endswith(".npy"):
            values = np.load(path)
        elif path.endswith((".gii", ".gii.gz")):
            values = nib.load(path).darrays[0].data
        else:
            values = np.asanyarray(nib.load(path).dataobj)
    except (OSError, ValueError, IndexError, EOFError) as err:
        raise DataError(path, "a vertex mask (.label, .mgz/.mgh, .gii or .npy)", f"an unreadable file ({err!r})") from err
    values = np.ravel(values)
    if values.size != n_vertices:
        raise DataError(path, f"one value per vertex of the flat mesh ({_mesh_name(n_vertices)})",
                        f"{_mesh_name(values.size)}")
    return values > 0
