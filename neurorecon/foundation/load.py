"""``load_foundation(profile)``: the one entry point later stages use to get the frozen foundation models.

- demo / smoke: the models notebook 02 trained, read from the complete ``foundation`` stage folder;
- full: SD 2.1 base, Stable unCLIP 2.1 (small, CLIP ViT-L/14 image conditioning), OpenCLIP ViT-H/14, OpenAI CLIP
  ViT-L/14 and an LLM from the local paths named in ``neurorecon/configs/foundation.yaml`` (or the user's YAML).

Both go through the same code (:func:`load_from_paths`): the demo stage writes its models in exactly the formats
of the real ones (diffusers folders, open_clip checkpoints, a transformers LLM folder). Before loading anything,
every expected file and every shape constraint is checked and all problems are reported in one
:class:`FoundationFilesError`.

Which weights play which role
-----------------------------
- text tokens (cross-attention context): open_clip ViT-H/14 text tower, penultimate layer + ``ln_final``, 77
  tokens × 1024 — computed as SD 2.x's original ``FrozenOpenCLIPEmbedder`` (which NeuroPictor's ControlNet code
  base uses), so the diffusers folder's ``text_encoder``/``tokenizer`` are not needed.
- UNet, VAE, noise schedule: the SD 2.1 base diffusers folder (``unet/``, ``vae/``, ``scheduler/``).
- unCLIP UNet + image normaliser + image noising schedule: the Stable unCLIP 2.1 diffusers folder.
- CLIP image/text embeddings (NV2L's target, retrieval, CLIP-S and the CLIP metric): OpenAI CLIP ViT-L/14 as an
  open_clip checkpoint (``ViT-L-14-quickgelu`` + ``open_clip_pytorch_model.bin`` from
  ``timm/vit_large_patch14_clip_224.openai``); 768-d, the embedding space of Stable unCLIP "small".
- LLM: any transformers causal-LM folder (``AutoModelForCausalLM``/``AutoTokenizer``); ``<image>`` and a pad
  token are added if missing.
"""

import json
from pathlib import Path

import torch

from ..artifacts import require_stage
from ..config import load_config
from ..errors import DataError, NeuroreconError
from .config import FoundationConfig
from .interface import Foundation
from .tiny import clip_image_embeds, clip_text_embeds, clip_text_tokens

__all__ = ["FoundationFilesError", "load_foundation", "load_from_paths", "check_paths", "demo_paths",
           "load_open_clip", "open_clip_model_config", "resolve_device", "IMAGE_TOKEN", "PAD_TOKEN"]

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
_WEIGHTS_DIFFUSERS = ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin")
_WEIGHTS_LLM = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin")
_TOKENIZER_LLM = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


class FoundationFilesError(DataError):
    """Missing or mismatched foundation-model files: one message listing every problem.

    Attributes
    ----------
    problems : list of (path, expected, found)
    """

    def __init__(self, problems, source):
        self.problems = list(problems)
        lines = [f"  - {p}: expected {exp}" + (f", found {found}" if found is not None else "")
                 for p, exp, found in self.problems]
        self.path, self.expected, self.found = str(source), "the foundation model files", f"{len(lines)} problem(s)"
        NeuroreconError.__init__(self, f"{source}: {len(lines)} missing or mismatched foundation-model file(s) "
                                        "(set the paths in your own YAML passed as config_file):\n"
                                 + "\n".join(lines))


def resolve_device(device):
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def demo_paths(folder):
    """The component paths inside a demo/smoke ``foundation`` stage folder (same layout as the real weights)."""
    folder = Path(folder)
    clip = dict(model="demo-clip", checkpoint=str(folder / "clip" / "open_clip_model.safetensors"),
                config=str(folder / "clip" / "open_clip_config.json"))
    return dict(sd_path=str(folder / "sd"), unclip_path=str(folder / "unclip"),
                clip_h_model=clip["model"], clip_h_checkpoint=clip["checkpoint"], clip_h_config=clip["config"],
                clip_l_model=clip["model"], clip_l_checkpoint=clip["checkpoint"], clip_l_config=clip["config"],
                llm_path=str(folder / "lm"))


def _any(folder, patterns):
    return any(any(Path(folder).glob(p)) for p in patterns)


def _read_json(path, problems, what):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        problems.append((str(path), what, f"unreadable ({type(err).__name__})"))
        return None


def open_clip_model_config(model, config=None):
    """The open_clip model config dict of a built-in name, or read from ``config`` (a JSON model config)."""
    if config:
        cfg = json.loads(Path(config).read_text())
        return cfg.get("model_cfg", cfg)
    import open_clip

    return open_clip.get_model_config(model)


def _check_diffusers_model(folder, sub, what, problems):
    d = Path(folder) / sub
    if not (d / "config.json").is_file():
        problems.append((str(d / "config.json"), f"the config of {what}", "no such file"))
    if not _any(d, _WEIGHTS_DIFFUSERS):
        problems.append((str(d / "diffusion_pytorch_model.safetensors"), f"the weights of {what}", "no such file"))


def _check_files(p, problems):
    """Existence checks of every component; returns True if the shape checks can run."""
    sd, un = p.get("sd_path"), p.get("unclip_path")
    if not sd:
        problems.append(("sd_path", "the SD 2.1 base diffusers folder (model_index.json, unet/, vae/, scheduler/)",
                         "not set"))
    else:
        if not (Path(sd) / "model_index.json").is_file():
            problems.append((str(Path(sd) / "model_index.json"), "the SD 2.1 base diffusers pipeline index",
                             "no such file"))
        _check_diffusers_model(sd, "unet", "the SD 2.1 UNet2DConditionModel", problems)
        _check_diffusers_model(sd, "vae", "the SD 2.1 AutoencoderKL", problems)
        if not (Path(sd) / "scheduler" / "scheduler_config.json").is_file():
            problems.append((str(Path(sd) / "scheduler" / "scheduler_config.json"), "the SD 2.1 noise schedule",
                             "no such file"))
    if not un:
        problems.append(("unclip_path", "the Stable unCLIP 2.1 (small, ViT-L/14) diffusers folder (unet/, "
                                        "image_normalizer/, image_noising_scheduler/)", "not set"))
    else:
        if not (Path(un) / "model_index.json").is_file():
            problems.append((str(Path(un) / "model_index.json"), "the Stable unCLIP diffusers pipeline index",
                             "no such file"))
        _check_diffusers_model(un, "unet", "the unCLIP UNet2DConditionModel (class_embed_type projection)",
                               problems)
        _check_diffusers_model(un, "image_normalizer", "the unCLIP StableUnCLIPImageNormalizer", problems)
        if not (Path(un) / "image_noising_scheduler" / "scheduler_config.json").is_file():
            problems.append((str(Path(un) / "image_noising_scheduler" / "scheduler_config.json"),
                             "the unCLIP image-embedding noise schedule", "no such file"))
    for key, what in (("clip_h", "the OpenCLIP ViT-H/14 checkpoint (SD 2.x text encoder)"),
                      ("clip_l", "the OpenAI CLIP ViT-L/14 open_clip checkpoint (NV2L target, CLIP metric)")):
        ckpt, cfgf, model = p.get(f"{key}_checkpoint"), p.get(f"{key}_config"), p.get(f"{key}_model")
        if not ckpt:
            problems.append((f"{key}_checkpoint", what, "not set"))
        elif not Path(ckpt).is_file():
            problems.append((ckpt, what, "no such file"))
        if cfgf and not Path(cfgf).is_file():
            problems.append((cfgf, f"the open_clip model config JSON of {key}_model={model}", "no such file"))
        elif not cfgf and open_clip_model_config(model) is None:
            problems.append((f"{key}_model", "an open_clip model name (or set "
                                             f"{key}_config to a model config JSON)", repr(model)))
    llm = p.get("llm_path")
    if not llm:
        problems.append(("llm_path", "a transformers causal-LM folder (config.json, weights, tokenizer)", "not set"))
    else:
        if not (Path(llm) / "config.json").is_file():
            problems.append((str(Path(llm) / "config.json"), "the LLM's transformers config", "no such file"))
        if not _any(llm, _WEIGHTS_LLM):
            problems.append((str(Path(llm) / "model.safetensors"), "the LLM's weights (model*.safetensors, "
                                                                   "an index, or pytorch_model*.bin)",
                             "no such file"))
        if not _any(llm, _TOKENIZER_LLM):
            problems.append((str(Path(llm) / "tokenizer.json"), "the LLM's tokenizer (tokenizer.json, "
                                                                "tokenizer.model or tokenizer_config.json)",
                             "no such file"))


def _check_shapes(p, problems):
    sd, un = Path(p["sd_path"]), Path(p["unclip_path"])
    unet = _read_json(sd / "unet" / "config.json", problems, "a diffusers UNet config")
    vae = _read_json(sd / "vae" / "config.json", problems, "a diffusers VAE config")
    uunet = _read_json(un / "unet" / "config.json", problems, "a diffusers UNet config")
    norm = _read_json(un / "image_normalizer" / "config.json", problems, "a StableUnCLIPImageNormalizer config")
    h = open_clip_model_config(p["clip_h_model"], p.get("clip_h_config"))
    l_cfg = open_clip_model_config(p["clip_l_model"], p.get("clip_l_config"))
    if None in (unet, vae, uunet, norm):
        return
    text_width = h["text_cfg"]["width"]
    embed = l_cfg["embed_dim"]
    lat = vae.get("latent_channels")
    for name, cfg in (("SD 2.1", unet), ("unCLIP", uunet)):
        path = (sd if name == "SD 2.1" else un) / "unet" / "config.json"
        if cfg.get("cross_attention_dim") != text_width:
            problems.append((str(path), f"cross_attention_dim == the {p['clip_h_model']} text width {text_width}",
                             cfg.get("cross_attention_dim")))
        if cfg.get("in_channels") != lat or cfg.get("out_channels") != lat:
            problems.append((str(path), f"in/out_channels == the VAE's latent_channels {lat}",
                             f"{cfg.get('in_channels')}/{cfg.get('out_channels')}"))
    if uunet.get("class_embed_type") != "projection" or uunet.get("projection_class_embeddings_input_dim") != 2 * embed:
        problems.append((str(un / "unet" / "config.json"),
                         f"class_embed_type 'projection' with projection_class_embeddings_input_dim == 2 × the "
                         f"{p['clip_l_model']} image embedding dim ({2 * embed}: embedding ⊕ noise-level embedding)",
                         f"{uunet.get('class_embed_type')!r}, {uunet.get('projection_class_embeddings_input_dim')}"))
    if norm.get("embedding_dim") != embed:
        problems.append((str(un / "image_normalizer" / "config.json"),
                         f"embedding_dim == the {p['clip_l_model']} image embedding dim {embed}",
                         norm.get("embedding_dim")))


def check_paths(paths):
    """Every problem with a set of component paths (dict with the ``FoundationConfig`` path keys), as a list of
    (path, expected, found); empty when everything is in place and the shapes fit together."""
    problems = []
    _check_files(paths, problems)
    if not problems:
        _check_shapes(paths, problems)
    return problems


def load_open_clip(model, checkpoint, config=None, device="cpu", precision="fp32"):
    """An open_clip CLIP and its tokenizer from a checkpoint file (``.bin``/``.pt``/``.safetensors``)."""
    import open_clip
    from open_clip.model import CLIP

    if config:
        cfg = open_clip_model_config(model, config)
        clip = CLIP(**cfg)
        open_clip.load_checkpoint(clip, checkpoint)
        clip = clip.to(device)
        if precision != "fp32":
            clip = clip.to({"fp16": torch.float16, "bf16": torch.bfloat16}[precision])
    else:
        cfg = open_clip.get_model_config(model)
        clip = open_clip.create_model(model, pretrained=checkpoint, device=device, precision=precision)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["text_cfg"].get("context_length", 77))
    return clip.eval().requires_grad_(False), tokenizer


def _load_llm(folder, device, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    added = 0
    if tok.pad_token is None:
        added += tok.add_special_tokens({"pad_token": PAD_TOKEN})
    if IMAGE_TOKEN not in tok.get_vocab():
        added += tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
    if len(tok) > lm.get_input_embeddings().num_embeddings:
        lm.resize_token_embeddings(len(tok))
    lm.config.pad_token_id = tok.pad_token_id
    return lm, tok


def load_from_paths(paths, profile="full", device="auto", dtype="float32", with_lm=True, names=None):
    """Check then load every component from ``paths`` (see :func:`check_paths`) into a :class:`Foundation`."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

    problems = check_paths(paths)
    if problems:
        raise FoundationFilesError(problems, f"foundation models (profile {profile})")
    device = resolve_device(device)
    torch_dtype = getattr(torch, dtype)
    precision = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[dtype]
    sd, un = Path(paths["sd_path"]), Path(paths["unclip_path"])
    unet = UNet2DConditionModel.from_pretrained(sd / "unet", torch_dtype=torch_dtype).to(device)
    vae = AutoencoderKL.from_pretrained(sd / "vae", torch_dtype=torch_dtype).to(device)
    sched = dict(DDPMScheduler.from_pretrained(sd / "scheduler").config)
    unclip_unet = UNet2DConditionModel.from_pretrained(un / "unet", torch_dtype=torch_dtype).to(device)
    normalizer = StableUnCLIPImageNormalizer.from_pretrained(un / "image_normalizer").to(device)
    noising = DDPMScheduler.from_pretrained(un / "image_noising_scheduler")
    same = (paths["clip_h_checkpoint"], paths.get("clip_h_config")) == (paths["clip_l_checkpoint"],
                                                                         paths.get("clip_l_config"))
    clip_h, tok_h = load_open_clip(paths["clip_h_model"], paths["clip_h_checkpoint"], paths.get("clip_h_config"),
                                   device, precision)
    if same:
        clip_l, tok_l = clip_h, tok_h
    else:
        clip_h.visual = torch.nn.Identity()  # only the text tower of ViT-H/14 is used
        clip_l, tok_l = load_open_clip(paths["clip_l_model"], paths["clip_l_checkpoint"],
                                       paths.get("clip_l_config"), device, precision)
    lm = lm_tok = None
    if with_lm:
        lm, lm_tok = _load_llm(paths["llm_path"], device, torch_dtype)
    vis = clip_l.visual.image_size
    vis = vis[0] if isinstance(vis, (tuple, list)) else vis
    image_size = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    default_names = dict(clip_text=paths["clip_h_model"], clip=paths["clip_l_model"], sd=str(sd),
                         unclip=str(un), lm=str(paths["llm_path"]))
    return Foundation(
        profile=profile, image_size=int(image_size),
        text_tokens_fn=lambda t: clip_text_tokens(clip_h, tok_h, t, device).float(),
        text_embeds_fn=lambda t: clip_text_embeds(clip_l, tok_l, t, device).float(),
        image_embeds_fn=lambda x: clip_image_embeds(clip_l, x, normalize=False),
        vae=vae, unet=unet, scheduler_config=sched, unclip_unet=unclip_unet, unclip_normalizer=normalizer,
        unclip_noising_scheduler=noising, lm=lm, lm_tokenizer=lm_tok, names={**default_names, **(names or {})},
        device=device, extras=dict(clip_text=clip_h, clip_image=clip_l, clip_tokenizer=tok_h,
                                   clip_image_size=int(vis)),
    ).frozen()


def config_paths(cfg):
    """The component paths named by a :class:`FoundationConfig` (full profile)."""
    keys = ("sd_path", "unclip_path", "clip_h_model", "clip_h_checkpoint", "clip_h_config", "clip_l_model",
            "clip_l_checkpoint", "clip_l_config", "llm_path")
    return {k: getattr(cfg, k) for k in keys}


def load_foundation(profile=None, config_file=None, device=None, with_lm=True):
    """The frozen foundation models of a profile, behind the :class:`Foundation` interface.

    Parameters
    ----------
    profile : str, optional
        ``smoke``/``demo``: read the complete ``foundation`` stage (raises ``MissingStageError`` naming
        notebook 02 if it is absent); ``full``: load the weights named in the config (raises
        :class:`FoundationFilesError` listing every missing file).
    config_file : str or Path, optional
        A YAML of the shape of ``neurorecon/configs/foundation.yaml`` with your local paths (full profile).
    device : str, optional
        Overrides the config's ``device`` (``auto`` = cuda if available).
    with_lm : bool
        Also load the language model (skip it to save memory in image-only stages).

    Returns
    -------
    Foundation
    """
    cfg = load_config(FoundationConfig, profile, path=config_file)
    device = device or cfg.device
    if cfg.profile == "full":
        return load_from_paths(config_paths(cfg), "full", device, cfg.dtype, with_lm)
    folder = require_stage(FoundationConfig.STAGE, cfg.profile)
    names = dict(clip_text="demo-clip (open_clip CLIP trained on NSD-mini)", clip="demo-clip",
                 sd="demo latent diffusion (UNet2DConditionModel + AutoencoderKL)", unclip="demo unCLIP UNet",
                 lm="demo Llama")
    return load_from_paths(demo_paths(folder), cfg.profile, device, "float32", with_lm, names)
