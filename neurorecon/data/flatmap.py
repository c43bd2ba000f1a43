"""Projection of surface (fsaverage-space) data onto a 2-D cortical flat map.

A flat-map file is an ``.npz`` with

- ``shape``: ``[H, W]`` of the map;
- ``pixel``: flat indices (``row * W + col``) of the pixels inside the cortex mask;
- ``hemi``: 0 (left) or 1 (right) for each listed pixel;
- ``vertex``: the vertex of that hemisphere each listed pixel samples.

Pixels outside the mask stay 0, as in NeuroPictor's input. For real NSD the user supplies such a file (for
example built from the fMRI-PTE grid or from nilearn's flat fsaverage meshes); the NSD-mini simulator writes one.
"""

from dataclasses import dataclass

import numpy as np

from ..errors import DataError

__all__ = ["FlatMap", "load_flatmap"]

HEMIS = ("lh", "rh")


@dataclass
class FlatMap:
    shape: tuple
    pixel: np.ndarray
    hemi: np.ndarray
    vertex: np.ndarray
    path: str = ""

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
    return FlatMap(shape, pixel.astype(np.int64), hemi.astype(np.int8), vertex.astype(np.int64), str(path))
