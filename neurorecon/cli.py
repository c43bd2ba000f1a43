"""The ``neurorecon`` command line: ``neurorecon <subcommand> --help`` for each."""

import argparse
import json
import sys

from .errors import NeuroreconError

__all__ = ["main"]


def _ints(text):
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated subject numbers like 1,2,5,7, got {text!r}")


def _cmd_simulate(args):
    from .simulate import simulate

    out = simulate(args.out, profile=args.profile, seed=args.seed, betas_format=args.betas_format,
                   progress=not args.quiet)
    print(f"NSD-mini ({args.profile}, seed {args.seed}) written to {out}")


def _cmd_check(args):
    from .data import check_data

    problems = check_data(args.nsd_root, args.manifest or args.profile)
    if problems:
        print(f"{len(problems)} problem(s) in {args.nsd_root}:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"{args.nsd_root}: every file of the {args.manifest or args.profile} manifest is present and well formed")
    return 0


def _cmd_prepare(args):
    from .data import prepare

    out = prepare(args.nsd_root, args.out, subjects=args.subjects, coco_root=args.coco_root, flatmap=args.flatmap,
                  image_size=args.image_size, progress=not args.quiet)
    print(f"prepared store written to {out}")


def _cmd_results(args):
    from .artifacts import collect_metrics

    table = collect_metrics(args.profile)
    if args.json:
        print(json.dumps(table.to_dict(orient="records"), indent=1))
    elif table.empty:
        print(f"no complete stage for profile {args.profile} yet: run `make reproduce PROFILE={args.profile}`")
    else:
        with __import__("pandas").option_context("display.max_rows", None, "display.width", 160):
            print(table.to_string(index=False))


def _cmd_reproduce(args):
    from .runner import reproduce

    return reproduce(args.profile, start=args.start, force=args.force, config_file=args.config)


def build_parser():
    p = argparse.ArgumentParser(prog="neurorecon", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="write NSD-mini, a simulated NSD in the raw NSD layout")
    s.add_argument("--out", required=True)
    s.add_argument("--profile", choices=["smoke", "demo"], default="demo")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--betas-format", choices=["hdf5", "nifti"], default="hdf5")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_simulate)

    s = sub.add_parser("check-data", help="list missing or malformed raw files before any work starts")
    s.add_argument("--nsd-root", required=True)
    s.add_argument("--profile", choices=["smoke", "demo", "full"], default="demo")
    s.add_argument("--manifest", help="a manifest YAML file (default data_manifests/<profile>.yaml)")
    s.set_defaults(func=_cmd_check)

    s = sub.add_parser("prepare", help="raw NSD -> the prepared store every later stage reads")
    s.add_argument("--nsd-root", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--subjects", type=_ints, help="e.g. 1,2,5,7 (default: all found)")
    s.add_argument("--coco-root")
    s.add_argument("--flatmap")
    s.add_argument("--image-size", type=int)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_prepare)

    s = sub.add_parser("results", help="every complete stage's metrics as one table")
    s.add_argument("--profile", choices=["smoke", "demo", "full"], default="demo")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_results)

    s = sub.add_parser("reproduce", help="run the numbered notebooks in order with papermill")
    s.add_argument("--profile", choices=["smoke", "demo", "full"], default="demo")
    s.add_argument("--start", help="first notebook to run, e.g. 03")
    s.add_argument("--force", action="store_true", help="rerun stages that are already complete")
    s.add_argument("--config", help="your run config: one YAML for every stage (see docs/run_config.full.yaml)")
    s.set_defaults(func=_cmd_reproduce)

    from .evaluation.cli import add_evaluate_parser

    add_evaluate_parser(sub)
    return p


def main(argv=None):
    """Entry point of the ``neurorecon`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except NeuroreconError as err:
        print(f"neurorecon {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
