"""Reading NSD betas and ROI volumes, one session at a time, with clear errors.

Volume betas (``func1pt8mm``) come as HDF5 (dataset ``betas``, axes reversed: trials × Z × Y × X) or NIfTI
(X × Y × Z × trials). Integer files hold percent signal change × 300 (NSD's int16 convention); float files are
taken to hold percent signal change already.
"""

import nibabel as nib
import numpy as np

from ..errors import DataError

__all__ = ["load_volume", "session_shape", "read_session", "read_surface", "BETA_SCALE"]

BETA_SCALE = 300.0
_SLAB_BYTES = 256 * 2**20  # a real NSD session is ~1 GB: 4 slabs


def load_volume(path, what="a NIfTI volume"):
    """Load a 3-D NIfTI volume (an ROI or mask) as a float array in NIfTI (X, Y, Z) order."""
    if not path.is_file():
        raise DataError(path, what, "no such file")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:
        raise DataError(path, what, f"an unreadable file ({type(err).__name__}: {err})") from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(path, f"{what} with 3 axes", f"shape {data.shape}")
    return data.astype(np.float32), img.affine


def _open_hdf5(path):
    import h5py

    try:
        f = h5py.File(path, "r")
    except Exception as err:
        raise DataError(path, "a readable HDF5 betas file", f"an unreadable or truncated file ({err})") from err
    if "betas" not in f:
        keys = list(f.keys())
        f.close()
        raise DataError(path, "an HDF5 dataset named 'betas'", f"datasets {keys}")
    return f


def session_shape(path):
    """``(n_trials, (X, Y, Z))`` of a session file without reading its data."""
    if path.name.endswith(".hdf5"):
        with _open_hdf5(path) as f:
            shape = f["betas"].shape
        if len(shape) != 4:
            raise DataError(path, "betas of shape (trials, Z, Y, X)", f"shape {shape}")
        return shape[0], tuple(shape[:0:-1])
    try:
        shape = nib.load(str(path)).shape
    except Exception as err:
        raise DataError(path, "a readable NIfTI betas file", f"an unreadable file ({err})") from err
    if len(shape) != 4:
        raise DataError(path, "betas of shape (X, Y, Z, trials)", f"shape {shape}")
    return shape[3], tuple(shape[:3])


def _check_spatial(path, spatial, expected, roi_path):
    if tuple(spatial) == tuple(expected):
        return
    hint = ""
    if tuple(spatial) == tuple(expected)[::-1]:
        hint = " (the axes look reversed: HDF5 betas must be (trials, Z, Y, X), NIfTI (X, Y, Z, trials))"
    raise DataError(path, f"a volume of shape {tuple(expected)} (X, Y, Z) like {roi_path}",
                    f"{tuple(spatial)}{hint}")


def _to_psc(values, path):
    if np.issubdtype(values.dtype, np.integer):  # NSD's int16 = percent signal change x 300; never NaN
        return np.multiply(values, np.float32(1.0 / BETA_SCALE), dtype=np.float32)
    out = values.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        trials, vox = np.nonzero(bad)
        raise DataError(path, "finite betas at every voxel (or vertex) read: nsdgeneral and the voxels resampling "
                        "onto the common grid interpolates from",
                        f"{bad.sum()} non-finite values (first at trial {trials[0]}, voxel #{vox[0]} of those "
                        "read)")
    return out


def _read_hdf5_masked(ds, i, j, k, path):
    """Read the mask's z-range in contiguous z-slabs (at most ``_SLAB_BYTES``) into one reused buffer, then
    gather the mask's voxels with ``np.take``. Contiguous slabs read at bare-``h5py`` speed; cropping Y and X in
    the HDF5 selection would read fewer bytes but is slower."""
    n_trials, _, ny, nx = ds.shape
    out = np.empty((n_trials, len(k)), dtype=np.float32)
    if len(k) == 0:
        return out
    z_lo, z_hi = int(k.min()), int(k.max()) + 1
    dz = max(1, min(z_hi - z_lo, _SLAB_BYTES // (n_trials * ny * nx * ds.dtype.itemsize)))
    buf = np.empty((n_trials, dz, ny, nx), dtype=ds.dtype)
    flat = (k * ny + j) * nx + i
    for z0 in range(z_lo, z_hi, dz):
        n = min(dz, z_hi - z0)
        ds.read_direct(buf, np.s_[:, z0:z0 + n], np.s_[:, :n])
        rows = buf.reshape(n_trials, -1)
        if n == z_hi - z_lo:  # one slab holds the whole mask: gather straight into voxel order
            out[:] = _to_psc(np.take(rows, flat - z0 * ny * nx, axis=1), path)
            break
        sel = np.nonzero((k >= z0) & (k < z0 + n))[0]
        out[:, sel] = _to_psc(np.take(rows, flat[sel] - z0 * ny * nx, axis=1), path)
    return out


def read_session(path, ijk, expected_shape, roi_path="the ROI"):
    """Read one session's betas at the given voxels, in percent signal change.

    Parameters
    ----------
    path : Path
        ``betas_sessionNN.hdf5`` or ``.nii.gz``.
    ijk : ndarray (V, 3)
        NIfTI (i, j, k) indices of the voxels to keep.
    expected_shape : tuple
        (X, Y, Z) of the ROI volumes; the file must agree.
    roi_path : str
        Named in the error when shapes disagree.

    Returns
    -------
    ndarray (n_trials, V) float32
    """
    i, j, k = (np.asarray(a) for a in ijk.T)
    if path.name.endswith(".hdf5"):
        with _open_hdf5(path) as f:
            ds = f["betas"]
            if ds.ndim != 4:
                raise DataError(path, "betas of shape (trials, Z, Y, X)", f"shape {ds.shape}")
            _check_spatial(path, ds.shape[:0:-1], expected_shape, roi_path)
            try:
                return _read_hdf5_masked(ds, i, j, k, path)
            except DataError:
                raise
            except Exception as err:
                raise DataError(path, "a readable HDF5 betas file", f"a read error ({err})") from err
    try:
        img = nib.load(str(path))
        if len(img.shape) != 4:
            raise DataError(path, "betas of shape (X, Y, Z, trials)", f"shape {img.shape}")
        _check_spatial(path, img.shape[:3], expected_shape, roi_path)
        data = np.asanyarray(img.dataobj)
    except DataError:
        raise
    except Exception as err:
        raise DataError(path, "a readable NIfTI betas file", f"an unreadable or truncated file ({err})") from err
    return _to_psc(data[i, j, k, :].T, path)


def read_surface(path, vertices=None, flatmap=None, hemi=None):
    """Read one hemisphere's surface betas (``.mgh``: vertices × 1 × 1 × trials) as (trials, vertices) float32;
    with ``flatmap`` and ``hemi`` the file's vertex count is checked against the map's mesh first."""
    if not path.is_file():
        raise DataError(path, "surface betas (.mgh)", "no such file")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:
        raise DataError(path, "a readable MGH surface file", f"an unreadable file ({err})") from err
    data = data.reshape(data.shape[0], -1)
    if flatmap is not None:
        flatmap.check_mesh(hemi, data.shape[0], path)
    if vertices is not None:
        if vertices.size and vertices.max() >= data.shape[0]:
            raise DataError(path, f"at least {vertices.max() + 1} vertices (the flat map's)", f"{data.shape[0]}")
        data = data[vertices]
    return _to_psc(data.T, path)
