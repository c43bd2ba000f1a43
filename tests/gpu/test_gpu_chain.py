"""``make test-gpu``: the smoke chain (notebooks 01-08) on a real CUDA device, with the frozen foundation in
float16 and then bfloat16 and the training stages under the matching autocast. Skipped, with a line saying so,
where CUDA is absent (every CPU machine, CI); takes a few minutes on one GPU."""

import pytest
import torch
import yaml

from neurorecon import runner
from neurorecon.artifacts import STAGE_NOTEBOOKS, is_complete, read_metrics
from neurorecon import paths

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: make test-gpu needs a GPU")]

TRAINING = ("encoding", "pretrain", "refine", "language")


@pytest.mark.parametrize("dtype, precision", [("float16", "fp16"), ("bfloat16", "bf16")])
def test_smoke_chain_on_cuda(tmp_path, dtype, precision, capsys):
    run = {"shared": {"device": "cuda", "dtype": dtype}, "evaluation": {"device": "cuda"}}
    run.update({stage: {"mixed_precision": precision} for stage in TRAINING})
    config = tmp_path / f"gpu_{dtype}.yaml"
    config.write_text(yaml.safe_dump(run))
    assert runner.reproduce("smoke", config_file=config) == 0, capsys.readouterr().out
    assert all(is_complete(stage, "smoke") for stage in STAGE_NOTEBOOKS)
    foundation = yaml.safe_load((paths.stage_dir("foundation", "smoke") / "config.yaml").read_text())
    assert (foundation["device"], foundation["dtype"]) == ("cuda", dtype)
    refine = read_metrics(paths.stage_dir("refine", "smoke"))
    clip = refine[refine.metric == "two_way_clip"].value
    assert clip.notna().all() and clip.between(0, 1).all()
