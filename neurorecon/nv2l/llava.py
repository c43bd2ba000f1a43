"""Brain LLaVA: frozen ViT3D tokens → 2-layer MLP projector → causal LM, trained on instruction data.

Prompt format (NV2L)::

    <human>: <image>\\n{instruction} <bot>: {answer}</s><human>: {question} <bot>: {answer}</s>...

The ``<image>`` placeholder is replaced by the projected penultimate-layer ViT3D tokens (class + patches) in the
LM's ``inputs_embeds``; the loss covers answer tokens (and their end-of-sequence token) only. Stage 1 trains the
projector, stage 2 the projector and the LM (fully, or LoRA adapters through ``peft`` when ``lora_r > 0``).
Generation is greedy (``lm.generate(inputs_embeds=...)``, left padding).
"""

import contextlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..devices import torch_dtype
from ..errors import ConfigError, DataError
from .tuning import IGNORE, apply_lora, llava_batches, llava_loss, quiet_peft, train_llava_stage
from .vit3d import ViT3D, mlp_head

__all__ = ["IMAGE_TOKEN", "HUMAN", "BOT", "PROJECTORS", "TokenMixer", "make_projector", "prepare_tokenizer",
           "encode_chat", "prompt_ids", "BrainLlava",
           "llava_batches", "llava_loss", "train_llava_stage", "apply_lora"]

IMAGE_TOKEN = "<image>"
HUMAN = "<human>: "
BOT = " <bot>: "


@contextlib.contextmanager
def _quiet_transformers():
    """No progress bars or info logs from transformers while saving/loading (clean notebook output)."""
    from transformers.utils import logging as tlog

    was_enabled = tlog.is_progress_bar_enabled()
    level = tlog.get_verbosity()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if was_enabled:
            tlog.enable_progress_bar()


def prepare_tokenizer(tokenizer):
    """Make sure the tokenizer has a pad token and the ``<image>`` special token; returns the image token id."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _start(tokenizer):
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def encode_chat(tokenizer, conversations, max_len=None):
    """Token ids and labels of a LLaVA conversation (answers labelled, everything else ``-100``).

    Parameters
    ----------
    tokenizer : transformers tokenizer
    conversations : list of dict
        Alternating ``{"from": "human", "value": ...}`` / ``{"from": "gpt", "value": ...}`` turns; the first human
        turn holds ``<image>``.
    max_len : int, optional
        Truncate to this many tokens.

    Returns
    -------
    ids, labels : list of int
    """
    ids = _start(tokenizer)
    labels = [IGNORE] * len(ids)
    eos = tokenizer.eos_token_id
    if len(conversations) % 2:
        raise ValueError("a conversation needs alternating human/gpt turns")
    for human, gpt in zip(conversations[0::2], conversations[1::2]):
        if human["from"] != "human" or gpt["from"] != "gpt":
            raise ValueError(f"expected a human then a gpt turn, found {human['from']!r}, {gpt['from']!r}")
        prompt = _ids(tokenizer, HUMAN + human["value"] + BOT)
        answer = _ids(tokenizer, gpt["value"]) + [eos]
        ids += prompt + answer
        labels += [IGNORE] * len(prompt) + answer
    if max_len is not None:
        ids, labels = ids[:max_len], labels[:max_len]
    return ids, labels


def prompt_ids(tokenizer, question, history=()):
    """Token ids of a generation prompt: earlier (question, answer) turns, then ``question`` awaiting its answer.

    The first question of a chat carries the ``<image>`` placeholder.
    """
    ids = _start(tokenizer)
    turns = list(history) + [(question, None)]
    for k, (q, a) in enumerate(turns):
        q = (IMAGE_TOKEN + "\n" + q) if k == 0 else q
        ids += _ids(tokenizer, HUMAN + q + BOT)
        if a is not None:
            ids += _ids(tokenizer, a) + [tokenizer.eos_token_id]
    return ids


PROJECTORS = ("mlp2x_gelu", "mixer")


class TokenMixer(nn.Module):
    """A projector that reads every fMRI token at once: the (T, W) tokens flattened, mapped linearly to ``n_out``
    tokens, then a per-token GELU + linear layer (LLaVA's MLP projector maps each token on its own; this one lets
    an output token combine cubes from anywhere in the volume, e.g. a colour at a visual-field position that
    several cortical patches encode).

    Parameters
    ----------
    n_tokens, d_in : int
        Input tokens and their width.
    n_out, d_out : int
        Output tokens and their width (the LM's).
    """

    def __init__(self, n_tokens, d_in, n_out, d_out):
        super().__init__()
        self.n_out, self.d_out = int(n_out), int(d_out)
        self.mix = nn.Linear(int(n_tokens) * int(d_in), self.n_out * self.d_out)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(self.d_out, self.d_out))

    def forward(self, tokens):
        mixed = self.mix(tokens.flatten(1)).view(len(tokens), self.n_out, self.d_out)
        return self.out(mixed)


def make_projector(kind, encoder, lm_width, n_out=8):
    """The projector of a brain LLaVA: ``"mlp2x_gelu"`` (LLaVA's, per token) or ``"mixer"`` (:class:`TokenMixer`,
    ``n_out`` tokens)."""
    if kind == "mlp2x_gelu":
        return mlp_head(encoder.width, lm_width, lm_width)
    if kind == "mixer":
        return TokenMixer(encoder.n_tokens, encoder.width, n_out, lm_width)
    raise ConfigError(f"projector {kind!r}: expected one of {', '.join(PROJECTORS)}")


class BrainLlava(nn.Module):
    """Frozen ViT3D + trainable projector + causal LM.

    Parameters
    ----------
    encoder : ViT3D
        Frozen.
    lm : transformers causal LM
    tokenizer : transformers tokenizer (gets a pad and an ``<image>`` token if missing)
    feature_layer : int
        ViT3D block whose output tokens are used (``-2``: the penultimate layer, as NV2L).
    projector : {"mlp2x_gelu", "mixer"} or nn.Module
        ``"mlp2x_gelu"`` (LLaVA's 2-layer MLP from the encoder width to the LM width, per token), ``"mixer"``
        (:class:`TokenMixer`, ``projector_tokens`` output tokens) or a module of your own.
    projector_tokens : int
        Output tokens of the ``"mixer"`` projector.
    """

    def __init__(self, encoder, lm, tokenizer, feature_layer=-2, projector="mlp2x_gelu", projector_tokens=8):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.lm = lm
        self.tokenizer = tokenizer
        self.image_token_id = prepare_tokenizer(tokenizer)
        self.feature_layer = int(feature_layer)
        hidden = lm.get_input_embeddings().embedding_dim
        self.projector_kind = projector if isinstance(projector, str) else "custom"
        self.projector_tokens = int(projector_tokens)
        self.projector = (make_projector(projector, encoder, hidden, projector_tokens) if isinstance(projector, str)
                          else projector)

    def train(self, mode=True):
        super().train(mode)
        self.encoder.eval()  # frozen: no dropout
        return self

    @property
    def device(self):
        return next(self.projector.parameters()).device

    def image_tokens(self, voxels):
        """Projected fMRI tokens (b, n_tokens, LM width)."""
        with torch.no_grad():
            feats = self.encoder.features(voxels.float(), self.feature_layer)
        return self.projector(feats)

    def merge(self, input_ids, attention_mask, image_embeds, labels=None):
        """Replace each row's single ``<image>`` token with that row's image tokens.

        Returns
        -------
        inputs_embeds (b, L - 1 + T, D), attention_mask, labels (``-100`` on image tokens) or None
        """
        is_img = input_ids == self.image_token_id
        if not bool((is_img.sum(1) == 1).all()):
            raise ValueError(f"every sequence needs exactly one {IMAGE_TOKEN} token; found counts "
                             f"{is_img.sum(1).tolist()}")
        emb_layer = self.lm.get_input_embeddings()
        text = emb_layer(input_ids.masked_fill(is_img, self.tokenizer.pad_token_id))
        T = image_embeds.shape[1]
        pos = is_img.float().argmax(1).tolist()
        embeds, masks, labs = [], [], []
        ones = attention_mask.new_ones(T)
        for r, p in enumerate(pos):
            embeds.append(torch.cat([text[r, :p], image_embeds[r].to(text.dtype), text[r, p + 1:]]))
            masks.append(torch.cat([attention_mask[r, :p], ones, attention_mask[r, p + 1:]]))
            if labels is not None:
                labs.append(torch.cat([labels[r, :p], labels.new_full((T,), IGNORE), labels[r, p + 1:]]))
        return torch.stack(embeds), torch.stack(masks), (torch.stack(labs) if labels is not None else None)

    def forward(self, voxels, input_ids, attention_mask, labels):
        """The LM loss on answer tokens."""
        embeds, mask, labels = self.merge(input_ids, attention_mask, self.image_tokens(voxels), labels)
        return self.lm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss

    # --- generation -----------------------------------------------------------------------------------------------
    def _left_pad(self, seqs):
        L = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (L - len(s)) + list(s) for s in seqs], dtype=torch.long)
        mask = torch.tensor([[0] * (L - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long)
        return ids, mask

    @torch.no_grad()
    def generate(self, voxels, questions, histories=None, max_new_tokens=48, batch_size=64):
        """Greedy answers to one question per fMRI sample.

        Parameters
        ----------
        voxels : array or Tensor (n, V)
        questions : str or list of str
            One instruction for all samples, or one per sample.
        histories : list of list of (question, answer), optional
            Earlier turns per sample (multi-turn chat).
        max_new_tokens, batch_size : int

        Returns
        -------
        list of str
        """
        was = self.training
        self.eval()
        n = len(voxels)
        questions = [questions] * n if isinstance(questions, str) else list(questions)
        histories = histories or [()] * n
        eos, out = self.tokenizer.eos_token_id, []
        for a in range(0, n, batch_size):
            x = torch.as_tensor(np.asarray(voxels[a:a + batch_size], dtype=np.float32), device=self.device)
            ids, mask = self._left_pad([prompt_ids(self.tokenizer, q, h)
                                        for q, h in zip(questions[a:a + batch_size], histories[a:a + batch_size])])
            embeds, mask, _ = self.merge(ids.to(self.device), mask.to(self.device), self.image_tokens(x))
            gen = self.lm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                   do_sample=False, num_beams=1, eos_token_id=eos,
                                   pad_token_id=self.tokenizer.pad_token_id)
            for row in gen.tolist():
                row = row[: row.index(eos)] if eos in row else row
                out.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        self.train(was)
        return out

    @torch.no_grad()
    def chat(self, voxels, questions, max_new_tokens=48):
        """A multi-turn dialogue per fMRI sample: the same questions asked in turn, answers fed back.

        Returns
        -------
        list (per sample) of list of (question, answer)
        """
        histories = [[] for _ in range(len(voxels))]
        for q in questions:
            answers = self.generate(voxels, q, [list(h) for h in histories], max_new_tokens)
            for h, a in zip(histories, answers):
                h.append((q, a))
        return histories

    # --- persistence ------------------------------------------------------------------------------------------------
    def save_pretrained(self, folder):
        """Write ``encoder/`` (ViT3D), ``projector.safetensors``, ``config.json`` and the LM.

        A fully fine-tuned LM goes to ``lm/`` (weights + tokenizer). An LM with LoRA adapters goes to
        ``lm_adapter/`` (the ``peft`` adapter and the tokenizer) with ``added_embeddings.safetensors`` (the
        embedding rows of tokens added to the base vocabulary) and the base LM's folder recorded in
        ``config.json`` (``base_lm``): an 8B base is not copied.
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(folder / "encoder")
        save_file({k: v.contiguous() for k, v in self.projector.state_dict().items()},
                  str(folder / "projector.safetensors"))
        lora = hasattr(self.lm, "peft_config")
        base = self.lm.get_base_model() if lora else self.lm
        cfg = dict(feature_layer=self.feature_layer, encoder_width=self.encoder.width,
                   lm_width=base.get_input_embeddings().embedding_dim, projector=self.projector_kind,
                   projector_tokens=self.projector_tokens,
                   prompt=f"{HUMAN}{IMAGE_TOKEN}\\n{{instruction}}{BOT}{{answer}}",
                   lm="lora" if lora else "full", lm_dtype=str(base.dtype).replace("torch.", ""))
        with _quiet_transformers():
            if lora:
                self.lm.save_pretrained(folder / "lm_adapter")
                self.tokenizer.save_pretrained(folder / "lm_adapter")
                save_file(_added_rows(base, self.tokenizer), str(folder / "added_embeddings.safetensors"))
                cfg["base_lm"] = str(getattr(base, "name_or_path", "") or "")
            else:
                self.lm.save_pretrained(folder / "lm")
                self.tokenizer.save_pretrained(folder / "lm")
        (folder / "config.json").write_text(json.dumps(cfg, indent=1))
        return folder

    @classmethod
    def from_pretrained(cls, folder, device="cpu", dtype=None, base_lm=None):
        """Load a folder written by :meth:`save_pretrained` onto ``device``; the encoder and projector in float32.

        Parameters
        ----------
        folder : str or Path
        device : str
        dtype : str or torch.dtype, optional
            The LM's weights (a config name or torch dtype; default: as saved).
        base_lm : str or Path, optional
            The base LM folder of a LoRA model (default: the one recorded at saving).
        """
        from safetensors.torch import load_file

        folder = Path(folder)
        lm_dir = folder / ("lm_adapter" if (folder / "lm_adapter").is_dir() else "lm")
        need = [folder / "config.json", folder / "projector.safetensors", lm_dir, folder / "encoder"]
        if not all(p.exists() for p in need):
            raise DataError(folder, "a brain LLaVA folder (config.json, projector.safetensors, lm/ or lm_adapter/, "
                                    "encoder/)", "missing " + ", ".join(p.name for p in need if not p.exists()))
        cfg = json.loads((folder / "config.json").read_text())
        dtype = torch_dtype(dtype or cfg["lm_dtype"]) if (dtype or "lm_dtype" in cfg) else "auto"
        encoder = ViT3D.from_pretrained(folder / "encoder", device)
        with _quiet_transformers():
            lm, tok = _load_lm(folder, lm_dir, cfg, base_lm, dtype)
        model = cls(encoder, lm.to(device).eval(), tok, cfg["feature_layer"], cfg.get("projector", "mlp2x_gelu"),
                    cfg.get("projector_tokens", 8))
        model.projector.load_state_dict(load_file(str(folder / "projector.safetensors")))
        return model.to(device).eval()


def _added_rows(lm, tokenizer):
    """Input (and untied output) embedding rows of the tokenizer's added tokens (not in a base checkpoint)."""
    ids = torch.tensor(sorted(set(tokenizer.get_added_vocab().values())), dtype=torch.long)
    out = {"ids": ids, "input": lm.get_input_embeddings().weight.detach()[ids].contiguous()}
    head = lm.get_output_embeddings()
    if head is not None and head.weight is not lm.get_input_embeddings().weight:
        out["output"] = head.weight.detach()[ids].contiguous()
    return out


def _load_lm(folder, lm_dir, cfg, base_lm, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(lm_dir))
    if lm_dir.name == "lm":
        return AutoModelForCausalLM.from_pretrained(str(lm_dir), dtype=dtype), tok
    from peft import PeftModel
    from safetensors.torch import load_file

    base = Path(base_lm or cfg.get("base_lm") or "")
    if not (base / "config.json").is_file():
        raise DataError(base, "the base LM folder of this LoRA brain LLaVA (config.json + weights; pass base_lm= "
                              f"or restore the folder recorded in {folder / 'config.json'})", "no config.json")
    lm = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype)
    if len(tok) != lm.get_input_embeddings().num_embeddings:
        lm.resize_token_embeddings(len(tok))
    rows = load_file(str(folder / "added_embeddings.safetensors"))
    with torch.no_grad():
        lm.get_input_embeddings().weight[rows["ids"]] = rows["input"].to(dtype)
        if "output" in rows:
            lm.get_output_embeddings().weight[rows["ids"]] = rows["output"].to(dtype)
    lm.config.pad_token_id = tok.pad_token_id
    with quiet_peft():
        return PeftModel.from_pretrained(lm, str(lm_dir)), tok
