"""``neurorecon evaluate``: score saved reconstructions against ground-truth images with the MindEye protocol.

Wire into :mod:`neurorecon.cli` with ``add_evaluate_parser(sub)`` after the other subcommands.
"""

import json
import sys
from pathlib import Path

__all__ = ["add_evaluate_parser", "run_evaluate"]


def add_evaluate_parser(subparsers):
    """Add the ``evaluate`` subcommand to an ``argparse`` subparsers object; returns its parser."""
    s = subparsers.add_parser(
        "evaluate", help="score reconstructions (.npz or a folder of them) against ground-truth images",
        description="Score reconstructions against ground truths (PixCorr, SSIM, AlexNet(2/5), Inception, CLIP, "
                    "EffNet-B, SwAV; retrieval with brain_embeds; caption metrics with captions). A reconstructions "
                    ".npz holds images uint8 (n,H,W,3), image_ids (n,), optionally subject, method, variant, "
                    "brain_embeds, captions (see neurorecon/evaluation/io.py). Metric networks load only from the "
                    "local files named in neurorecon/configs/evaluation.yaml (or --config-file).")
    s.add_argument("--rec", required=True, help="a reconstructions .npz or a folder of them")
    s.add_argument("--gt", help="a ground-truth .npz (images, image_ids[, references]) or a prepared store folder "
                                "(default: the prepared store of --profile)")
    s.add_argument("--profile", choices=["smoke", "demo", "full"], default="demo")
    s.add_argument("--config-file", help="a YAML of the shape of neurorecon/configs/evaluation.yaml (local paths)")
    s.add_argument("--method", help="method label (default: the file's 'method' or its name)")
    s.add_argument("--subject", help="subject label (default: the file's 'subject' or 'all')")
    s.add_argument("--variant", help="variant label, e.g. averaged, single-trial, averaged-982 (default: the "
                                     "file's 'variant' or 'averaged')")
    s.add_argument("--pixels-only", action="store_true", help="PixCorr and SSIM only (no metric networks)")
    s.add_argument("--out", help="also write the table as CSV here")
    s.add_argument("--json", action="store_true", help="print the table as JSON records")
    s.set_defaults(func=run_evaluate)
    return s


def _foundation(cfg, log):
    from ..errors import NeuroreconError
    from ..foundation import load_foundation

    try:
        return load_foundation(cfg.profile, device="cpu" if cfg.device == "cpu" else None, components=("clip_l",))
    except NeuroreconError as err:
        log(f"note: no foundation models ({err}); demo-CLIP and CLIP-S are unavailable")
        return None


def run_evaluate(args):
    """Run ``neurorecon evaluate`` from parsed arguments; returns the exit code."""
    import pandas as pd

    from ..config import load_config
    from .config import EvaluationConfig
    from .io import load_ground_truth, load_reconstructions, reconstruction_files
    from .networks import load_metric_networks
    from .table import COLUMNS, evaluate_captions, evaluate_reconstructions

    def log(msg):
        print(msg, file=sys.stderr)

    cfg = load_config(EvaluationConfig, args.profile, path=args.config_file)
    if cfg.num_threads:
        import torch

        torch.set_num_threads(cfg.num_threads)
    files = reconstruction_files(args.rec)
    gt_source = args.gt
    if gt_source is None:
        from ..data.stage import store_path

        gt_source = store_path(args.profile)
    recs = [(f, load_reconstructions(f)) for f in files]
    fm = None
    if (cfg.demo_clip and not args.pixels_only) or any("captions" in r for _, r in recs):
        fm = _foundation(cfg, log)
    networks = None if args.pixels_only else load_metric_networks(cfg, fm)
    tables = []
    scorer = None
    try:
        for f, rec in recs:
            gt, refs = load_ground_truth(gt_source, rec["image_ids"])
            method = args.method or rec.get("method") or Path(f).stem
            subject = args.subject or rec.get("subject", "all")
            variant = args.variant or rec.get("variant", "averaged")
            tables.append(evaluate_reconstructions(
                gt, rec["images"], method, subject, variant, networks, brain_embeds=rec.get("brain_embeds"),
                image_embeds=None, retrieval_size=cfg.retrieval_size, retrieval_draws=cfg.retrieval_draws,
                retrieval_seed=cfg.retrieval_seed))
            if "captions" in rec:
                if refs is None:
                    log(f"note: {gt_source} has no reference captions; caption metrics of {f} skipped")
                    continue
                if scorer is None:
                    from ..nv2l.captions import CaptionScorer

                    scorer = CaptionScorer(meteor=cfg.caption_meteor, tokenizer=cfg.caption_tokenizer)
                tables.append(evaluate_captions(refs, [str(c) for c in rec["captions"]], method, subject, variant,
                                                fm=fm, images=gt, scorer=scorer, clip_s_weight=cfg.clip_s_weight,
                                                clip_s_prefix=cfg.clip_s_prefix))
    finally:
        if scorer is not None:
            scorer.close()
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(COLUMNS))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
    if args.json:
        records = [{k: (None if k == "value" and v != v else v) for k, v in r.items()}
                   for r in table.to_dict(orient="records")]
        print(json.dumps(records, indent=1))
    else:
        with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 90):
            print(table.to_string(index=False))
    return 0
