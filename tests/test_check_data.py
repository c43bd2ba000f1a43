import h5py
import pytest
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
    assert [f["shape"] for f in betas][0] == [750, 83, 104, 81]
    sessions = {int(f["path"].split("/subj")[1][:2]): f["sessions"] for f in betas}
    assert sessions == {1: 37, 2: 37, 3: 32, 4: 30, 5: 37, 6: 32, 7: 37, 8: 30}  # the public release


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


def test_check_only_the_subjects_a_run_prepares(tmp_path):
    """The full manifest lists all 8 subjects (NeuroPictor pretrains on them); a run configured for fewer checks
    only theirs, and the files of no subject always."""
    from neurorecon.simulate import simulate

    simulate(tmp_path / "nsd", profile="smoke", seed=0, progress=False)  # subjects 1 and 2
    manifest = load_manifest("smoke")
    extra = [dict(e, path=e["path"].replace("subj02", "subj03")) for e in manifest["files"] if "/subj02/" in e["path"]]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(dict(manifest, files=manifest["files"] + extra)))
    missing = check_data(tmp_path / "nsd", tmp_path / "m.yaml")
    assert missing and all("subj03" in p for p in missing)
    assert check_data(tmp_path / "nsd", tmp_path / "m.yaml", subjects=[1, 2]) == []
    assert check_data(tmp_path / "nsd", tmp_path / "m.yaml", subjects=[1, 3]) == missing
    full = load_manifest("full")["files"]
    assert {int(e["path"].split("/subj")[1][:2]) for e in full if "/subj" in e["path"]} == set(range(1, 9))


def test_cli_check_data_subjects_must_be_numbers(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["check-data", "--nsd-root", str(tmp_path), "--subjects", "1,x"])
    assert exc.value.code == 2  # argparse's usage error, not a traceback
    assert "expected comma-separated whole numbers like 1,2,5,7, got '1,x'" in capsys.readouterr().err
