"""Command-line training entry of NeuroPictor's stages (one code path for 1 CPU process and N GPUs).

Examples
--------
Full profile on 8 GPUs (the stage YAML of your local paths via ``--config``)::

    accelerate launch --multi_gpu --num_processes 8 -m neurorecon.neuropictor.train --stage encoding --profile full
    accelerate launch --multi_gpu --num_processes 8 -m neurorecon.neuropictor.train --stage pretrain --profile full
    accelerate launch --multi_gpu --num_processes 2 -m neurorecon.neuropictor.train --stage refine --profile full \\
        --set subject=2

Two CPU processes (``accelerate launch --cpu`` starts only one on CPU)::

    torchrun --standalone --nproc_per_node 2 -m neurorecon.neuropictor.train --stage pretrain --profile smoke

``batch_size`` is per process (the paper: 6 GPUs × 16 for pretraining, 2 × 16 for refinement). A killed run
resumes from its last checkpoint when started again with the same settings. ``--foundation tiny`` swaps the
foundation for a tiny random one (tests and debugging only).
"""

import argparse
import sys
from pathlib import Path

import torch
import yaml

from ..config import load_config

__all__ = ["main", "parse_overrides", "STAGES"]

STAGES = {
    "encoding": ("neurorecon.encoding.stage", "EncodingConfig", "run_encoding_stage"),
    "pretrain": ("neurorecon.neuropictor.stage", "PretrainConfig", "run_pretrain_stage"),
    "refine": ("neurorecon.neuropictor.stage", "RefineConfig", "run_refine_stage"),
}


def parse_overrides(items):
    """``["steps=10", "subjects=[1, 2]"]`` → ``{"steps": 10, "subjects": [1, 2]}`` (values parsed as YAML)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        value = yaml.safe_load(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out


def _dump(folder, *models):
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    state = {}
    for i, m in enumerate(models):
        state.update({f"{i}.{k}": v.detach().cpu().clone() for k, v in m.state_dict().items()})
    Path(folder).mkdir(parents=True, exist_ok=True)
    torch.save(state, Path(folder) / f"rank{rank}.pt")


def main(argv=None):
    """Run one stage's training (and, on the main process, its evaluation and artifact writing)."""
    import importlib

    p = argparse.ArgumentParser(prog="python -m neurorecon.neuropictor.train", description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=sorted(STAGES), required=True)
    p.add_argument("--profile", default=None, help="smoke | demo | full (default $NEURORECON_PROFILE or demo)")
    p.add_argument("--config", default=None, help="your run config (one YAML for every stage) or a YAML of the stage config's shape")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--force", action="store_true", help="rerun even if the stage is complete with the same config")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--foundation", choices=["stage", "tiny"], default="stage",
                   help="'tiny': a tiny random foundation (tests/debugging only)")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this step (simulates a killed run)")
    p.add_argument("--ckpt-dir", default=None, help="checkpoint folder (default artifacts/<profile>/<stage>.ckpt/...)")
    p.add_argument("--dump-weights", default=None, help="write each process's trained weights to DIR/rank<r>.pt")
    args = p.parse_args(argv)
    module, cfg_cls, fn = STAGES[args.stage]
    mod = importlib.import_module(module)
    cfg = load_config(getattr(mod, cfg_cls), args.profile, path=args.config, overrides=parse_overrides(args.set))
    kwargs = dict(force=args.force, progress=not args.no_progress)
    if args.stage != "encoding":
        if args.foundation == "tiny":
            from ..data import open_store
            from ..data.stage import store_path
            from ..foundation import tiny_random_foundation

            size = int(open_store(store_path(cfg.profile)).meta["image_size"])
            kwargs["foundation"] = tiny_random_foundation(image_size=size, with_lm=False)
        kwargs.update(stop_after=args.stop_after, ckpt_dir=args.ckpt_dir)
        if args.dump_weights:
            kwargs["hook"] = lambda *models: _dump(args.dump_weights, *models)
    folder = getattr(mod, fn)(cfg, **kwargs)
    print(f"stage {args.stage} ({cfg.profile}): {folder if folder else 'stopped before the end'}")
    return 0


if __name__ == "__main__":
    from ..distributed import ending_process_group

    with ending_process_group():
        status = main()
    sys.exit(status)
