"""Brain LLaVA training that fits a real LLM: a bf16 frozen base, fp32 LoRA adapters and projector, gradient
checkpointing, full fine-tuning in fp32, and adapter-only saving/loading (a tiny Llama stands in for Llama-3-8B)."""

import copy
import json

import numpy as np
import pytest
import torch

from neurorecon.errors import ConfigError, DataError
from neurorecon.foundation.tiny import DEFAULT_TEXTS, tiny_lm, train_bpe_tokenizer
from neurorecon.nv2l.llava import BrainLlava
from neurorecon.nv2l.tuning import (_fit_accepts, llava_batches, llava_loss, trainable_summary,
                                    train_llava_stage)
from neurorecon.nv2l.vit3d import ViT3D

pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

COLOURS = ["red", "blue", "green", "yellow"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny Llama written as a transformers folder (the base LM of the full profile is a local folder)."""
    folder = tmp_path_factory.mktemp("base_lm")
    tok = train_bpe_tokenizer(DEFAULT_TEXTS + ["It is yellow."])
    lm = tiny_lm(len(tok))
    # A pretrained LM's (tied) embeddings are far from their init; a random one's (std 0.02 behind a unit RMSNorm)
    # cap the logits near +-1.3 (pretrained Llamas reach tens), so no adapter could fit anything: give them a
    # trained model's scale.
    with torch.no_grad():
        lm.get_input_embeddings().weight.mul_(8)
    lm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _llava(base, dtype=torch.bfloat16):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype)
    tok = AutoTokenizer.from_pretrained(str(base))
    torch.manual_seed(0)
    enc = ViT3D((8, 8, 4), np.argwhere(np.ones((8, 8, 4), bool)), patch_size=4, width=32, depth=2, heads=2,
                head_hidden=16, clip_dim=8, latent_shape=(1, 2, 2)).eval()
    return BrainLlava(enc, lm, tok)


def _data(llava, n=16, colours=COLOURS):
    """``n`` records "What colour is it?" -> "It is <colour>." and voxels that encode the colour (one noisy code per
    colour): (batches, voxels). Also the data of tests/fsdp_worker.py."""
    rng = np.random.default_rng(0)
    k = len(colours)
    codes = rng.normal(size=(4, 256)).astype(np.float32) * 2
    vox = torch.from_numpy(np.stack([codes[i % k] + 0.1 * rng.normal(size=256) for i in range(n)]).astype(np.float32))
    recs = [dict(image_id=i, type="brief", conversations=[
        {"from": "human", "value": "<image>\nWhat colour is it?"},
        {"from": "gpt", "value": f"It is {colours[i % k]}."}]) for i in range(n)]
    rows = np.arange(n)[:, None]
    return llava_batches(recs, llava.tokenizer, lambda ids: (rows[ids], np.ones(len(ids), np.int64)), 64), vox


def _grads(llava, data, vox):
    """One backward pass of the LLaVA loss; the names of the parameters that received a gradient."""
    llava.zero_grad(set_to_none=True)
    llava.train()
    llava_loss(vox)(llava, data.batch(np.arange(4)), torch.Generator().manual_seed(0)).backward()
    return {n for n, p in llava.named_parameters() if p.grad is not None}


def test_lora_on_a_bf16_base_trains_only_fp32_adapters_and_projector(base, tmp_path):
    llava = _llava(base)
    data, vox = _data(llava)
    base0 = {k: v.clone() for k, v in llava.lm.state_dict().items()}
    train_llava_stage(llava, data, vox, 1, steps=3, batch_size=8, lr=1e-3, progress=False,
                      gradient_checkpointing=True)
    assert all(torch.equal(v, llava.lm.state_dict()[k]) for k, v in base0.items())  # stage 1: LM frozen
    r2 = train_llava_stage(llava, data, vox, 2, steps=100, batch_size=8, lr=3e-3, progress=False, lora_r=8,
                           lora_alpha=16, lora_dropout=0.0, gradient_checkpointing=True)
    s = trainable_summary(llava)
    assert s["trainable_dtypes"] == ["float32"] and "bfloat16" in s["frozen_dtypes"]
    names = {n for n, p in llava.named_parameters() if p.requires_grad}
    assert names and all(n.startswith("projector.") or ".lora_" in n for n in names)
    assert any(".lora_A." in n and "mlp.down_proj" in n for n in names)  # every linear layer of a block adapted
    assert _grads(llava, data, vox) == names  # gradients reach exactly the trainable parameters
    state = llava.lm.get_base_model().state_dict()
    assert all(torch.equal(v, state[k.replace(".weight", ".base_layer.weight")] if k.replace(
        ".weight", ".base_layer.weight") in state else state[k]) for k, v in base0.items())  # base untouched
    assert r2.losses[-1][1] < 0.1 * r2.losses[0][1]
    llava.eval()
    answers = llava.generate(vox[:8].numpy(), "What colour is it?", max_new_tokens=8)
    assert sum(a == f"It is {COLOURS[i % 4]}." for i, a in enumerate(answers)) >= 6  # answers read the fMRI

    folder = llava.save_pretrained(tmp_path / "bl")
    assert (folder / "lm_adapter" / "adapter_model.safetensors").is_file() and not (folder / "lm").exists()
    again = BrainLlava.from_pretrained(folder)
    assert next(again.lm.get_base_model().parameters()).dtype == torch.bfloat16
    assert again.generate(vox[:8].numpy(), "What colour is it?", max_new_tokens=8) == answers
    with pytest.raises(DataError, match="base LM folder"):
        BrainLlava.from_pretrained(folder, base_lm=tmp_path / "nowhere")


def test_a_lora_checkpoint_holds_adapters_and_projector_and_resumes_exactly(base, tmp_path):
    """A stage-2 checkpoint is for resuming over the same frozen base: it leaves the base LM (and the frozen
    ViT3D) out, which at Llama-3-8B's size is 16 GB of bf16 weights per checkpoint."""
    from safetensors import safe_open

    def run(ckpt_dir=None, stop_after=None):
        llava = _llava(base)
        data, vox = _data(llava)
        train_llava_stage(llava, data, vox, 2, steps=6, batch_size=8, lr=3e-3, progress=False, lora_r=4,
                          lora_alpha=8, lora_dropout=0.0, ckpt_dir=ckpt_dir, ckpt_every=2, stop_after=stop_after)
        return {n: p.detach().clone() for n, p in llava.named_parameters() if p.requires_grad}

    whole = run()
    run(tmp_path / "ck", stop_after=3)
    latest = tmp_path / "ck" / "latest"
    with safe_open(str(latest / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    buffers = {n for n, _ in _llava(base).named_buffers()}  # (the ViT3D's normalisation statistics: kept)
    assert saved and all(k.startswith("projector.") or ".lora_" in k for k in saved - buffers), sorted(saved)[:5]
    assert {k for k in saved if ".lora_" in k} == {k for k in whole if ".lora_" in k}
    assert json.loads((latest / "step.json").read_text())["frozen_omitted"] > 0
    resumed = run(tmp_path / "ck")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_full_fine_tuning_checkpoint_with_tied_embeddings_resumes_exactly(base, tmp_path):
    """Every LM weight trains (lora_r 0): the checkpoint keeps them, the tied input/output embedding once (as
    accelerate's safetensors writer does), and the key check accepts the missing tied twin."""
    from safetensors import safe_open

    def run(ckpt_dir=None, stop_after=None):
        llava = _llava(base, torch.float32)
        assert llava.lm.config.tie_word_embeddings
        data, vox = _data(llava)
        train_llava_stage(llava, data, vox, 2, steps=4, batch_size=8, lr=1e-3, progress=False, lora_r=0,
                          ckpt_dir=ckpt_dir, ckpt_every=2, stop_after=stop_after)
        return {n: p.detach().clone() for n, p in llava.named_parameters() if p.requires_grad}

    whole = run()
    run(tmp_path / "ck", stop_after=3)
    with safe_open(str(tmp_path / "ck" / "latest" / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert any(k.startswith("lm.") for k in saved)
    pair = {"lm.lm_head.weight", "lm.model.embed_tokens.weight"}
    assert pair <= set(_llava(base).state_dict()) and len(pair & saved) == 1  # one name of the tied pair
    resumed = run(tmp_path / "ck")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_gradient_checkpointing_gives_the_same_training(base):
    a, b = _llava(base, torch.float32), _llava(base, torch.float32)
    data, vox = _data(a)
    calls = {}
    for llava, ckpt in ((a, False), (b, True)):
        torch.manual_seed(1)  # the LoRA initialisation
        attn = llava.lm.model.layers[0].self_attn  # the first module inside the checkpointed layer forward
        hook = attn.register_forward_pre_hook(lambda *_, c=ckpt: calls.__setitem__(c, calls.get(c, 0) + 1))
        train_llava_stage(llava, data, vox, 2, steps=3, batch_size=4, lr=1e-3, progress=False, lora_r=4,
                          lora_dropout=0.0, gradient_checkpointing=ckpt)
        hook.remove()
    assert calls == {False: 3, True: 6}  # checkpointing recomputes each layer's forward in the backward pass
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.allclose(sa[k], sb[k], atol=1e-5) for k in sa)
    assert not b.lm.get_base_model().is_activation_checkpointing  # switched off again for generation


def test_full_fine_tuning_makes_the_lm_fp32_and_trainable(base):
    llava = _llava(base)
    data, vox = _data(llava)
    train_llava_stage(llava, data, vox, 2, steps=2, batch_size=4, lr=1e-3, progress=False, lora_r=0)
    s = trainable_summary(llava)
    assert s["trainable_dtypes"] == ["float32"] and s["frozen_dtypes"] == ["float32"]  # frozen = the ViT3D
    assert all(p.requires_grad for p in llava.lm.parameters())
    with pytest.raises(ConfigError, match="lora_targets"):
        train_llava_stage(copy.deepcopy(llava), data, vox, 2, steps=1, batch_size=4, lr=1e-3, progress=False,
                          lora_r=4, lora_targets=["query_key_value"])


def test_gradient_accumulation(base):
    llava = _llava(base, torch.float32)
    data, vox = _data(llava)
    if not _fit_accepts("grad_accum"):
        with pytest.raises(ConfigError, match="grad_accum"):
            train_llava_stage(llava, data, vox, 1, steps=1, batch_size=4, lr=1e-3, progress=False, grad_accum=2)
        return
    res = train_llava_stage(llava, data, vox, 1, steps=2, batch_size=4, lr=1e-3, progress=False, grad_accum=2)
    assert res.steps == 2


def test_an_lm_path_loads_in_the_foundation_dtype(base):
    from types import SimpleNamespace

    from neurorecon.nv2l.stage import load_lm

    cfg = SimpleNamespace(lm_path=str(base), lm_copy=True)
    lm, tok = load_lm(cfg, SimpleNamespace(extras={"dtype": "bfloat16"}))
    assert next(lm.parameters()).dtype == torch.bfloat16 and tok is not None


def test_the_full_profile_lora_on_a_llama3_8b_shaped_model():
    """The full profile's LoRA (r 64, every linear layer) on Llama-3-8B's shape, built on the meta device (no
    memory): the numbers behind the memory estimate in configs/language.yaml."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from neurorecon.config import load_config
    from neurorecon.nv2l.stage import LanguageConfig
    from neurorecon.nv2l.tuning import apply_lora

    cfg = load_config(LanguageConfig, "full")
    shape = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)
    with torch.device("meta"):
        lm = LlamaForCausalLM(shape).to(torch.bfloat16).requires_grad_(False)
    lm = apply_lora(lm, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    s = trainable_summary(lm)
    assert s["trainable_dtypes"] == ["float32"] and s["frozen_dtypes"] == ["bfloat16"]
    assert s["frozen"] == 8_030_261_248 and s["trainable"] == 167_772_160
    frozen_gb, lora_gb = s["frozen"] * 2 / 1e9, s["trainable"] * 16 / 1e9  # fp32 weight, grad, 2 AdamW moments
    assert 16.0 < frozen_gb < 16.1 and 2.6 < lora_gb < 2.7
