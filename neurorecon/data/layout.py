"""Paths of the raw NSD files, relative to an NSD root (see ``docs/nsd_files.md``)."""

import re
from pathlib import Path

__all__ = ["NSDLayout", "SESSION_RE"]

SESSION_RE = re.compile(r"^betas_session(\d{2})\.(hdf5|nii\.gz)$")


class NSDLayout:
    """The raw NSD tree under ``root``.

    Parameters
    ----------
    root : str or Path
        The NSD root (holding ``nsddata/``, ``nsddata_betas/``, ``nsddata_stimuli/``).
    coco_root : str or Path, optional
        Folder with COCO ``captions_<split>.json`` / ``instances_<split>.json``
        (default ``nsddata_stimuli/stimuli/nsd/annotations``).
    """

    def __init__(self, root, coco_root=None):
        self.root = Path(root)
        self.coco_root = Path(coco_root) if coco_root else self.root / "nsddata_stimuli/stimuli/nsd/annotations"

    @property
    def expdesign(self):
        return self.root / "nsddata/experiments/nsd/nsd_expdesign.mat"

    @property
    def stim_info(self):
        return self.root / "nsddata/experiments/nsd/nsd_stim_info_merged.csv"

    @property
    def stimuli(self):
        return self.root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"

    @property
    def default_flatmap(self):
        return self.root / "neurorecon_flatmap.npz"

    def captions(self, split):
        return self.coco_root / f"captions_{split}.json"

    def instances(self, split):
        return self.coco_root / f"instances_{split}.json"

    @staticmethod
    def subj(subject):
        return f"subj{int(subject):02d}"

    def func_dir(self, subject):
        return self.root / "nsddata/ppdata" / self.subj(subject) / "func1pt8mm"

    def roi(self, subject, name):
        """``name`` is ``nsdgeneral``, ``prf-visualrois``, ``streams`` (under roi/) or ``brainmask``."""
        base = self.func_dir(subject)
        return base / "brainmask.nii.gz" if name == "brainmask" else base / "roi" / f"{name}.nii.gz"

    def betas_dir(self, subject):
        return self.root / "nsddata_betas/ppdata" / self.subj(subject) / "func1pt8mm/betas_fithrf_GLMdenoise_RR"

    def session_file(self, subject, session, fmt="hdf5"):
        ext = "hdf5" if fmt == "hdf5" else "nii.gz"
        return self.betas_dir(subject) / f"betas_session{int(session):02d}.{ext}"

    def surface_dir(self, subject):
        return self.root / "nsddata_betas/ppdata" / self.subj(subject) / "fsaverage/betas_fithrf_GLMdenoise_RR"

    def surface_file(self, subject, hemi, session):
        return self.surface_dir(subject) / f"{hemi}.betas_session{int(session):02d}.mgh"

    def resting_file(self, subject, hemi):
        return self.root / "nsdmini_resting" / self.subj(subject) / f"{hemi}.resting.mgh"

    def sessions(self, subject):
        """Session files found for a subject: ``{session: path}``; HDF5 wins where both formats exist."""
        found = {}
        folder = self.betas_dir(subject)
        if not folder.is_dir():
            return found
        for path in sorted(folder.iterdir()):
            m = SESSION_RE.match(path.name)
            if m:
                ses = int(m.group(1))
                if ses not in found or m.group(2) == "hdf5":
                    found[ses] = path
        return dict(sorted(found.items()))

    def subjects_present(self):
        """Subjects (ints) whose betas folder exists."""
        base = self.root / "nsddata_betas/ppdata"
        if not base.is_dir():
            return []
        return sorted(int(p.name[4:]) for p in base.glob("subj[0-9][0-9]") if self.betas_dir(int(p.name[4:])).is_dir())
