"""Config of the ``foundation`` stage (notebook 02): what to train in demo/smoke, where the real weights are in full."""

import dataclasses
from typing import Optional

from ..config import StageConfig

__all__ = ["FoundationConfig"]


@dataclasses.dataclass
class FoundationConfig(StageConfig):
    """Config of the foundation stage (``neurorecon/configs/foundation.yaml``; comments there explain the sizes).

    Demo/smoke fields describe the small models trained in-repo; ``full`` fields name local weight files.
    """

    STAGE = "foundation"
    NOTEBOOK = "02_foundation_models"

    seed: int = 0
    device: str = "auto"            # auto = cuda if available else cpu
    dtype: str = "float32"          # dtype of the frozen foundation weights in every later stage (fp16/bf16 on GPUs)
    num_threads: Optional[int] = None  # torch CPU threads while the stage runs (null = torch's default)

    # --- demo CLIP (open_clip.model.CLIP, trained with open_clip.loss.ClipLoss) ---------------------------------
    clip_image_size: Optional[int] = None   # null = the store's image size
    clip_patch: int = 8
    clip_width: int = 96
    clip_layers: int = 3
    clip_embed_dim: int = 64
    context_length: int = 32
    clip_steps: int = 150
    clip_batch: int = 64
    clip_lr: float = 1e-3

    # --- demo VAE (diffusers.AutoencoderKL) ------------------------------------------------------------------------
    image_size: int = 32                     # pixel side of the generators (VAE, UNets)
    vae_channels: list[int] = dataclasses.field(default_factory=lambda: [16, 32, 64])
    vae_latent_channels: int = 4
    vae_steps: int = 300
    vae_batch: int = 16
    vae_lr: float = 0.002
    vae_kl_weight: float = 1e-6

    # --- demo latent diffusion UNets (diffusers.UNet2DConditionModel) ----------------------------------------------
    unet_channels: list[int] = dataclasses.field(default_factory=lambda: [32, 64])
    unet_head_dim: int = 16
    unet_steps: int = 3000
    unet_batch: int = 32
    unet_lr: float = 0.002
    cfg_dropout: float = 0.1                 # empty-caption (and zero image-embedding) dropout for CFG
    snr_gamma: Optional[float] = 5.0         # Min-SNR-γ loss weighting (null = plain eps MSE)
    ema_decay: Optional[float] = 0.995  # EMA of the UNets' weights (null = none)
    unclip_steps: int = 80  # fine-tuned from the text UNet, as Stable unCLIP from SD 2.1
    unclip_max_noise_level: int = 300        # noise augmentation of the image embedding during training

    # --- demo causal LM (transformers Llama + a tokenizers BPE) ----------------------------------------------------
    lm_vocab: int = 512
    lm_hidden: int = 128
    lm_layers: int = 2
    lm_seq_len: int = 64
    lm_steps: int = 150
    lm_batch: int = 32
    lm_lr: float = 2e-3
    lm_grounded: int = 0                     # chats about random scenes described in the chat itself, added to the
                                             # corpus (foundation/text.py grounded_chats): answering from context
    lm_lookup_probes: int = 100              # held-out scenes of the context-lookup measurement (0 = skip it)

    # --- evaluation on held-out (shared test) images ---------------------------------------------------------------
    n_eval: int = 100                        # held-out images used for retrieval / reconstruction / generation
    eval_seeds: int = 2                      # text-to-image: generations per caption (sampling seeds), scores averaged
    sampler: str = "dpm++"                   # ddim | dpm++
    sample_steps: int = 15
    guidance_scale: float = 5.0

    # --- full profile: local paths of the real weights -------------------------------------------------------------
    sd_path: Optional[str] = None            # SD 2.1 base diffusers folder (model_index.json, unet/, vae/, scheduler/)
    unclip_path: Optional[str] = None        # Stable unCLIP 2.1 (small, ViT-L/14) diffusers folder
    clip_h_model: str = "ViT-H-14"           # open_clip model name of the text encoder of SD 2.x
    clip_h_checkpoint: Optional[str] = None  # its open_clip checkpoint (open_clip_pytorch_model.bin / .safetensors)
    clip_h_config: Optional[str] = None      # optional JSON model config for a custom open_clip architecture
    clip_l_model: str = "ViT-L-14-quickgelu" # open_clip name of OpenAI CLIP ViT-L/14 (NV2L target, CLIP metric)
    clip_l_checkpoint: Optional[str] = None
    clip_l_config: Optional[str] = None
    llm_path: Optional[str] = None           # transformers causal-LM folder (config.json, weights, tokenizer)
