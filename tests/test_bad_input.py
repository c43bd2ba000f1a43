"""Bad raw input gives a clear error naming the file and what was expected, exits non-zero, writes nothing."""

import contextlib
import io
import re

import h5py
import nibabel as nib
import numpy as np
import pytest

from neurorecon.cli import main
from neurorecon.data import prepare
from neurorecon.errors import DataError

from rawnsd import write_tree

BETAS = "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"


@pytest.fixture
def tree(tmp_path):
    write_tree(tmp_path / "nsd")
    return tmp_path / "nsd"


def _prepare_fails(tree, tmp_path, match, subjects=(1, 3)):
    out = tmp_path / "store"
    (out / "keep").mkdir(parents=True)
    (out / "keep" / "old.txt").write_text("an earlier store")
    with pytest.raises(DataError, match=match) as info:
        prepare(tree, out, subjects=list(subjects), progress=False)
    # nothing already written is lost, nothing half-written is left
    assert (out / "keep" / "old.txt").read_text() == "an earlier store"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nsd", "store"]
    # the command line says the same and exits non-zero, again without touching the earlier store
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["prepare", "--nsd-root", str(tree), "--out", str(out), "--quiet", "--subjects",
                     ",".join(str(s) for s in subjects)])
    assert code == 2 and re.search(match, err.getvalue()), err.getvalue()
    assert (out / "keep" / "old.txt").read_text() == "an earlier store"
    return str(info.value)


def test_missing_session_in_the_middle(tree, tmp_path):
    h5 = tree / BETAS / "betas_session01.hdf5"
    h5.rename(tree / BETAS / "betas_session03.hdf5")
    msg = _prepare_fails(tree, tmp_path, r"betas_session01\.hdf5: expected session 01")
    assert "no such file" in msg


def test_truncated_hdf5(tree, tmp_path):
    h5 = tree / BETAS / "betas_session02.hdf5"
    data = h5.read_bytes()
    h5.write_bytes(data[: len(data) // 2])
    _prepare_fails(tree, tmp_path, r"betas_session02\.hdf5: expected a readable HDF5 betas file.*truncated")


def test_hdf5_axes_not_reversed(tree, tmp_path):
    h5 = tree / BETAS / "betas_session01.hdf5"
    with h5py.File(h5, "r") as f:
        data = f["betas"][()]
    with h5py.File(h5, "w") as f:
        f.create_dataset("betas", data=np.ascontiguousarray(data.transpose(0, 3, 2, 1)))  # (T, X, Y, Z)
    msg = _prepare_fails(tree, tmp_path, r"betas_session01\.hdf5: expected a volume of shape \(7, 9, 5\)")
    assert "axes look reversed" in msg and "nsdgeneral.nii.gz" in msg


def test_roi_shape_disagrees_with_betas(tree, tmp_path):
    roi = tree / "nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((7, 9, 6), np.float32), np.eye(4)), roi)
    _prepare_fails(tree, tmp_path, r"betas_session01\.hdf5: expected a volume of shape \(7, 9, 6\)")


def test_nan_betas(tree, tmp_path):
    h5 = tree / BETAS / "betas_session02.hdf5"
    with h5py.File(h5, "r") as f:
        data = f["betas"][()].astype(np.float32) / 300
    data[...] = np.nan
    with h5py.File(h5, "w") as f:
        f.create_dataset("betas", data=data)
    _prepare_fails(tree, tmp_path, r"betas_session02\.hdf5: expected finite betas.*non-finite")


def test_subject_absent_from_design(tree, tmp_path):
    _prepare_fails(tree, tmp_path, r"nsd_expdesign\.mat: expected subject 9", subjects=[9])


def test_subject_without_betas_folder(tree, tmp_path):
    _prepare_fails(tree, tmp_path, r"subj02/func1pt8mm/betas_fithrf_GLMdenoise_RR: expected the betas folder",
                   subjects=[2])


def test_missing_stimuli(tree, tmp_path):
    (tree / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5").unlink()
    _prepare_fails(tree, tmp_path, r"nsd_stimuli\.hdf5: expected the NSD stimuli file")


def test_cli_exit_code_and_message(tree, tmp_path, capsys):
    (tree / BETAS / "betas_session01.hdf5").unlink()
    code = main(["prepare", "--nsd-root", str(tree), "--out", str(tmp_path / "store"), "--subjects", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "betas_session01.hdf5: expected session 01" in err
    assert not (tmp_path / "store").exists()


def test_missing_coco_captions_file_is_an_error_not_empty_captions(tree, tmp_path):
    (tree / "nsddata_stimuli/stimuli/nsd/annotations/captions_val2017.json").unlink()
    msg = _prepare_fails(tree, tmp_path, r"captions_val2017\.json: expected the COCO captions file of split val2017")
    assert "no such file" in msg and "coco-root" in msg


def test_coco_image_without_captions_is_an_error(tree, tmp_path):
    import json

    path = tree / "nsddata_stimuli/stimuli/nsd/annotations/captions_val2017.json"
    data = json.loads(path.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] % 2]  # even cocoIds lose theirs
    path.write_text(json.dumps(data))
    _prepare_fails(tree, tmp_path, r"expected captions for every COCO image.*none for \d+ cocoId\(s\), e\.g\. \[5\d\d")
