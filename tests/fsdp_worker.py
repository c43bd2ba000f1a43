"""Brain LLaVA training under FSDP (imported by tests/test_fsdp.py, or launched per rank by ``accelerate launch
--config_file neurorecon/configs/accelerate/fsdp_8gpu.yaml`` with ``NEURORECON_FSDP_ON_CPU=1``).

A tiny Llama (two ``LlamaDecoderLayer`` s, the config's wrap class) behind a tiny ViT3D: stage 1 (projector), then
stage 2 fully fine-tuned (``lora_r: 0``, the case FSDP is for) and with LoRA adapters. Launched, every rank writes
``OUT/rank<r>.pt``: the weights of an uninterrupted run, of a run stopped after a sharded checkpoint and resumed
by a fresh model, and of the LoRA run, plus the checkpoint folder's files and the error of a launch without
the opt-in.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from neurorecon.foundation.tiny import DEFAULT_TEXTS, tiny_lm, train_bpe_tokenizer
from neurorecon.nv2l.llava import BrainLlava
from neurorecon.nv2l.tuning import train_llava_stage
from neurorecon.nv2l.vit3d import ViT3D
from test_nv2l_tuning import _data

COLOURS = ["blue", "green", "yellow"]  # three tokens each
N = 16


def tiny_llava():
    tok = train_bpe_tokenizer(DEFAULT_TEXTS + ["It is yellow."])
    lm = tiny_lm(len(tok))  # float32: 2 ranks and 1 process then agree to rounding
    with torch.no_grad():
        lm.get_input_embeddings().weight.mul_(8)
    torch.manual_seed(0)
    enc = ViT3D((8, 8, 4), np.argwhere(np.ones((8, 8, 4), bool)), patch_size=4, width=32, depth=2, heads=2,
                head_hidden=16, clip_dim=8, latent_shape=(1, 2, 2)).eval()
    return BrainLlava(enc, lm, tok)


def data(llava):
    """Records whose answers have the same number of tokens, so that the mean of the ranks' token-mean losses is
    the token mean of the whole batch (as in one process)."""
    batches, vox = _data(llava, N, COLOURS)
    answer_tokens = (batches.fields["labels"] != -100).sum(1)
    assert len(set(answer_tokens.tolist())) == 1, answer_tokens
    return batches, vox


def train(accelerator, batch_size, lora_r=0, ckpt=None, stop_after=None):
    """Stage 1 (2 steps) then stage 2 (4 steps); the trained brain LLaVA (``None`` when stopped)."""
    llava = tiny_llava()
    batches, vox = data(llava)
    for stage, steps in ((1, 2), (2, 4)):
        res = train_llava_stage(llava, batches, vox, stage, steps=steps, batch_size=batch_size, lr=3e-3,
                                lora_r=lora_r, lora_dropout=0.0, progress=False, accelerator=accelerator,
                                ckpt_dir=ckpt and Path(ckpt) / f"llava{stage}", ckpt_every=2,
                                stop_after=stop_after if stage == 2 else None)
        llava = res.model
        if stop_after is not None and stage == 2:
            return None
    return llava


def weights(llava):
    return {k: v.detach().float().cpu().clone() for k, v in llava.state_dict().items()}


def _main():
    import os

    from neurorecon.errors import NeuroreconError
    from neurorecon.training import FSDP_ON_CPU, make_accelerator

    out = Path(sys.argv[1])
    opt_in = os.environ.pop(FSDP_ON_CPU)
    try:  # without the opt-in, an FSDP launch on CPU ranks is refused (accelerate would run plain DDP)
        make_accelerator()
        refused = ""
    except NeuroreconError as err:
        refused = str(err)
    os.environ[FSDP_ON_CPU] = opt_in
    acc = make_accelerator()
    got = {"distributed_type": str(acc.distributed_type), "fsdp_version": acc.state.fsdp_plugin.fsdp_version,
           "refused": refused}
    full = train(acc, 2)
    got["full"] = weights(full)
    got["tied"] = full.lm.get_input_embeddings().weight is full.lm.get_output_embeddings().weight
    train(acc, 2, ckpt=out / "ck", stop_after=2)  # "killed" after the sharded checkpoint of step 2
    got["files"] = sorted(str(p.relative_to(out / "ck/llava2/latest/")) for p in (out / "ck/llava2/latest/").rglob("*")
                          if p.is_file())
    got["resumed"] = weights(train(acc, 2, ckpt=out / "ck"))  # a fresh model resumes from the shards
    got["lora"] = weights(train(acc, 2, lora_r=4))
    torch.save(got, out / f"rank{acc.process_index}.pt")


if __name__ == "__main__":
    from neurorecon.distributed import ending_process_group

    with ending_process_group():  # a live gloo group at exit can abort the rank (SIGABRT)
        _main()
