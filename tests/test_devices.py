"""Devices and dtypes without a GPU.

- Low precision for real, on the CPU: the chain's model calls (NeuroPictor training and sampling, text-to-image,
  unCLIP and img2img sampling, CLIP embeddings, VAE, the LLM) with the frozen foundation in bfloat16 and float16
  and the trainable parts in float32, as the full profile runs them. A dtype mismatch is an error on the CPU too.
- Device placement with torch's fake tensors: the same calls on a fake ``cuda:0`` (no memory, no GPU), fed the CPU
  arrays the stages really feed them (numpy test maps, voxel rows, ids). A tensor left on the CPU raises
  "Expected all tensors to be on the same device", as it would on a GPU.
"""

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from neurorecon.devices import cast_module, module_device, module_dtype, to_module
from neurorecon.encoding.model import FMRIAutoencoder, FMRIEncoder
from neurorecon.encoding.stage import reconstruct_tensor
from neurorecon.foundation.tiny import tiny_random_foundation
from neurorecon.neuropictor import SampleSettings, build_neuropictor, pipeline_from_model, reconstruct
from neurorecon.neuropictor.stage import _semantic_mse, semantic_error
from neurorecon.nv2l.concepts import ablate, concept_evidence, voxel_map
from neurorecon.nv2l.vit3d import ViT3D
from neurorecon.training import ArrayBatches, fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAP = 16  # flat-map side


def _encoder():
    return FMRIEncoder(map_size=MAP, patch=8, width=32, depth=1, heads=2)


class _Store:
    """What ``_semantic_mse`` reads of a prepared store."""

    annotations = {i: {"captions": [f"a red ball number {i}"]} for i in range(4)}


def _maps(n=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, MAP, MAP)).astype(np.float32)


@pytest.fixture(scope="module", params=["bfloat16", "float16"])
def low_precision(request):
    return request.param, tiny_random_foundation(image_size=16, dtype=request.param)


def test_frozen_parts_in_the_configured_dtype_trainable_parts_in_float32(low_precision):
    name, fm = low_precision
    dtype = getattr(torch, name)
    assert {module_dtype(m) for m in (fm.unet, fm.vae, fm.unclip_unet, fm.lm)} == {dtype}
    model = build_neuropictor(fm, _encoder(), semantic_mid=8, seed=0, semantic_weight=0.1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and {p.dtype for p in trainable} == {torch.float32}
    assert all(not p.requires_grad for p in fm.unet.parameters())  # the frozen UNet is outside the module tree
    assert module_dtype(model.unet) == dtype


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state (its mixed precision among it): reset it around a test that
    asks for another precision than the rest of the session."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("autocast", [False, True])
def test_neuropictor_trains_and_samples_over_a_low_precision_foundation(low_precision, autocast,
                                                                         fresh_accelerate_state):
    name, fm = low_precision
    if autocast and name == "float16":
        pytest.skip("accelerate's fp16 autocast needs a GPU: make test-gpu runs it")
    mixed_precision = "bf16" if autocast else "no"
    model = build_neuropictor(fm, _encoder(), semantic_mid=8, seed=0, semantic_weight=0.1)
    unet_before = next(fm.unet.parameters()).detach().clone()
    maps = torch.from_numpy(_maps(4))
    latents = fm.encode_images(torch.rand(4, 3, 16, 16))
    assert latents.dtype == torch.float32
    caps = fm.text_tokens(["a red ball", "a blue car", "a cup", "a tree"])

    def loss_fn(m, batch, gen):
        return m(batch["maps"], batch["latents"], caps[batch["row"]], gen)

    res = fit(model, loss_fn, ArrayBatches(maps=maps, latents=latents, row=torch.arange(4)), steps=2, batch_size=2,
              lr=1e-3, progress=False, mixed_precision=mixed_precision)
    assert all(np.isfinite(v) for _, v in res.losses)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # still float32 after the optimizer steps
    torch.testing.assert_close(next(fm.unet.parameters()), unet_before)  # the frozen UNet did not move
    pipe = pipeline_from_model(fm, model.conditioner, model.controlnet, "ddim")
    rec = reconstruct(pipe, _maps(3), SampleSettings(2, 3.0, 1.0, "ddim", 0, 2))  # numpy in, as the stages do
    assert rec.shape == (3, 3, 16, 16) and rec.dtype == torch.float32 and torch.isfinite(rec).all()
    assert 0 <= float(rec.min()) and float(rec.max()) <= 1
    assert np.isfinite(_semantic_mse(fm, pipe.conditioner, _Store, [0, 1, 2], _maps(3)))


def test_foundation_sampling_and_embeddings_with_low_precision_weights(low_precision):
    name, fm = low_precision
    tokens = fm.text_tokens(["a red ball", "two blue cars"])
    assert tokens.dtype == torch.float32
    images = fm.sample(tokens, num_steps=2, guidance_scale=3.0, scheduler="dpm++")
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    raw = fm.image_embeds(images, normalize=False)
    assert raw.dtype == torch.float32 and raw.device.type == "cpu" and torch.isfinite(raw).all()
    unclip = fm.sample(tokens, image_embeds=raw, noise_level=10, init_latents=fm.encode_images(images), beta=0.9,
                       num_steps=2, guidance_scale=3.0)  # NV2L's reconstruction call
    img2img = fm.sample(tokens, init_latents=fm.encode_images(images), strength=0.5, num_steps=2)  # ridge's
    assert torch.isfinite(unclip).all() and torch.isfinite(img2img).all()
    assert fm.text_embeds(["a ball"]).dtype == torch.float32
    ids = fm.lm_tokenizer("a red ball", return_tensors="pt", return_token_type_ids=False)
    out = fm.lm.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=fm.lm_tokenizer.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_a_training_autocast_in_the_other_16_bit_format_is_refused():
    from neurorecon.devices import check_precision
    from neurorecon.errors import ConfigError

    with pytest.raises(ConfigError, match="mixed_precision 'bf16' with the foundation's frozen weights in float16"):
        check_precision(torch.float16, "bf16", "pretrain config (full)")
    for frozen, mp in (("float16", "fp16"), ("bfloat16", "bf16"), ("float32", "bf16"), ("float16", "no")):
        check_precision(frozen, mp, "ok")


def test_helpers_put_inputs_on_the_module_device_and_dtype():
    lin = torch.nn.Linear(3, 2).to(torch.bfloat16)
    x = to_module(np.ones((1, 3), dtype=np.float32), lin)
    assert x.dtype == torch.bfloat16 and lin(x).dtype == torch.bfloat16
    assert to_module(np.arange(3), lin).dtype == torch.int64  # integer inputs keep their type
    same = cast_module(lin, "cpu")
    assert same is lin and module_device(lin).type == "cpu"
    assert module_dtype(cast_module(torch.nn.Linear(2, 2), "cpu", "float16")) == torch.float16


# --- devices: the same calls on a fake CUDA device ------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_cuda():
    """A fake-tensor mode with CUDA as the default device: modules built inside live on a fake ``cuda:0``."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode, torch.device("cuda"):
        fm = tiny_random_foundation(image_size=16, with_lm=False, device="cuda")
        model = build_neuropictor(fm, _encoder(), semantic_mid=8, seed=0, semantic_weight=0.1)
        auto = FMRIAutoencoder(map_size=MAP, patch=8, width=32, depth=1, heads=2)
        grid = np.stack(np.meshgrid(*[np.arange(6)] * 3, indexing="ij"), -1).reshape(-1, 3)
        vit = ViT3D((6, 6, 6), grid, patch_size=3, width=32, depth=2, heads=2, clip_dim=fm.embed_dim,
                    latent_shape=(4, 8, 8))
    return mode, fm, model, auto, vit


def test_fake_cuda_catches_a_cpu_tensor(fake_cuda):
    mode, fm, model, *_ = fake_cuda
    with mode, torch.device("cuda"):
        assert module_device(model.conditioner).type == "cuda"
        with pytest.raises(RuntimeError, match="same device"):  # what the harness would see of a missed move
            model.conditioner(torch.from_numpy(_maps(2)).to("cpu"))


@pytest.fixture
def device_neutral_scheduler_step(monkeypatch):
    """A scheduler step branches on tensor values (``if prev_timestep >= 0``), which fake tensors cannot give:
    replace DDIM's step by a stand-in that keeps the latents' device and dtype (diffusers' schedulers follow the
    sample's device on GPUs; what is checked here is what our code feeds them)."""
    from diffusers import DDIMScheduler
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

    def step(self, model_output, timestep, sample, *args, **kwargs):
        return DDIMSchedulerOutput(prev_sample=sample - 0.1 * model_output, pred_original_sample=sample)

    monkeypatch.setattr(DDIMScheduler, "step", step)


def test_stage_model_calls_keep_to_one_device(fake_cuda, device_neutral_scheduler_step):
    mode, fm, model, auto, vit = fake_cuda
    with mode, torch.device("cuda"):
        # a training step as fit runs it (the batch moved to the accelerator's device, CPU generator)
        gen = torch.Generator(device="cpu").manual_seed(0)
        caps = fm.text_tokens(["a ball", "a car"])
        loss = model(torch.zeros(2, MAP, MAP), fm.encode_images(torch.rand(2, 3, 16, 16)), caps, gen)
        assert loss.device.type == "cuda"
        # after training: sampling and evaluation fed the stages' CPU arrays
        pipe = pipeline_from_model(fm, model.conditioner, model.controlnet, "ddim")
        rec = reconstruct(pipe, _maps(2), SampleSettings(2, 3.0, 1.0, "ddim", 0, 2))
        assert rec.device.type == "cpu"
        assert semantic_error(fm, pipe.conditioner, _Store, [0, 1], _maps(2)).device.type == "cuda"
        assert reconstruct_tensor(auto, _maps(2), batch_size=2).shape == (2, MAP, MAP)
        raw = fm.image_embeds(np.zeros((2, 16, 16, 3), dtype=np.uint8), normalize=False)
        assert raw.device.type == "cpu"
        out = fm.sample(caps, image_embeds=raw, init_latents=torch.zeros(2, 4, 8, 8, device="cpu"), beta=0.9,
                        num_steps=2, guidance_scale=3.0)
        assert out.shape == (2, 3, 16, 16)
        # concept localisation on the trained ViT3D, fed CPU voxel rows and CPU text embeddings (GradCAM's
        # backward pass cannot run on a fake device: its inputs go through the same to_module as these)
        voxels, text = torch.zeros(2, 216, device="cpu"), fm.text_embeds(["a ball", "a car"])
        maps = voxel_map(vit, torch.ones(2, vit.grid.n_patches))
        mask = torch.zeros(maps.shape, dtype=torch.bool, device="cpu")
        assert concept_evidence(vit, ablate(vit, voxels, mask), text).shape == (2,)
