"""Random weights in the on-disk formats and with the published configs of the full profile's foundation models.

The dry run (``make dryrun``) loads these through :func:`neurorecon.foundation.load.load_from_paths` exactly as a
user's real downloads would be loaded: same folder layouts, file names, config files and tensor shapes; only the
values are random. Written per component (``size="real"``):

- ``sd21-base/``: SD 2.1 base as a diffusers folder (``model_index.json``, ``unet/`` 866 M parameters,
  ``vae/``, ``scheduler/``: epsilon prediction, scaled-linear betas 0.00085..0.012, 512 px = 64 × 64 latents);
- ``sd21-unclip-small/``: Stable unCLIP 2.1 small (CLIP ViT-L/14 image conditioning): its UNet
  (``class_embed_type`` projection, ``projection_class_embeddings_input_dim`` 1536 = 768-d embedding + its
  noise-level embedding), ``image_normalizer/`` (768), ``image_noising_scheduler/`` (squared-cosine DDPM) and its
  own ``scheduler/`` (v-prediction, 768 px = 96 × 96 latents), plus the SD 2.x ``vae/``;
- ``clip-vit-h-14/open_clip_model.safetensors`` and ``clip-vit-l-14/open_clip_model.safetensors``: open_clip
  state dicts of the built-in ``ViT-H-14`` and ``ViT-L-14-quickgelu`` models (no model-config JSON);
- ``llama3-8b-2layers/``: a transformers ``LlamaForCausalLM`` folder with Llama-3-8B's config (width 4096, 32
  heads, 8 KV heads, MLP 14336, vocabulary 128,256, rope theta 5e5) but ``num_hidden_layers`` layers, and an
  offline fast tokenizer with 128,256 entries (a byte-level BPE trained on English text, padded with unused
  entries up to 128,000, then Llama 3's 256 special-token slots).

Tensors are written in float16 (diffusers, open_clip) and bfloat16 (LLM) safetensors. The published checkpoints of
SD 2.1 base and of Llama 3 are in those dtypes; the open_clip ones are float32 (twice the disk of these).
Values are drawn layer by layer (normal, std 1/sqrt(fan-in); norms 1, biases 0), never by building the float32
model, so writing the real-size set takes about 12 GB of disk and little memory.

``size="tiny"`` writes the same formats with shrunken widths (and open_clip model-config JSONs, since no
built-in open_clip model is tiny) for fast tests.
"""

import json
import math
from pathlib import Path

import torch

__all__ = ["SD21_BASE_UNET", "SD21_VAE", "SD21_SCHEDULER", "UNCLIP_SMALL_UNET", "UNCLIP_NORMALIZER",
           "UNCLIP_NOISING_SCHEDULER", "UNCLIP_SCHEDULER", "LLAMA3_8B", "CLIP_H_MODEL", "CLIP_L_MODEL",
           "write_weights", "write_metric_weights", "random_state_dict", "count_params"]

CLIP_H_MODEL = "ViT-H-14"            # SD 2.x's text encoder (laion2b_s32b_b79k weights in real use)
CLIP_L_MODEL = "ViT-L-14-quickgelu"  # OpenAI CLIP ViT-L/14 (QuickGELU): Stable unCLIP small's image space

#: stabilityai/stable-diffusion-2-1-base unet/config.json (diffusers)
SD21_BASE_UNET = dict(
    _class_name="UNet2DConditionModel", act_fn="silu", attention_head_dim=[5, 10, 20, 20],
    block_out_channels=[320, 640, 1280, 1280], center_input_sample=False, cross_attention_dim=1024,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    downsample_padding=1, dual_cross_attention=False, flip_sin_to_cos=True, freq_shift=0, in_channels=4,
    layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-05, norm_num_groups=32, num_class_embeds=None,
    only_cross_attention=False, out_channels=4, sample_size=64,
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    use_linear_projection=True)
#: stabilityai/stable-diffusion-2-1-base vae/config.json
SD21_VAE = dict(
    _class_name="AutoencoderKL", act_fn="silu", block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4, in_channels=3, latent_channels=4, layers_per_block=2,
    norm_num_groups=32, out_channels=3, sample_size=512, up_block_types=["UpDecoderBlock2D"] * 4)
#: stabilityai/stable-diffusion-2-1-base scheduler/scheduler_config.json
SD21_SCHEDULER = dict(
    _class_name="PNDMScheduler", beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085,
    clip_sample=False, num_train_timesteps=1000, prediction_type="epsilon", set_alpha_to_one=False,
    skip_prk_steps=True, steps_offset=1, trained_betas=None)
#: stabilityai/stable-diffusion-2-1-unclip-small unet/config.json: SD 2.1's UNet + the image-embedding projection
UNCLIP_SMALL_UNET = dict(SD21_BASE_UNET, class_embed_type="projection", projection_class_embeddings_input_dim=1536,
                         sample_size=96)
#: stable-diffusion-2-1-unclip-small image_normalizer/config.json
UNCLIP_NORMALIZER = dict(_class_name="StableUnCLIPImageNormalizer", embedding_dim=768)
#: stable-diffusion-2-1-unclip-small image_noising_scheduler/scheduler_config.json
UNCLIP_NOISING_SCHEDULER = dict(
    _class_name="DDPMScheduler", beta_end=0.02, beta_schedule="squaredcos_cap_v2", beta_start=0.0001,
    clip_sample=True, num_train_timesteps=1000, prediction_type="epsilon", trained_betas=None,
    variance_type="fixed_small")
#: stable-diffusion-2-1-unclip-small scheduler/scheduler_config.json (Stability's config: parameterization "v")
UNCLIP_SCHEDULER = dict(
    _class_name="DDIMScheduler", beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085,
    clip_sample=False, num_train_timesteps=1000, prediction_type="v_prediction", set_alpha_to_one=False,
    steps_offset=1, trained_betas=None)
#: meta-llama/Meta-Llama-3-8B config.json (num_hidden_layers is set by the caller)
LLAMA3_8B = dict(
    architectures=["LlamaForCausalLM"], attention_bias=False, attention_dropout=0.0, bos_token_id=128000,
    eos_token_id=128001, hidden_act="silu", hidden_size=4096, initializer_range=0.02, intermediate_size=14336,
    max_position_embeddings=8192, model_type="llama", num_attention_heads=32, num_hidden_layers=32,
    num_key_value_heads=8, pretraining_tp=1, rms_norm_eps=1e-05, rope_scaling=None, rope_theta=500000.0,
    tie_word_embeddings=False, torch_dtype="bfloat16", use_cache=True, vocab_size=128256)
_LLAMA3_N_SPECIAL = 256  # ids 128000..128255: <|begin_of_text|>, <|end_of_text|>, reserved slots, header ids, <|eot_id|>


def _tiny_unet(cross, proj_dim=None):
    cfg = dict(SD21_BASE_UNET, attention_head_dim=8, block_out_channels=[32, 64, 64, 64], cross_attention_dim=cross,
               sample_size=16, layers_per_block=1)
    if proj_dim:
        cfg.update(class_embed_type="projection", projection_class_embeddings_input_dim=proj_dim, sample_size=24)
    return cfg


def _configs(size):
    if size == "real":
        return dict(unet=SD21_BASE_UNET, vae=SD21_VAE, unclip_unet=UNCLIP_SMALL_UNET, normalizer=UNCLIP_NORMALIZER,
                    clip_h=None, clip_l=None, llm=LLAMA3_8B)
    if size != "tiny":
        raise ValueError(f"size {size!r}: expected 'real' or 'tiny'")
    from ..foundation.tiny import clip_model_config

    clip_h = clip_model_config(image_size=32, context_length=77, width=64, embed_dim=64, layers=2)
    clip_l = clip_model_config(image_size=32, context_length=77, width=32, embed_dim=48, layers=1)
    return dict(unet=_tiny_unet(64), vae=dict(SD21_VAE, block_out_channels=[32, 32], sample_size=32,
                                             down_block_types=["DownEncoderBlock2D"] * 2,
                                             up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1),
                unclip_unet=_tiny_unet(64, 2 * 48), normalizer=dict(UNCLIP_NORMALIZER, embedding_dim=48),
                clip_h=clip_h, clip_l=clip_l,
                llm=dict(LLAMA3_8B, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1024, bos_token_id=1008, eos_token_id=1009))


def random_state_dict(module, dtype, seed=0, skip=()):
    """Random values for every tensor of ``module`` (built on the meta device): normal with std 1/sqrt(fan-in)
    for matrices and convolutions, 1 for norm weights, 0 for biases, std 0.02 for other vectors."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in module.state_dict().items():
        if any(name.startswith(s) for s in skip):
            continue
        shape = tuple(t.shape)
        leaf = name.rsplit(".", 1)[-1]
        if not shape:
            value = torch.full((), math.log(1 / 0.07) if "logit_scale" in name else 0.0)
        elif leaf.endswith("bias"):
            value = torch.zeros(shape)
        elif len(shape) == 1 and leaf == "weight":  # every 1-D weight here is a norm's scale
            value = torch.ones(shape)
        elif len(shape) == 1:
            value = torch.randn(shape, generator=gen) * 0.02
        else:
            fan_in = math.prod(shape[1:]) if leaf.endswith("weight") else shape[0]
            value = torch.randn(shape, generator=gen) / math.sqrt(max(1, fan_in))
        out[name] = value.to(dtype).contiguous()
    return out


def count_params(state):
    """Number of values in a state dict."""
    return int(sum(t.numel() for t in state.values()))


def _save(state, path):
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})


def _diffusers_model(cls, cfg, folder, dtype, seed):
    """config.json + diffusion_pytorch_model.safetensors of a diffusers model class, built on the meta device."""
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        model = cls.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    model.save_config(str(folder))
    state = random_state_dict(model, dtype, seed)
    _save(state, folder / "diffusion_pytorch_model.safetensors")
    return count_params(state)


def _write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _scheduler(folder, cfg):
    import diffusers

    sched = getattr(diffusers, cfg["_class_name"]).from_config({k: v for k, v in cfg.items() if k != "_class_name"})
    sched.save_config(str(folder))


def _model_index(folder, pipeline, components):
    import diffusers

    index = {"_class_name": pipeline, "_diffusers_version": diffusers.__version__}
    index.update({k: list(v) for k, v in components.items()})
    _write_json(folder / "model_index.json", index)


def _write_sd(root, cfgs, dtype, seed):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    sd = root / "sd21-base"
    n = {"sd_unet": _diffusers_model(UNet2DConditionModel, cfgs["unet"], sd / "unet", dtype, seed),
         "sd_vae": _diffusers_model(AutoencoderKL, cfgs["vae"], sd / "vae", dtype, seed + 1)}
    _scheduler(sd / "scheduler", SD21_SCHEDULER)
    # The published folder also has text_encoder/ + tokenizer/ (OpenCLIP-H in transformers format); neurorecon takes
    # its text tokens from the open_clip checkpoint instead (as SD 2.x's own code does), so they are not written.
    _model_index(sd, "StableDiffusionPipeline", dict(
        feature_extractor=(None, None), safety_checker=(None, None), scheduler=("diffusers", "PNDMScheduler"),
        text_encoder=(None, None), tokenizer=(None, None), unet=("diffusers", "UNet2DConditionModel"),
        vae=("diffusers", "AutoencoderKL")))
    return sd, n


def _write_unclip(root, cfgs, dtype, seed):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

    un = root / "sd21-unclip-small"
    n = {"unclip_unet": _diffusers_model(UNet2DConditionModel, cfgs["unclip_unet"], un / "unet", dtype, seed + 2),
         "unclip_vae": _diffusers_model(AutoencoderKL, cfgs["vae"], un / "vae", dtype, seed + 3)}
    norm_dir = un / "image_normalizer"
    norm = StableUnCLIPImageNormalizer(embedding_dim=cfgs["normalizer"]["embedding_dim"])
    norm.save_config(str(norm_dir))
    _save({"mean": torch.zeros(1, norm.config.embedding_dim, dtype=dtype),
           "std": torch.ones(1, norm.config.embedding_dim, dtype=dtype)},
          norm_dir / "diffusion_pytorch_model.safetensors")
    _scheduler(un / "image_noising_scheduler", UNCLIP_NOISING_SCHEDULER)
    _scheduler(un / "scheduler", UNCLIP_SCHEDULER)
    _model_index(un, "StableUnCLIPImg2ImgPipeline", dict(
        feature_extractor=(None, None), image_encoder=(None, None),
        image_noising_scheduler=("diffusers", "DDPMScheduler"),
        image_normalizer=("stable_diffusion", "StableUnCLIPImageNormalizer"), scheduler=("diffusers", "DDIMScheduler"),
        text_encoder=(None, None), tokenizer=(None, None), unet=("diffusers", "UNet2DConditionModel"),
        vae=("diffusers", "AutoencoderKL")))
    return un, n


def _write_clip(folder, name, model_cfg, dtype, seed):
    """An open_clip state dict (``open_clip_model.safetensors``); a model-config JSON only for tiny configs."""
    import open_clip
    from open_clip.model import CLIP

    cfg = model_cfg or open_clip.get_model_config(name)
    with torch.device("meta"):
        model = CLIP(**cfg)
    state = random_state_dict(model, dtype, seed)
    ckpt = folder / "open_clip_model.safetensors"
    _save(state, ckpt)
    config = None
    if model_cfg is not None:
        config = folder / f"{name}.json"
        _write_json(config, dict(model_cfg=model_cfg))
    return ckpt, config, count_params(state)


_CORPUS = (
    "a photo of a cat sitting on a red sofa next to a window. two people ride bicycles down a busy city street. "
    "a plate of food with broccoli, rice and chicken on a wooden table. a man holding a surfboard on the beach. "
    "describe the image in detail. what is in the picture? provide the corresponding stable diffusion prompts for "
    "the image. locating the concept of the dog. the train is waiting at the station under a cloudy sky. "
    "a bus, a car, a truck and a traffic light at an intersection. a giraffe standing in a grassy field. "
    "a kitchen with a sink, an oven and a refrigerator. a group of zebras grazing near some trees. "
    "there is a large clock tower in the middle of the town. a young boy throws a frisbee in the park. "
)


def _llama_tokenizer(vocab_size, n_special, bos, eos):
    """A fast byte-level BPE with exactly ``vocab_size`` ids: trained merges, unused fillers, special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    n_base = vocab_size - n_special
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    words = _CORPUS.split()
    corpus = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=min(n_base, 4000), show_progress=False,
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    data = json.loads(bpe.to_str())
    vocab = data["model"]["vocab"]
    for i in range(len(vocab), n_base):  # entries no merge produces: the vocabulary size, not the segmentation
        vocab[f"<|unused_{i}|>"] = i
    data["model"]["vocab"] = vocab
    tok = Tokenizer.from_str(json.dumps(data))
    names = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>"
                                                          for i in range(n_special - 2)]
    tok.add_special_tokens(names)
    found = (tok.get_vocab_size(), tok.token_to_id(names[0]), tok.token_to_id(names[1]))
    if found != (vocab_size, bos, eos):
        raise ValueError(f"LLM tokenizer: expected {vocab_size} ids with bos {bos} and eos {eos}, built {found}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=names[0], eos_token=names[1])


def _write_llm(folder, cfg, layers, dtype, seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(cfg, num_hidden_layers=layers)
    conf = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "torch_dtype")})
    with torch.device("meta"):
        model = LlamaForCausalLM(conf)
    state = random_state_dict(model, dtype, seed)
    _save(state, folder / "model.safetensors")
    _write_json(folder / "config.json", cfg)
    _write_json(folder / "generation_config.json", dict(bos_token_id=cfg["bos_token_id"],
                                                        eos_token_id=cfg["eos_token_id"]))
    n_special = _LLAMA3_N_SPECIAL if cfg["vocab_size"] > 10 * _LLAMA3_N_SPECIAL else 16
    tok = _llama_tokenizer(cfg["vocab_size"], n_special, cfg["bos_token_id"], cfg["eos_token_id"])
    tok.save_pretrained(str(folder))
    return count_params(state)


def write_weights(out, size="real", llm_layers=2, seed=0, log=print):
    """Write every foundation component into ``out``; return the ``FoundationConfig`` path keys and counts.

    Parameters
    ----------
    out : str or Path
        Target folder (components already complete there, marked by ``weights.json``, are kept).
    size : {"real", "tiny"}
        Published configs, or the same formats shrunk for tests.
    llm_layers : int
        Decoder layers of the Llama-3-8B-shaped LLM (the real one has 32).
    seed : int
        Seed of the random values.
    log : callable
        Progress lines.

    Returns
    -------
    dict
        ``paths`` (sd_path, unclip_path, clip_h_model, clip_h_checkpoint, clip_h_config, clip_l_model,
        clip_l_checkpoint, clip_l_config, llm_path) and ``params`` (values written per component).
    """
    import time

    out = Path(out)
    done = out / "weights.json"
    if done.is_file():
        record = json.loads(done.read_text())
        if record.get("size") == size and record.get("llm_layers") == llm_layers and record.get("seed") == seed:
            return record
    cfgs = _configs(size)
    half = torch.float16
    params, seconds = {}, {}
    t0 = time.time()
    sd, n = _write_sd(out, cfgs, half, seed)
    params.update(n)
    seconds["sd"] = time.time() - t0
    log(f"  SD 2.1 base: UNet {n['sd_unet'] / 1e6:.0f} M, VAE {n['sd_vae'] / 1e6:.0f} M ({seconds['sd']:.0f} s)")
    t0 = time.time()
    un, n = _write_unclip(out, cfgs, half, seed)
    params.update(n)
    seconds["unclip"] = time.time() - t0
    log(f"  Stable unCLIP small: UNet {n['unclip_unet'] / 1e6:.0f} M ({seconds['unclip']:.0f} s)")
    t0 = time.time()
    h_name = CLIP_H_MODEL if size == "real" else "tiny-vit-h"
    l_name = CLIP_L_MODEL if size == "real" else "tiny-vit-l"
    h_ckpt, h_cfg, params["clip_h"] = _write_clip(out / "clip-vit-h-14", h_name, cfgs["clip_h"], half, seed + 4)
    l_ckpt, l_cfg, params["clip_l"] = _write_clip(out / "clip-vit-l-14", l_name, cfgs["clip_l"], half, seed + 5)
    seconds["clip"] = time.time() - t0
    log(f"  open_clip {h_name} {params['clip_h'] / 1e6:.0f} M, {l_name} {params['clip_l'] / 1e6:.0f} M "
        f"({seconds['clip']:.0f} s)")
    t0 = time.time()
    llm = out / f"llama3-8b-{llm_layers}layers"
    params["llm"] = _write_llm(llm, cfgs["llm"], llm_layers, torch.bfloat16, seed + 6)
    seconds["llm"] = time.time() - t0
    log(f"  Llama-3-8B-shaped LLM, {llm_layers} layers: {params['llm'] / 1e6:.0f} M ({seconds['llm']:.0f} s)")
    paths = dict(sd_path=str(sd), unclip_path=str(un), clip_h_model=h_name, clip_h_checkpoint=str(h_ckpt),
                 clip_h_config=str(h_cfg) if h_cfg else None, clip_l_model=l_name, clip_l_checkpoint=str(l_ckpt),
                 clip_l_config=str(l_cfg) if l_cfg else None, llm_path=str(llm))
    record = dict(size=size, llm_layers=llm_layers, seed=seed, paths=paths, params=params,
                  seconds={k: round(v, 1) for k, v in seconds.items()})
    _write_json(done, record)
    return record


#: The evaluation's metric networks (``neurorecon/configs/evaluation.yaml`` keys) as torchvision builds them, and
#: the file names they are published under (``swav`` holds a ResNet-50 with facebookresearch's "module." prefix).
METRIC_NETWORKS = {"alexnet": ("alexnet", "alexnet-owt-7be5be79.pth"),
                   "inception": ("inception_v3", "inception_v3_google-0cc3c7bd.pth"),
                   "efficientnet": ("efficientnet_b1", "efficientnet_b1-c27df63c.pth"),
                   "swav": ("resnet50", "swav_800ep_pretrain.pth.tar")}


def write_metric_weights(out, seed=0, log=print):
    """Random fp32 state dicts of the metric networks at their real sizes, saved with ``torch.save`` as their
    publishers do; returns the evaluation config keys → file paths (files already there are kept)."""
    import torchvision.models as tvm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for k, (key, (arch, name)) in enumerate(METRIC_NETWORKS.items()):
        path = out / name
        paths[key] = str(path)
        if path.is_file():
            continue
        kw = dict(aux_logits=True, init_weights=False) if arch == "inception_v3" else {}
        with torch.device("meta"):
            model = getattr(tvm, arch)(weights=None, **kw)
        state = random_state_dict(model, torch.float32, seed + 10 + k)
        for n in state:  # batch-norm statistics of a usable network: unit variance, zero mean
            if n.endswith("running_var"):
                state[n] = torch.ones_like(state[n])
            elif n.endswith("running_mean"):
                state[n] = torch.zeros_like(state[n])
            elif n.endswith("num_batches_tracked"):
                state[n] = torch.zeros((), dtype=torch.long)
        if key == "swav":
            state = {f"module.{n}": v for n, v in state.items()}
        tmp = path.with_name(path.name + ".partial")
        torch.save(state, tmp)
        tmp.replace(path)
        log(f"  metric network {key} ({arch}): {count_params(state) / 1e6:.1f} M -> {path.name}")
    return paths
