"""unCLIP sampled as what it is: the unCLIP folder's own scheduler (prediction type) is read and checked at load
and used whenever ``Foundation.sample`` gets image embeddings; a v-prediction model sampled with an epsilon
schedule goes wrong."""

import json

import pytest
import torch

from neurorecon.foundation.load import FoundationFilesError, check_paths, load_from_paths
from neurorecon.foundation.tiny import sd_scheduler_config, tiny_random_foundation
from tiny_weights import write_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


MU, SIGMA = 0.5, 0.3


def _ideal(kind, cfg):
    """The exact model output for latents drawn from N(MU, SIGMA^2) per number: with ``x_t = a x0 + s eps``,
    E[x0 | x_t] = MU + a SIGMA^2 / (a^2 SIGMA^2 + s^2) (x_t - a MU), eps = (x_t - a x0) / s, v = a eps - s x0
    (a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t)). Sampled with the right schedule the output has the data's
    mean and (a little less, from DDIM's discretisation) its spread."""
    from diffusers import DDPMScheduler

    ab = DDPMScheduler.from_config(cfg).alphas_cumprod

    def fn(x, t, ctx, cls):
        a2 = ab[int(t)]
        a, s = a2.sqrt(), (1 - a2).sqrt()
        x0 = MU + a * SIGMA ** 2 / (a2 * SIGMA ** 2 + s ** 2) * (x - a * MU)
        eps = (x - a * x0) / s
        return eps if kind == "epsilon" else a * eps - s * x0

    return fn


def _matches_data(x):
    return abs(x.mean().item() - MU) < 0.05 and 0.18 < x.std().item() < 0.35


@pytest.fixture(scope="module")
def fm():
    return tiny_random_foundation(image_size=16, with_lm=False)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
def test_a_v_prediction_unclip_needs_its_own_v_schedule(fm, scheduler):
    v_cfg = dict(sd_scheduler_config(), prediction_type="v_prediction")
    n = 16
    ctx, embeds = fm.empty_tokens(n), torch.randn(n, fm.unclip_normalizer.mean.shape[-1])
    args = dict(image_embeds=embeds, guidance_scale=1.0, num_steps=25, scheduler=scheduler, decode=False,
                eps_fn=_ideal("v_prediction", v_cfg))
    fm.unclip_scheduler_config = v_cfg
    right = fm.sample(ctx, **args)
    fm.unclip_scheduler_config = sd_scheduler_config()  # SD 2.1 base's epsilon schedule: the old mistake
    wrong = fm.sample(ctx, **args)
    assert _matches_data(right), (right.mean().item(), right.std().item())
    assert not _matches_data(wrong) and wrong.std().item() > 1.0, (wrong.mean().item(), wrong.std().item())
    # the text UNet keeps its own (epsilon) schedule whatever the unCLIP one is
    fm.unclip_scheduler_config = v_cfg
    text = fm.sample(ctx, guidance_scale=1.0, num_steps=25, scheduler=scheduler, decode=False,
                     eps_fn=_ideal("epsilon", sd_scheduler_config()))
    assert _matches_data(text)
    fm.unclip_scheduler_config = None
    with pytest.raises(ValueError, match="unclip_scheduler_config"):
        fm.sample(ctx, **args)
    fm.unclip_scheduler_config = sd_scheduler_config()


def _edit(path, **changes):
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    for k, v in changes.items():
        if v is None:
            cfg.pop(k)
    path.write_text(json.dumps(cfg))


def test_the_unclip_folder_scheduler_is_loaded_and_checked(tmp_path):
    paths = write_weights(tmp_path)  # tiny checkpoints in the real weights' formats
    sched = tmp_path / "unclip" / "scheduler" / "scheduler_config.json"
    _edit(sched, prediction_type="v_prediction")
    fm = load_from_paths(paths, "full", "cpu", "float32", components=("unclip",))
    assert fm.unclip_scheduler_config["prediction_type"] == "v_prediction"
    assert fm.make_scheduler("ddim", unclip=True).config.prediction_type == "v_prediction"
    assert fm.make_scheduler("dpm++").config.prediction_type == "epsilon"  # SD 2.1 base's
    _edit(sched, prediction_type="x0", beta_schedule=None)
    text = "\n".join(f"{p}: {e} (found {f})" for p, e, f in check_paths(paths, ("unclip",)))
    assert "prediction_type one of epsilon, v_prediction, sample (Stable unCLIP 2.1 small: v_prediction)" in text
    assert "beta_schedule of the unCLIP training noise schedule (found missing)" in text
    sched.unlink()
    with pytest.raises(FoundationFilesError, match="unclip/scheduler/scheduler_config.json: expected the unCLIP "
                                                   "sampling schedule and prediction type"):
        load_from_paths(paths, "full", "cpu", "float32", components=("unclip",))
