"""Metric networks load only from local files (tiny/random fake weights here), are unavailable otherwise; the tidy
table, stage metrics, caption metrics and ``neurorecon evaluate``."""

import argparse
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm

from neurorecon.artifacts import StageWriter, read_metrics
from neurorecon.config import load_config
from neurorecon.errors import DataError
from neurorecon.evaluation import (EvaluationConfig, add_evaluate_parser, clip_score,
                                   evaluate_captions, evaluate_reconstructions, load_metric_networks,
                                   save_reconstructions, variant_label, write_metrics)
from neurorecon.foundation import tiny_random_foundation
from reference_metrics import loop_two_way

IMAGENET = (torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))


# one torch thread: on a CPU shared with other jobs, 2 threads run these convnets ~10-40x slower
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(**paths):
    return load_config(EvaluationConfig, "smoke", overrides=dict(demo_clip=False, batch_size=4, **paths))


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "alexnet-random.pth"
    torch.save(tvm.alexnet(weights=None).state_dict(), path)
    yield path
    shutil.rmtree(path.parent, ignore_errors=True)  # 240 MB: not kept to the end of the session


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (6, 33, 33, 3), dtype=np.uint8)
    rec = np.clip(gt.astype(int) + rng.integers(-60, 60, gt.shape), 0, 255).astype(np.uint8)
    return gt, rec


def test_a_configured_but_missing_weight_file_raises_naming_it(tmp_path):
    missing = tmp_path / "nope" / "alexnet.pth"
    with pytest.raises(DataError, match=r"nope/alexnet\.pth: expected a torchvision AlexNet.*key 'alexnet'.*"
                                        r"no such file"):
        load_metric_networks(_cfg(alexnet=str(missing)))


def test_unset_weights_make_metrics_unavailable():
    nets = load_metric_networks(_cfg())
    assert nets.available == []
    assert nets.unavailable["AlexNet(5)"] == nets.unavailable["AlexNet(2)"]
    for m in ("AlexNet(2)", "Inception", "CLIP", "EffNet-B", "SwAV"):
        assert nets.unavailable[m].startswith("unavailable (looked for") and "is not set" in nets.unavailable[m]
    gt = np.zeros((3, 9, 9, 3), np.uint8) + np.arange(3, dtype=np.uint8)[:, None, None, None] * 40
    table = evaluate_reconstructions(gt, gt, "m", 1, "averaged", nets)
    row = table.set_index("metric").loc["AlexNet(2)"]
    assert np.isnan(row.value) and "'alexnet' is not set" in row.note
    assert "CLIP" in table.metric.values and "demo-CLIP" not in table.metric.values  # nothing swapped in
    # the demo CLIP is requested but no foundation given: unavailable, naming notebook 02
    nets = load_metric_networks(load_config(EvaluationConfig, "smoke"))
    assert "02_foundation_models" in nets.unavailable["demo-CLIP"]


def test_alexnet_loads_a_local_state_dict_and_matches_a_direct_computation(alexnet_file, images):
    gt, rec = images
    nets = load_metric_networks(_cfg(alexnet=str(alexnet_file)), only={"alexnet"})
    assert [n.key for n in nets.available] == ["alexnet"] and nets.sources()["AlexNet(5)"] == str(alexnet_file)
    table = evaluate_reconstructions(gt, rec, "ridge", 1, "averaged", nets).set_index("metric")
    model = tvm.alexnet(weights=None)
    model.load_state_dict(torch.load(alexnet_file, weights_only=True))
    model.eval()

    def feats(x, upto):
        x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
        x = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False)
        with torch.no_grad():
            return model.features[:upto + 1]((x - IMAGENET[0]) / IMAGENET[1]).flatten(1).numpy()

    for name, layer in (("AlexNet(2)", 4), ("AlexNet(5)", 11)):
        assert table.loc[name, "value"] == pytest.approx(loop_two_way(feats(gt, layer), feats(rec, layer)), abs=1e-9)
        assert "256 px" in table.loc[name, "note"]
    same = evaluate_reconstructions(gt, gt, "ridge", 1, "averaged", nets).set_index("metric")
    assert same.loc["AlexNet(2)", "value"] == 1.0


def test_wrong_weight_file_is_an_error_naming_it(alexnet_file, tmp_path):
    with pytest.raises(DataError, match=r"alexnet-random\.pth.*Inception-v3"):
        load_metric_networks(_cfg(inception=str(alexnet_file)), only={"inception"})
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=r"junk\.pth.*unreadable"):
        load_metric_networks(_cfg(efficientnet=str(junk)), only={"efficientnet"})


@pytest.mark.slow
def test_every_torchvision_network_and_clip_load_from_files(tmp_path, images):
    one = images[0][:1]
    torch.manual_seed(0)
    torch.save(tvm.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), tmp_path / "inc.pth")
    torch.save(tvm.efficientnet_b1(weights=None).state_dict(), tmp_path / "eff.pth")
    # SwAV checkpoints: DataParallel "module." prefixes, projection head and prototypes, no fc
    sd = {f"module.{k}": v for k, v in tvm.resnet50(weights=None).state_dict().items() if not k.startswith("fc.")}
    sd["module.projection_head.0.weight"] = torch.zeros(8, 2048)
    sd["module.prototypes.weight"] = torch.zeros(3, 8)
    torch.save(sd, tmp_path / "swav.pth.tar")
    from neurorecon.foundation.tiny import clip_model_config, tiny_clip

    clip, _ = tiny_clip(image_size=32, layers=1)
    torch.save(clip.state_dict(), tmp_path / "clip.bin")
    (tmp_path / "clip.json").write_text(json.dumps(clip_model_config(32, layers=1)))
    cfg = _cfg(inception=str(tmp_path / "inc.pth"), efficientnet=str(tmp_path / "eff.pth"),
               swav=str(tmp_path / "swav.pth.tar"), clip=str(tmp_path / "clip.bin"),
               clip_config=str(tmp_path / "clip.json"))
    nets = load_metric_networks(cfg)
    assert set(nets.unavailable) == {"AlexNet(2)", "AlexNet(5)"}
    assert nets.metric_names == ["AlexNet(2)", "AlexNet(5)", "Inception", "CLIP", "EffNet-B", "SwAV"]
    sizes = {n.key: n.size for n in nets.available}
    assert sizes == {"inception": 342, "clip": 32, "efficientnet": 255, "swav": 224}  # CLIP: its own input size
    feats = {n.key: n.features(one) for n in nets.available}
    assert feats["inception"]["Inception"].shape == (1, 2048) and feats["swav"]["SwAV"].shape == (1, 2048)
    assert feats["efficientnet"]["EffNet-B"].shape == (1, 1280)
    assert nets.embedder.key == "clip"
    # CLIP: the checkpoint's image embedding with CLIP normalisation
    x = torch.from_numpy(one).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        direct = clip.eval().encode_image((F.interpolate(x, size=(32, 32), mode="bilinear") - mean) / std)
    np.testing.assert_allclose(feats["clip"]["CLIP"], direct.numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def fm():
    return tiny_random_foundation(image_size=32, with_lm=False)


def test_demo_clip_is_reported_under_its_own_name_with_retrieval_and_stage_rows(tmp_path, fm):
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    nets = load_metric_networks(load_config(EvaluationConfig, "smoke"), fm)
    assert [n.metrics for n in nets.available] == [{"demo-CLIP": ("embed", "two_way")}]
    assert nets.embedder is nets.available[0] and "CLIP" in nets.unavailable
    emb = fm.image_embeds(gt, normalize=False).numpy()
    table = evaluate_reconstructions(gt, gt[::-1].copy(), "ridge", 1, variant_label("averaged"), nets,
                                     brain_embeds=emb)
    t = table.set_index("metric")
    assert t.loc["demo-CLIP", "value"] == pytest.approx(loop_two_way(emb, emb[::-1]), abs=1e-6)
    assert np.isnan(t.loc["CLIP", "value"])
    assert t.loc["Retrieval brain->image", "value"] == 1.0 and "fewer than 300" in t.loc["Retrieval brain->image",
                                                                                           "note"]
    assert list(table.columns) == ["method", "subject", "metric", "value", "variant", "note"]
    cfg = load_config(EvaluationConfig, "smoke")
    with StageWriter(cfg, target=tmp_path / "stage") as w:
        n = write_metrics(w, table)
    rows = read_metrics(tmp_path / "stage")
    assert n == len(rows) == table.value.notna().sum()
    assert set(rows.split) == {"test-averaged"} and "CLIP" not in set(rows.metric)
    assert variant_label("single-trial", 982) == "single-trial-982"


def test_caption_metrics_and_clip_s(fm):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    refs = [["a red ball on the grass", "a ball"], ["two blue cars in a room"], ["a small green tree"]]
    cands = ["a red ball on grass", "two blue cars", "a tree"]
    table = evaluate_captions(refs, cands, "nv2l", 1, fm=fm, images=images, meteor=False, tokenizer="simple",
                              clip_s_prefix="A photo depicts ").set_index("metric")
    assert 0 < table.loc["BLEU-1", "value"] <= 1 and table.loc["CIDEr", "value"] > 0
    assert np.isnan(table.loc["SPICE", "value"]) and "unavailable" in table.loc["SPICE", "note"]
    assert np.isnan(table.loc["METEOR", "value"]) and "unavailable" in table.loc["METEOR", "note"]
    img = F.normalize(fm.image_embeds(images, normalize=False), dim=-1)
    expected = np.mean([2.5 * max(float(img[i] @ fm.text_embeds(["A photo depicts " + c])[0]), 0.0)
                        for i, c in enumerate(cands)])
    assert table.loc["demo-CLIP-S", "value"] == pytest.approx(expected, abs=1e-5)
    assert "CLIP-S" not in table.index
    assert clip_score(fm, images, cands, prefix="A photo depicts ") == pytest.approx(expected, abs=1e-5)


def _evaluate(argv):
    parser = argparse.ArgumentParser()
    add_evaluate_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", *argv])
    return args.func(args)


def test_evaluate_command_reads_npz_and_prints_json(tmp_path, capsys, alexnet_file):
    rng = np.random.default_rng(3)
    ids = np.array([5, 17, 3, 40])
    gt = rng.integers(0, 256, (4, 21, 21, 3), dtype=np.uint8)
    np.savez(tmp_path / "gt.npz", images=gt, image_ids=ids)
    order = np.array([2, 0, 3, 1])
    save_reconstructions(tmp_path / "recs" / "ridge.npz", gt[order], ids[order], subject=2, variant="single-trial")
    user = tmp_path / "mine.yaml"
    user.write_text(f"smoke:\n  demo_clip: false\n  alexnet: {alexnet_file}\n")
    assert _evaluate(["--rec", str(tmp_path / "recs"), "--gt", str(tmp_path / "gt.npz"), "--profile", "smoke",
                      "--config-file", str(user), "--json"]) == 0
    rows = {r["metric"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["PixCorr"]["value"] == pytest.approx(1.0) and rows["AlexNet(5)"]["value"] == 1.0
    assert rows["SSIM"]["method"] == "ridge" and rows["SSIM"]["subject"] == "2"
    assert rows["SSIM"]["variant"] == "single-trial" and rows["Inception"]["value"] is None
    assert _evaluate(["--rec", str(tmp_path / "recs" / "ridge.npz"), "--gt", str(tmp_path / "gt.npz"),
                      "--profile", "smoke", "--pixels-only", "--method", "x"]) == 0
    out = capsys.readouterr().out
    assert "PixCorr" in out and "AlexNet" not in out
    np.savez(tmp_path / "bad.npz", images=gt[:2], image_ids=np.array([99, 5]))
    with pytest.raises(DataError, match=r"gt\.npz.*missing ids \[99\]"):
        _evaluate(["--rec", str(tmp_path / "bad.npz"), "--gt", str(tmp_path / "gt.npz"), "--pixels-only"])
    np.savez(tmp_path / "bad2.npz", pictures=gt)
    with pytest.raises(DataError, match=r"bad2\.npz.*'images' and 'image_ids'"):
        _evaluate(["--rec", str(tmp_path / "bad2.npz"), "--gt", str(tmp_path / "gt.npz"), "--pixels-only"])
