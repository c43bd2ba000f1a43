import h5py
import numpy as np
import yaml

from neurorecon.cli import main
from neurorecon.data.check import check_data, load_manifest, manifest_from_tree

from rawnsd import write_tree


def test_shipped_manifests_parse():
    for profile in ("smoke", "demo", "full"):
        m = load_manifest(profile)
        assert m["profile"] == profile and len(m["files"]) > 5
    full = load_manifest("full")
    betas = [f for f in full["files"] if f["kind"] == "betas"]
    assert [f["shape"] for f in betas][0] == [750, 83, 104, 81] and all(f["sessions"] == 37 for f in betas)


def test_check_data_reports_missing_and_malformed(tmp_path):
    write_tree(tmp_path / "nsd")
    manifest = manifest_from_tree(tmp_path / "nsd", "toy", exact=True)
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(manifest))
    assert check_data(tmp_path / "nsd", tmp_path / "m.yaml") == []
    betas = tmp_path / "nsd/nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    (betas / "betas_session02.hdf5").unlink()
    with h5py.File(betas / "betas_session01.hdf5", "w") as f:
        f.create_dataset("betas", data=np.zeros((11, 5, 9, 7), np.float32))
    problems = check_data(tmp_path / "nsd", tmp_path / "m.yaml")
    assert any("betas_session02.hdf5 or betas_session02.nii.gz: missing" in p for p in problems)
    assert any("betas_session01.hdf5: expected dtype int16, found float32" in p for p in problems)
    (tmp_path / "nsd/nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5").write_bytes(b"not hdf5")
    problems = check_data(tmp_path / "nsd", tmp_path / "m.yaml")
    assert any("nsd_stimuli.hdf5: unreadable" in p for p in problems)
    assert check_data(tmp_path / "nowhere", "smoke") == [f"{tmp_path / 'nowhere'}: expected the NSD root folder, "
                                                        "found no such folder"]


def test_cli_check_data_exit_codes(tmp_path, capsys):
    write_tree(tmp_path / "nsd")
    assert main(["check-data", "--nsd-root", str(tmp_path / "nsd"), "--profile", "full"]) == 1
    err = capsys.readouterr().err
    assert "nsd_expdesign.mat: expected variable masterordering of shape [1, 30000], found [1, 42]" in err
    manifest = manifest_from_tree(tmp_path / "nsd", "toy")
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(manifest))
    assert main(["check-data", "--nsd-root", str(tmp_path / "nsd"), "--manifest", str(tmp_path / "m.yaml")]) == 0


def test_smoke_manifest_matches_a_fresh_simulation(tmp_path):
    from neurorecon.simulate import simulate

    simulate(tmp_path / "nsd", profile="smoke", seed=0, progress=False)
    fresh = manifest_from_tree(tmp_path / "nsd", "smoke")
    shipped = load_manifest("smoke")
    assert fresh["files"] == shipped["files"], "regenerate data_manifests/smoke.yaml (see its description)"
    assert check_data(tmp_path / "nsd", "smoke") == []
    simulate(tmp_path / "nsd7", profile="smoke", seed=7, progress=False)  # volume sizes depend on the seed
    assert check_data(tmp_path / "nsd7", "smoke") == []
