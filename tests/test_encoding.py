import json
import types

import numpy as np
import pytest
import torch

from neurorecon.encoding import (FMRIAutoencoder, FMRIEncoder, StackedMaps, masked_mse, patchify, reconstruction_r2,
                                 sincos_2d, unpatchify, visual_mask)
from neurorecon.errors import DataError
from neurorecon.training import fit


def test_sincos_positions_and_patches_round_trip():
    pe = sincos_2d(16, 4, 4)
    assert pe.shape == (17, 16) and torch.all(pe[0] == 0)
    assert len({tuple(r) for r in pe[1:].numpy().round(5)}) == 16  # every patch position distinct
    x = torch.randn(3, 16, 16)
    p = patchify(x, 4)
    assert p.shape == (3, 16, 16) and torch.equal(p[0, 1], x[0, :4, 4:8].reshape(-1))
    assert torch.equal(unpatchify(p, 4, 16, 16), x)


def test_encoder_tokens_and_save_load(tmp_path):
    torch.manual_seed(0)
    enc = FMRIEncoder(map_size=32, patch=8, width=32, depth=1, heads=2)
    x = torch.randn(2, 32, 32)
    tok = enc(x)
    assert tok.shape == (2, 17, 32) and enc.num_tokens == 17
    enc.save_pretrained(tmp_path / "enc")
    again = FMRIEncoder.from_pretrained(tmp_path / "enc")
    assert torch.allclose(again(x), tok)
    with pytest.raises(ValueError, match="multiple of patch"):
        FMRIEncoder(map_size=30, patch=8)


def test_decoder_rebuilds_from_cls_alone():
    torch.manual_seed(0)
    ae = FMRIAutoencoder(map_size=16, patch=4, width=32, depth=1, heads=2, decoder_width=32, decoder_depth=1,
                         decoder_heads=2).eval()
    x = torch.randn(2, 16, 16)
    ref = ae(x)
    # changing a patch token changes the output only through the CLS token: cut the CLS path and nothing flows
    with torch.no_grad():
        for p in ae.bottleneck.parameters():
            p.zero_()
    out1 = ae(x)
    out2 = ae(torch.randn(2, 16, 16))
    assert not torch.allclose(ref, out1)
    assert torch.allclose(out1, out2, atol=1e-6)  # the decoder sees nothing but the (now constant) bottleneck


def test_masked_mse_ignores_pixels_outside_the_mask():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2] = True
    a, b = torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)
    b[0, 3, 3] = 100.0
    assert masked_mse(a, b, mask) == 0
    b[0, 0, 0] = 2.0
    assert masked_mse(a, b, mask) == pytest.approx(4 / 8)


def test_r2_definition():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(10, 4, 4))
    mask = np.ones((4, 4), bool)
    assert reconstruction_r2(maps, maps, mask) == pytest.approx(1.0)
    assert reconstruction_r2(maps, np.broadcast_to(maps.mean(0), maps.shape), mask) == pytest.approx(0.0)


def test_autoencoder_learns_structured_maps():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(3, 16 * 16)).astype(np.float32)
    maps = (rng.normal(size=(256, 3)).astype(np.float32) @ basis).reshape(-1, 16, 16)
    mask = torch.ones(16, 16, dtype=torch.bool)
    torch.manual_seed(0)
    ae = FMRIAutoencoder(map_size=16, patch=4, width=32, depth=1, heads=2, decoder_width=32, decoder_depth=1,
                         decoder_heads=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster, and robust on a shared CPU
    try:
        res = fit(ae, lambda m, b, g: masked_mse(m(b["maps"]), b["maps"], mask),
                  StackedMaps([maps[:128], maps[128:]]), steps=150, batch_size=32, lr=3e-3, progress=False)
    finally:
        torch.set_num_threads(threads)
    ae.eval()
    with torch.no_grad():
        rec = ae(torch.from_numpy(maps[:64])).numpy()
    assert res.losses[-1][1] < 0.5 * res.losses[0][1]
    assert reconstruction_r2(maps[:64], rec, mask.numpy()) > 0.5


def test_stacked_maps_gathers_across_arrays():
    a = np.arange(3 * 2 * 2, dtype=np.float16).reshape(3, 2, 2)
    b = -np.arange(2 * 2 * 2, dtype=np.float16).reshape(2, 2, 2) - 1
    s = StackedMaps([a, b])
    out = s.batch([4, 0, 3, 0])["maps"].numpy()
    assert len(s) == 5
    assert np.array_equal(out, np.stack([b[1], a[0], b[0], a[0]]).astype(np.float32))


def test_visual_mask_errors_without_flat_maps(tmp_path):
    store = types.SimpleNamespace(meta={"flat_shape": None}, folder=tmp_path, subjects=[1])
    with pytest.raises(DataError, match="store.json: expected a prepared store with flat maps"):
        visual_mask(store)


def test_encoding_stage_holds_out_a_subject(smoke_data_home, monkeypatch):
    from neurorecon.artifacts import read_metrics
    from neurorecon.config import load_config
    from neurorecon.encoding import EncodingConfig, load_encoder, run_encoding_stage

    monkeypatch.setenv("NEURORECON_HOME", str(smoke_data_home))
    cfg = load_config(EncodingConfig, "smoke", overrides={"steps": 3})
    assert cfg.holdout_subjects == [2]
    folder = run_encoding_stage(cfg, force=True, progress=False)
    pool = json.loads((folder / "pool.json").read_text())
    assert pool["subjects"] == [1] and not any(k.startswith("subj02") for k in pool["counts"])
    m = read_metrics(folder)
    r2 = m[m.metric == "r2"].set_index("subject").value
    held = m[m.metric == "in_pretraining"].set_index("subject").value
    assert set(r2.index) == {"1", "2"} and held["2"] == 0 and held["1"] == 1
    assert load_encoder("smoke").num_tokens == 17
