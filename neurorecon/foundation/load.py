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
- unCLIP UNet + image normaliser + image noising schedule + its own sampling schedule (``scheduler/``, whose
  ``prediction_type`` is ``v_prediction`` for Stable unCLIP 2.1 small: sampling it with SD 2.1 base's epsilon
  schedule reads its v output as noise): the Stable unCLIP 2.1 diffusers folder.
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
from ..config import default_profile
from ..devices import resolve_device, torch_dtype
from ..errors import DataError, NeuroreconError
from .config import FoundationConfig
from .interface import Foundation
from .clip import clip_image_embeds, clip_text_embeds, clip_text_tokens

__all__ = ["FoundationFilesError", "load_foundation", "load_from_paths", "check_paths", "demo_paths", "stage_paths",
           "configured_components", "with_requirements", "REQUIRED_COMPONENTS", "PATHS_FILE",
           "load_open_clip", "open_clip_model_config", "COMPONENTS", "IMAGE_TOKEN", "PAD_TOKEN", "PREDICTION_TYPES"]

#: The foundation components, the config keys that locate each, and what it is.
COMPONENTS = {
    "sd": (("sd_path",), "SD 2.1 base (UNet, VAE, noise schedule)"),
    "clip_h": (("clip_h_model", "clip_h_checkpoint", "clip_h_config"), "OpenCLIP ViT-H/14 (SD 2.x's text encoder)"),
    "clip_l": (("clip_l_model", "clip_l_checkpoint", "clip_l_config"),
               "OpenAI CLIP ViT-L/14 (NV2L's target, retrieval, the CLIP metric)"),
    "unclip": (("unclip_path",), "Stable unCLIP 2.1 small (UNet, image normaliser, image noising schedule)"),
    "lm": (("llm_path",), "the causal LLM of NV2L"),
}
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


def _check_sd(p, problems):
    sd = p.get("sd_path")
    if not sd:
        problems.append(("sd_path", "the SD 2.1 base diffusers folder (model_index.json, unet/, vae/, scheduler/)",
                         "not set"))
        return
    if not (Path(sd) / "model_index.json").is_file():
        problems.append((str(Path(sd) / "model_index.json"), "the SD 2.1 base diffusers pipeline index",
                         "no such file"))
    _check_diffusers_model(sd, "unet", "the SD 2.1 UNet2DConditionModel", problems)
    _check_diffusers_model(sd, "vae", "the SD 2.1 AutoencoderKL", problems)
    if not (Path(sd) / "scheduler" / "scheduler_config.json").is_file():
        problems.append((str(Path(sd) / "scheduler" / "scheduler_config.json"), "the SD 2.1 noise schedule",
                         "no such file"))


def _check_unclip(p, problems):
    un = p.get("unclip_path")
    if not un:
        problems.append(("unclip_path", "the Stable unCLIP 2.1 (small, ViT-L/14) diffusers folder (unet/, "
                                        "image_normalizer/, image_noising_scheduler/, scheduler/)", "not set"))
        return
    if not (Path(un) / "model_index.json").is_file():
        problems.append((str(Path(un) / "model_index.json"), "the Stable unCLIP diffusers pipeline index",
                         "no such file"))
    _check_diffusers_model(un, "unet", "the unCLIP UNet2DConditionModel (class_embed_type projection)", problems)
    _check_diffusers_model(un, "image_normalizer", "the unCLIP StableUnCLIPImageNormalizer", problems)
    if not (Path(un) / "image_noising_scheduler" / "scheduler_config.json").is_file():
        problems.append((str(Path(un) / "image_noising_scheduler" / "scheduler_config.json"),
                         "the unCLIP image-embedding noise schedule", "no such file"))
    if not (Path(un) / "scheduler" / "scheduler_config.json").is_file():
        problems.append((str(Path(un) / "scheduler" / "scheduler_config.json"),
                         "the unCLIP sampling schedule and prediction type (v_prediction for Stable unCLIP 2.1)",
                         "no such file"))


def _check_clip(key, what):
    def check(p, problems):
        ckpt, cfgf, model = p.get(f"{key}_checkpoint"), p.get(f"{key}_config"), p.get(f"{key}_model")
        if not ckpt:
            problems.append((f"{key}_checkpoint", what, "not set"))
        elif not Path(ckpt).is_file():
            problems.append((ckpt, what, "no such file"))
        if cfgf and not Path(cfgf).is_file():
            problems.append((cfgf, f"the open_clip model config JSON of {key}_model={model}", "no such file"))
        elif not cfgf and open_clip_model_config(model) is None:
            problems.append((f"{key}_model", f"an open_clip model name (or set {key}_config to a model config JSON)",
                             repr(model)))
    return check


def _check_lm(p, problems):
    llm = p.get("llm_path")
    if not llm:
        problems.append(("llm_path", "a transformers causal-LM folder (config.json, weights, tokenizer)", "not set"))
        return
    if not (Path(llm) / "config.json").is_file():
        problems.append((str(Path(llm) / "config.json"), "the LLM's transformers config", "no such file"))
    if not _any(llm, _WEIGHTS_LLM):
        problems.append((str(Path(llm) / "model.safetensors"), "the LLM's weights (model*.safetensors, "
                                                               "an index, or pytorch_model*.bin)", "no such file"))
    if not _any(llm, _TOKENIZER_LLM):
        problems.append((str(Path(llm) / "tokenizer.json"), "the LLM's tokenizer (tokenizer.json, "
                                                            "tokenizer.model or tokenizer_config.json)",
                         "no such file"))


_CHECKS = {"sd": _check_sd, "clip_h": _check_clip("clip_h", "the OpenCLIP ViT-H/14 checkpoint (SD 2.x text encoder)"),
           "clip_l": _check_clip("clip_l", "the OpenAI CLIP ViT-L/14 open_clip checkpoint (NV2L target, CLIP "
                                           "metric)"),
           "unclip": _check_unclip, "lm": _check_lm}


#: Components another one cannot work without (SD needs its text encoder; unCLIP samples with SD's VAE, the text
#: tokens and CLIP ViT-L/14 image embeddings).
_REQUIRES = {"sd": ("clip_h",), "unclip": ("sd", "clip_h", "clip_l")}


def with_requirements(components):
    """``components`` plus those they need (:data:`_REQUIRES`), in :data:`COMPONENTS` order."""
    want = set(components)
    unknown = sorted(want - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown foundation component(s) {', '.join(unknown)}; expected {', '.join(COMPONENTS)}")
    for c in list(want):
        want.update(_REQUIRES.get(c, ()))
    return tuple(c for c in COMPONENTS if c in want)


def _check_unet(cfg, path, p, text_width, lat, problems):
    if text_width is not None and cfg.get("cross_attention_dim") != text_width:
        problems.append((str(path), f"cross_attention_dim == the {p['clip_h_model']} text width {text_width}",
                         cfg.get("cross_attention_dim")))
    if lat is not None and (cfg.get("in_channels") != lat or cfg.get("out_channels") != lat):
        problems.append((str(path), f"in/out_channels == the VAE's latent_channels {lat}",
                         f"{cfg.get('in_channels')}/{cfg.get('out_channels')}"))


def _check_shapes(p, components, problems):
    text_width = open_clip_model_config(p["clip_h_model"], p.get("clip_h_config"))["text_cfg"]["width"] \
        if "clip_h" in components else None
    lat = None
    if "sd" in components:
        sd = Path(p["sd_path"])
        unet = _read_json(sd / "unet" / "config.json", problems, "a diffusers UNet config")
        vae = _read_json(sd / "vae" / "config.json", problems, "a diffusers VAE config")
        if unet is None or vae is None:
            return
        lat = vae.get("latent_channels")
        _check_unet(unet, sd / "unet" / "config.json", p, text_width, lat, problems)
    if "unclip" in components:
        un = Path(p["unclip_path"])
        uunet = _read_json(un / "unet" / "config.json", problems, "a diffusers UNet config")
        norm = _read_json(un / "image_normalizer" / "config.json", problems, "a StableUnCLIPImageNormalizer config")
        usched = _read_json(un / "scheduler" / "scheduler_config.json", problems, "a diffusers scheduler config")
        noising = _read_json(un / "image_noising_scheduler" / "scheduler_config.json", problems,
                             "a diffusers scheduler config")
        if usched is not None:
            _check_unclip_schedule(un / "scheduler" / "scheduler_config.json", usched, problems)
        if noising is not None and not noising.get("num_train_timesteps"):
            problems.append((str(un / "image_noising_scheduler" / "scheduler_config.json"),
                             "num_train_timesteps of the image-embedding noising schedule (Stable unCLIP: 1000)",
                             noising.get("num_train_timesteps")))
        if uunet is None or norm is None:
            return
        _check_unet(uunet, un / "unet" / "config.json", p, text_width, lat, problems)
        embed = open_clip_model_config(p["clip_l_model"], p.get("clip_l_config"))["embed_dim"]
        if uunet.get("class_embed_type") != "projection" or \
                uunet.get("projection_class_embeddings_input_dim") != 2 * embed:
            problems.append((str(un / "unet" / "config.json"),
                             f"class_embed_type 'projection' with projection_class_embeddings_input_dim == 2 × the "
                             f"{p['clip_l_model']} image embedding dim ({2 * embed}: embedding ⊕ noise-level "
                             "embedding)",
                             f"{uunet.get('class_embed_type')!r}, {uunet.get('projection_class_embeddings_input_dim')}"))
        if norm.get("embedding_dim") != embed:
            problems.append((str(un / "image_normalizer" / "config.json"),
                             f"embedding_dim == the {p['clip_l_model']} image embedding dim {embed}",
                             norm.get("embedding_dim")))


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _check_unclip_schedule(path, cfg, problems):
    """The unCLIP folder's own sampling schedule must say what its UNet predicts (it is not SD 2.1 base's)."""
    kind = cfg.get("prediction_type")
    if kind not in PREDICTION_TYPES:
        problems.append((str(path), f"prediction_type one of {', '.join(PREDICTION_TYPES)} (Stable unCLIP 2.1 "
                                    "small: v_prediction)", repr(kind)))
    for key in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end"):
        if key not in cfg:
            problems.append((str(path), f"{key} of the unCLIP training noise schedule", "missing"))


def check_paths(paths, components=tuple(COMPONENTS)):
    """Every problem with a set of component paths (dict with the ``FoundationConfig`` path keys), as a list of
    (path, expected, found); empty when the requested ``components`` (and those they need) are in place and
    their shapes fit together. Components not requested are not looked at."""
    components = with_requirements(components)
    problems = []
    for c in components:
        _CHECKS[c](paths, problems)
    if not problems:
        _check_shapes(paths, components, problems)
    return problems


def configured_components(paths):
    """The components whose location is set in ``paths`` (a checkpoint/folder key is not empty)."""
    keys = {"sd": "sd_path", "clip_h": "clip_h_checkpoint", "clip_l": "clip_l_checkpoint",
            "unclip": "unclip_path", "lm": "llm_path"}
    return tuple(c for c in COMPONENTS if paths.get(keys[c]))


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
    """The LLM and its tokenizer with a pad token and ``<image>`` added. The two new embedding rows are drawn at
    random (``mean_resizing=False``): ``<image>`` is always replaced by projected fMRI tokens and pad is masked, so
    the mean/covariance initialisation buys nothing, and at Llama 3's 128,256 x 4096 embedding it cost 145 s and
    4.3 GB more peak memory on a 2-core CPU (measured in the dry run)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    added = 0
    if tok.pad_token is None:
        added += tok.add_special_tokens({"pad_token": PAD_TOKEN})
    if IMAGE_TOKEN not in tok.get_vocab():
        added += tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
    if len(tok) > lm.get_input_embeddings().num_embeddings:
        lm.resize_token_embeddings(len(tok), mean_resizing=False)
    lm.config.pad_token_id = tok.pad_token_id
    return lm, tok


def _not_loaded(what, component):
    def fail(*_args, **_kwargs):
        raise NeuroreconError(f"{what} needs the foundation component {component!r} ({COMPONENTS[component][1]}), "
                              f"which this stage did not load: pass it in load_foundation(..., components=...)")
    return fail


def load_from_paths(paths, profile="full", device="auto", dtype="float32", with_lm=True, names=None,
                    components=None):
    """Check then load foundation components from ``paths`` (see :func:`check_paths`) into a :class:`Foundation`.

    Parameters
    ----------
    paths : dict
        The ``FoundationConfig`` path keys.
    device : str
        Where every component goes (``auto``: cuda if available).
    dtype : str
        ``float32``, ``float16`` or ``bfloat16``: the dtype of every frozen weight (the unCLIP image normaliser's
        two statistics stay float32).
    components : iterable of str, optional
        Which of :data:`COMPONENTS` to load (default: all; ``with_lm=False`` drops ``lm``), plus those they need.
        Only these are checked, so a NeuroPictor stage does not need the LLM's files. The interface's methods of a
        component not loaded raise an error naming it.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

    components = list(COMPONENTS if components is None else components)
    if not with_lm and "lm" in components:
        components.remove("lm")
    components = with_requirements(components)
    problems = check_paths(paths, components)
    if problems:
        raise FoundationFilesError(problems, f"foundation models (profile {profile}; components "
                                             f"{', '.join(components)})")
    device = resolve_device(device)
    weights = torch_dtype(dtype)
    precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[weights]
    parts = dict(vae=None, unet=None, scheduler_config={}, unclip_unet=None, unclip_normalizer=None,
                 unclip_noising_scheduler=None, unclip_scheduler_config=None, lm=None, lm_tokenizer=None)
    image_size = 0
    if "sd" in components:
        sd = Path(paths["sd_path"])
        parts["unet"] = UNet2DConditionModel.from_pretrained(sd / "unet", torch_dtype=weights).to(device)
        parts["vae"] = AutoencoderKL.from_pretrained(sd / "vae", torch_dtype=weights).to(device)
        parts["scheduler_config"] = dict(DDPMScheduler.from_pretrained(sd / "scheduler").config)
        image_size = parts["unet"].config.sample_size * 2 ** (len(parts["vae"].config.block_out_channels) - 1)
    if "unclip" in components:
        un = Path(paths["unclip_path"])
        parts["unclip_unet"] = UNet2DConditionModel.from_pretrained(un / "unet", torch_dtype=weights).to(device)
        parts["unclip_normalizer"] = StableUnCLIPImageNormalizer.from_pretrained(un / "image_normalizer").to(device)
        parts["unclip_noising_scheduler"] = DDPMScheduler.from_pretrained(un / "image_noising_scheduler")
        parts["unclip_scheduler_config"] = dict(DDPMScheduler.from_pretrained(un / "scheduler").config)
    same = (paths.get("clip_h_checkpoint"), paths.get("clip_h_config")) == (paths.get("clip_l_checkpoint"),
                                                                             paths.get("clip_l_config"))
    clip_h = tok_h = clip_l = tok_l = None
    if "clip_h" in components:
        clip_h, tok_h = load_open_clip(paths["clip_h_model"], paths["clip_h_checkpoint"], paths.get("clip_h_config"),
                                       device, precision)
    if "clip_l" in components:
        if same and clip_h is not None:
            clip_l, tok_l = clip_h, tok_h
        else:
            clip_l, tok_l = load_open_clip(paths["clip_l_model"], paths["clip_l_checkpoint"],
                                           paths.get("clip_l_config"), device, precision)
    if clip_h is not None and clip_h is not clip_l:
        clip_h.visual = torch.nn.Identity()  # only the text tower of ViT-H/14 is used
    if "lm" in components:
        parts["lm"], parts["lm_tokenizer"] = _load_llm(paths["llm_path"], device, weights)
    vis = 0
    if clip_l is not None:
        vis = clip_l.visual.image_size
        vis = vis[0] if isinstance(vis, (tuple, list)) else vis
    default_names = dict(clip_text=paths.get("clip_h_model"), clip=paths.get("clip_l_model"),
                         sd=str(paths.get("sd_path")), unclip=str(paths.get("unclip_path")),
                         lm=str(paths.get("llm_path")))
    if clip_h is not None:
        text_tokens_fn = lambda t, final=False: clip_text_tokens(clip_h, tok_h, t, device, final).float()  # noqa: E731
    else:
        text_tokens_fn = _not_loaded("text tokens", "clip_h")
    if clip_l is not None:
        text_embeds_fn = lambda t: clip_text_embeds(clip_l, tok_l, t, device).float()  # noqa: E731
        image_embeds_fn = lambda x: clip_image_embeds(clip_l, x.to(device), normalize=False)  # noqa: E731
    else:
        text_embeds_fn = image_embeds_fn = _not_loaded("CLIP embeddings", "clip_l")
    return Foundation(
        profile=profile, image_size=int(image_size), text_tokens_fn=text_tokens_fn, text_embeds_fn=text_embeds_fn,
        image_embeds_fn=image_embeds_fn, names={**default_names, **(names or {})}, device=device,
        extras=dict(clip_text=clip_h, clip_image=clip_l, clip_tokenizer=tok_h, clip_image_size=int(vis),
                    components=components, dtype=str(weights).replace("torch.", "")), **parts,
    ).frozen()


def config_paths(cfg):
    """The component paths named by a :class:`FoundationConfig` (full profile)."""
    keys = ("sd_path", "unclip_path", "clip_h_model", "clip_h_checkpoint", "clip_h_config", "clip_l_model",
            "clip_l_checkpoint", "clip_l_config", "llm_path")
    return {k: getattr(cfg, k) for k in keys}


#: The components the full foundation stage cannot do without (the others are checked and loaded when set).
REQUIRED_COMPONENTS = ("sd", "clip_h", "clip_l")
PATHS_FILE = "paths.json"


def stage_paths(folder):
    """The component paths recorded by a complete full-profile foundation stage (``paths.json``)."""
    path = Path(folder) / PATHS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(path, "the weight paths the foundation stage checked (JSON)",
                        f"unreadable ({type(err).__name__}): rerun notebooks/02_foundation_models.ipynb") from err


def load_foundation(profile=None, device=None, dtype=None, with_lm=True, components=None):
    """The frozen foundation models of a profile, behind the :class:`Foundation` interface.

    Every profile reads the complete ``foundation`` stage (a missing one raises ``MissingStageError`` naming
    notebook 02): in smoke/demo the models notebook 02 trained, in full the real weights at the paths the stage
    checked and recorded (``paths.json``; set them in the ``foundation`` or ``shared`` section of your run
    config, then run notebook 02). So the paths reach every later stage through the stage graph, and re-pointing
    a path re-makes the foundation stage and everything built on it.

    Parameters
    ----------
    profile : str, optional
    device : str or torch.device, optional
        Where to load (a stage passes its ``Accelerator``'s device); default the foundation config's ``device``.
    dtype : str, optional
        dtype of the frozen weights; default the foundation stage's configured ``dtype`` (float32 as shipped for
        demo/smoke, where the stage itself trains and measures in float32).
    with_lm : bool
        Also load the language model (skip it to save memory in image-only stages).
    components : iterable of str, optional
        The components a stage uses (see :data:`COMPONENTS`); only those are checked and loaded. A component the
        stage needs but the full foundation stage did not record raises an error naming its config key.

    Returns
    -------
    Foundation
    """
    cfg_profile = profile or default_profile()
    folder = require_stage(FoundationConfig.STAGE, cfg_profile)
    recorded = _recorded_config(folder)
    device = device or recorded.get("device", "auto")
    if cfg_profile == "full":
        paths = stage_paths(folder)
        wanted = with_requirements(COMPONENTS if components is None else components)
        if components is None:
            wanted = configured_components(paths)
        missing = [c for c in wanted if c not in configured_components(paths)]
        if missing:
            keys = [k for c in missing for k in COMPONENTS[c][0] if k.endswith(("_path", "_checkpoint"))]
            raise FoundationFilesError([(k, f"the path of {COMPONENTS[c][1]}", "not set in the foundation stage")
                                        for c, k in zip(missing, keys)], f"foundation stage {folder}")
        return load_from_paths(paths, "full", device, dtype or recorded.get("dtype", "float32"), with_lm,
                               components=wanted)
    names = dict(clip_text="demo-clip (open_clip CLIP trained on NSD-mini)", clip="demo-clip",
                 sd="demo latent diffusion (UNet2DConditionModel + AutoencoderKL)", unclip="demo unCLIP UNet",
                 lm="demo Llama")
    return load_from_paths(demo_paths(folder), cfg_profile, device, dtype or recorded.get("dtype", "float32"),
                           with_lm, names, components=components)


def _recorded_config(folder):
    import yaml

    try:
        return yaml.safe_load((Path(folder) / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
