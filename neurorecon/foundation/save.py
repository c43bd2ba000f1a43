"""Write the demo models in the formats of the real weights (so one loader serves every profile).

- ``sd/``: a diffusers ``StableDiffusionPipeline`` folder (``model_index.json``, ``unet/``, ``vae/``,
  ``scheduler/``; no ``text_encoder``: text tokens come from the open_clip checkpoint, as in SD 2.x's own code);
- ``unclip/``: a diffusers ``StableUnCLIPImg2ImgPipeline`` folder (``unet/``, ``vae/``, ``image_normalizer/``,
  ``image_noising_scheduler/``, ``scheduler/``); ``scheduler/`` is the schedule the unCLIP UNet was trained with,
  prediction type included (the demo's predicts epsilon; Stable unCLIP 2.1 small's folder says v_prediction), and
  it is what sampling with image embeddings uses;
- ``clip/``: an open_clip checkpoint (``open_clip_model.safetensors``, a state_dict) with its model config JSON;
- ``lm/``: a transformers folder (``LlamaForCausalLM`` + ``PreTrainedTokenizerFast``).
"""

import contextlib
import json
from pathlib import Path


__all__ = ["save_clip", "save_sd", "save_unclip", "save_lm"]


@contextlib.contextmanager
def _quiet_diffusers():
    """Silence diffusers' "component None cannot be saved" notes for the deliberately absent components."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def save_clip(folder, model, model_cfg):
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps(model_cfg, indent=1))


def save_sd(folder, unet, vae, scheduler_config):
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet,
                                   scheduler=DDPMScheduler.from_config(scheduler_config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    with _quiet_diffusers():
        pipe.save_pretrained(str(folder))


def save_unclip(folder, unet, vae, scheduler_config, normalizer, noising):
    from diffusers import DDPMScheduler, StableUnCLIPImg2ImgPipeline

    pipe = StableUnCLIPImg2ImgPipeline(feature_extractor=None, image_encoder=None, image_normalizer=normalizer,
                                       image_noising_scheduler=noising, tokenizer=None, text_encoder=None,
                                       unet=unet, scheduler=DDPMScheduler.from_config(scheduler_config), vae=vae)
    with _quiet_diffusers():
        pipe.save_pretrained(str(folder))


def save_lm(folder, lm, tokenizer):
    folder = Path(folder)
    lm.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
