"""Command-line entry of the language stage (NV2L), for one process or ``accelerate launch`` on N GPUs.

Examples
--------
Full profile on 8 GPUs, with your run YAML (local paths, LLM folder)::

    accelerate launch --multi_gpu --num_processes 8 -m neurorecon.nv2l.train --profile full --config my.yaml

Two CPU processes (``accelerate launch --cpu`` starts only one on CPU)::

    torchrun --standalone --nproc_per_node 2 -m neurorecon.nv2l.train --profile smoke --set stage2_steps=4

Every process trains (the ViT3D, then the two LLaVA stages, DDP-averaged; ``*_batch`` is per process and
micro-batch, times ``grad_accum``); the main process then saves the models, evaluates and writes the stage folder
``artifacts/<profile>/language/``, which notebook 06 then reuses (same config). A killed run resumes from its
checkpoints when started again with the same settings (``ckpt_every``). ``--foundation tiny`` swaps the
foundation for a tiny random one (tests and debugging only).
"""

import argparse
import sys

from ..config import load_config

__all__ = ["main"]


def main(argv=None):
    """Run the language stage; returns the process exit status."""
    from ..neuropictor.train import parse_overrides
    from .stage import LanguageConfig, run_language_stage

    p = argparse.ArgumentParser(prog="python -m neurorecon.nv2l.train", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default=None, help="smoke | demo | full (default $NEURORECON_PROFILE or demo)")
    p.add_argument("--config", default=None, help="your YAML (a run config or the language config's shape)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--force", action="store_true", help="rerun even if the stage is complete with the same config")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--foundation", choices=["stage", "tiny"], default="stage",
                   help="'tiny': a tiny random foundation (tests/debugging only)")
    args = p.parse_args(argv)
    cfg = load_config(LanguageConfig, args.profile, path=args.config, overrides=parse_overrides(args.set))
    fm = None
    if args.foundation == "tiny":
        from ..data import open_store
        from ..data.stage import store_path
        from ..foundation import tiny_random_foundation

        size = int(open_store(store_path(cfg.profile)).meta["image_size"])
        fm = tiny_random_foundation(image_size=size)
    folder = run_language_stage(cfg, force=args.force, fm=fm, progress=not args.no_progress)
    if folder is not None:  # the main process
        print(f"stage language ({cfg.profile}): {folder}")
    return 0


if __name__ == "__main__":
    from ..distributed import ending_process_group

    with ending_process_group():
        status = main()
    sys.exit(status)
