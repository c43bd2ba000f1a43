"""The LLaVA export is what LLaVA's custom-data fine-tuning reads (a JSON list of id / image / conversations, the
image path relative to the image folder), and every record names the exact fMRI trials it uses."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from neurorecon.data import open_store
from neurorecon.data.stage import store_path
from neurorecon.errors import DataError
from neurorecon.nv2l.export import export_llava, read_llava_export
from neurorecon.nv2l.instructions import build_instruction_data


@pytest.fixture(scope="module")
def store(smoke_data_home, home_set_to):
    with home_set_to(smoke_data_home):
        yield open_store(store_path("smoke"))


def _llava_reads(json_path, image_folder):
    """What LLaVA's supervised dataset does with a custom-data file: a list of samples, each image opened from
    ``os.path.join(image_folder, sample["image"])`` as RGB, conversations of alternating human/gpt turns whose
    first human turn carries the ``<image>`` token."""
    samples = json.load(open(json_path))
    assert isinstance(samples, list) and samples
    assert len({s["id"] for s in samples}) == len(samples)
    for s in samples:
        Image.open(os.path.join(image_folder, s["image"])).convert("RGB").load()
        roles = [t["from"] for t in s["conversations"]]
        assert roles == ["human", "gpt"] * (len(roles) // 2) and roles
        assert s["conversations"][0]["value"].count("<image>") == 1
        assert all("<image>" not in t["value"] for t in s["conversations"][1:])
    return samples


def test_export_is_llava_custom_data_with_fmri_references(store, tmp_path):
    subjects = store.subjects
    sub = store.subject(subjects[0])
    train_ids = np.unique(sub.train_image_ids)[:6]
    test_ids = sub.test_image_ids[:4]
    size = store.meta["image_size"]
    tr = build_instruction_data(store.annotations, train_ids, size)
    te = build_instruction_data(store.annotations, test_ids, size)
    path = export_llava(tr, store, tmp_path / "out", "train", subjects)
    export_llava(te, store, tmp_path / "out", "test", subjects)
    samples = _llava_reads(path, tmp_path / "out" / "images")
    assert len(samples) == len(tr)
    records, store_folder = read_llava_export(tmp_path / "out", "train")
    assert records == samples
    for r in records:  # every trial of the image, and only those, by subject
        for ref in r["fmri"]:
            s = store.subject(ref["subject"])
            assert (np.asarray(s.train_image_ids)[ref["rows"]] == r["image_id"]).all()
            assert len(ref["rows"]) == int((np.asarray(s.train_image_ids) == r["image_id"]).sum())
            x = np.load(store_folder / ref["array"], mmap_mode="r")[ref["rows"]]
            assert x.shape == (len(ref["rows"]), s.train_common.shape[1])
            np.testing.assert_array_equal(x, np.asarray(s.train_common)[ref["rows"]])
            assert ref["sessions"] == np.asarray(s.train_sessions)[ref["rows"]].tolist()
        assert r["subjects"] == sorted(f["subject"] for f in r["fmri"])
        # the image written is the store's image of that id
        im = np.asarray(Image.open(tmp_path / "out" / "images" / r["image"]).convert("RGB"))
        np.testing.assert_array_equal(im, store.get_images([r["image_id"]])[0])
    test = _llava_reads(tmp_path / "out" / "sft_data_te.json", tmp_path / "out" / "images")
    assert all(set(r["subjects"]) == set(subjects) for r in test)  # shared images: seen by every subject
    assert all(ref["array"].endswith("test_trial_common.npy") for r in test for ref in r["fmri"])
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert set(info["splits"]) == {"train", "test"} and info["image_folder"] == "images"


def test_export_names_images_without_trials(store, tmp_path):
    sub = store.subject(store.subjects[0])
    te = build_instruction_data(store.annotations, sub.test_image_ids[:2], store.meta["image_size"])
    with pytest.raises(DataError, match="train trials of subjects"):
        export_llava(te, store, tmp_path, "train", store.subjects[:1])
