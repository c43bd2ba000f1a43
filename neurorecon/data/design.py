"""The NSD experimental design (``nsd_expdesign.mat``): which image each trial showed, which are shared."""

from dataclasses import dataclass

import numpy as np
import scipy.io

from ..errors import DataError

__all__ = ["Design", "read_design"]


@dataclass
class Design:
    """The design with every index converted to 0-based.

    Attributes
    ----------
    masterordering : ndarray (n_trials,)
        For global trial t, the 0-based index into a subject's own image list.
    subjectim : ndarray (n_subjects, n_images)
        0-based 73k ids of each subject's images.
    sharedix : ndarray (n_shared,)
        0-based 73k ids of the shared (test) images.
    path : str
        The file it was read from.
    """

    masterordering: np.ndarray
    subjectim: np.ndarray
    sharedix: np.ndarray
    path: str

    def check_subject(self, subject):
        if not 1 <= int(subject) <= self.subjectim.shape[0]:
            raise DataError(self.path, f"subject {subject} to be one of the design's subjects "
                                       f"1..{self.subjectim.shape[0]} (rows of subjectim)")

    def trial_image_ids(self, subject, n_trials):
        """0-based 73k ids of a subject's first ``n_trials`` global trials."""
        self.check_subject(subject)
        if n_trials > self.masterordering.size:
            raise DataError(self.path, f"masterordering to cover at least {n_trials} trials (the betas found)",
                            f"{self.masterordering.size}")
        return self.subjectim[int(subject) - 1, self.masterordering[:n_trials]]

    def is_test(self, image_ids):
        """Boolean mask: which of these 0-based ids are shared (test) images."""
        return np.isin(image_ids, self.sharedix)


def _field(mat, name, path):
    if name not in mat:
        raise DataError(path, f"a MATLAB variable {name!r}", f"variables {sorted(k for k in mat if not k.startswith('__'))}")
    return np.asarray(mat[name])


def read_design(path):
    """Read ``nsd_expdesign.mat`` (MATLAB v5, 1-based) into a 0-based :class:`Design`."""
    try:
        mat = scipy.io.loadmat(str(path))
    except FileNotFoundError:
        raise DataError(path, "the NSD design file nsd_expdesign.mat", "no such file") from None
    except Exception as err:  # scipy raises several types for corrupt files
        raise DataError(path, "a MATLAB v5 .mat file", f"an unreadable file ({err})") from err
    mo = _field(mat, "masterordering", path).ravel()
    si = _field(mat, "subjectim", path)
    sh = _field(mat, "sharedix", path).ravel()
    if si.ndim != 2:
        raise DataError(path, "subjectim of shape (subjects, images)", f"shape {si.shape}")
    for name, arr, hi in (("masterordering", mo, si.shape[1]), ("subjectim", si, None), ("sharedix", sh, None)):
        if arr.size and (arr.min() < 1 or (hi is not None and arr.max() > hi) or np.any(arr != np.round(arr))):
            raise DataError(path, f"{name} to hold 1-based integer indices" + (f" in 1..{hi}" if hi else ""),
                            f"values in [{arr.min()}, {arr.max()}]")
    return Design(masterordering=mo.astype(np.int64) - 1, subjectim=si.astype(np.int64) - 1,
                  sharedix=np.sort(sh.astype(np.int64) - 1), path=str(path))
