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
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers like 1,2,5,7, got {text!r}")


def _cmd_simulate(args):
    from .simulate import simulate

    out = simulate(args.out, profile=args.profile, seed=args.seed, betas_format=args.betas_format,
                   progress=not args.quiet)
    print(f"NSD-mini ({args.profile}, seed {args.seed}) written to {out}")


def _cmd_check(args):
    from .data import check_data

    problems = check_data(args.nsd_root, args.manifest or args.profile, subjects=args.subjects)
    if problems:
        print(f"{len(problems)} problem(s) in {args.nsd_root}:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"{args.nsd_root}: every file of the {args.manifest or args.profile} manifest is present and well formed")
    return 0


def _cmd_prepare(args):
    root = args.root or args.nsd_root
    if root is None or (args.root and args.nsd_root):
        raise NeuroreconError("give the data root once: as ROOT or as --nsd-root")
    if args.layout == "neuropictor":
        from .data.neuropictor_layout import prepare_neuropictor

        ignored = [f"--{k.replace('_', '-')}" for k in ("coco_root", "flatmap") if getattr(args, k)]
        if ignored:
            raise NeuroreconError(f"{', '.join(ignored)}: not used with --layout neuropictor (its maps are already "
                                  "projected and its captions are in COCO_73k_annots_curated.npy)")
        out = prepare_neuropictor(root, args.out, subjects=args.subjects, image_size=args.image_size,
                                  allow_pickle=args.trust_pickle, progress=not args.quiet)
        print(f"prepared store (NeuroPictor layout) written to {out}")
        return
    from .data import prepare

    out = prepare(root, args.out, subjects=args.subjects, coco_root=args.coco_root, flatmap=args.flatmap,
                  image_size=args.image_size, progress=not args.quiet)
    print(f"prepared store written to {out}")


def _cmd_import(args):
    from .neuropictor.released import import_neuropictor

    if args.ckpt is None and args.encoder is None:
        raise NeuroreconError("give --ckpt (a released fMRI-to-image checkpoint), --encoder (the UK Biobank "
                              "autoencoder) or both")
    fm = None
    if args.ckpt is not None:
        from .foundation import load_foundation

        fm = load_foundation(args.profile, device=args.device, with_lm=False, components=("sd", "clip_h"))
    out = import_neuropictor(args.out, ckpt=args.ckpt, encoder=args.encoder, encoder_config=args.encoder_config,
                             fm=fm, heads=args.encoder_heads, allow_pickle=args.trust_pickle,
                             full_pipeline=not args.fmri_parts_only, subject=args.subject,
                             allow_other_unet=args.allow_other_unet)
    info = json.loads((out / "import.json").read_text())
    for key, what in (("checkpoint", "fMRI-to-image checkpoint"), ("encoder_file", "UK Biobank autoencoder")):
        if key in info:
            part = info[key]
            counts = part.get("counts")
            detail = (f"{sum(counts['imported'].values())} keys imported, {counts['skipped']} skipped (named in "
                      "import.json)" if counts else f"{part['n_keys']} keys imported")
            print(f"{what} {part['source']}: {detail}")
            unet = part.get("frozen_unet")
            if unet is not None:
                if unet["equal"]:
                    msg = "equals the foundation's"
                elif unet["equal"] is None:
                    msg = f"was not compared: {unet['reason']}"
                else:
                    msg = f"is NOT the foundation's ({unet.get('reason') or str(unet['n_differing']) + ' tensors differ'})"
                print(f"  its frozen UNet {msg}")
    print(f"written to {out}")


def _cmd_flatmap(args):
    import numpy as np

    from .data.flatmap import build_flatmap, read_flat_coords, read_vertex_mask, save_flatmap

    lh, rh = read_flat_coords(args.lh_flat), read_flat_coords(args.rh_flat)
    masks = [read_vertex_mask(m, len(xy)) if m else None for m, xy in ((args.lh_mask, lh), (args.rh_mask, rh))]
    fm = build_flatmap(lh, rh, shape=(args.size, args.size), lh_mask=masks[0], rh_mask=masks[1])
    save_flatmap(fm, args.out)
    print(f"flat map {args.size}x{args.size}: {len(fm.pixel)} cortex pixels from {len(np.unique(fm.vertex))} "
          f"vertices (meshes of {fm.n_vertices[0]} + {fm.n_vertices[1]} vertices) written to {args.out}")


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


def _cmd_seeds(args):
    from . import paths
    from .seeds import aggregate, run_seeds, write_report

    seeds = args.seeds
    homes = run_seeds(seeds, args.profile, root=args.root, config_file=args.config)
    metrics, orderings = aggregate(homes, args.profile)
    command = f"neurorecon seeds --profile {args.profile} --seeds {','.join(map(str, seeds))}"
    out = write_report(metrics, orderings, args.out or (paths.repo_root() or paths.home()) / "benchmarks",
                       args.profile, command)
    for name, path in out.items():
        print(f"{name}: {path}")


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
    s.add_argument("--subjects", type=_ints,
                   help="check only these subjects' files, e.g. 1,2,5,7 (default: every subject)")
    s.set_defaults(func=_cmd_check)

    s = sub.add_parser("prepare", help="raw NSD (or NeuroPictor's released data) -> the prepared store every "
                                       "later stage reads")
    s.add_argument("root", nargs="?", help="the data root (same as --nsd-root)")
    s.add_argument("--nsd-root")
    s.add_argument("--layout", choices=["nsd", "neuropictor"], default="nsd",
                   help="nsd: the raw NSD tree; neuropictor: NeuroPictor's released fmri_npy/ layout")
    s.add_argument("--trust-pickle", action="store_true",
                   help="neuropictor layout: unpickle its .npy files fully (only files you trust)")
    s.add_argument("--out", required=True)
    s.add_argument("--subjects", type=_ints, help="e.g. 1,2,5,7 (default: all found)")
    s.add_argument("--coco-root")
    s.add_argument("--flatmap")
    s.add_argument("--image-size", type=int)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_prepare)

    s = sub.add_parser("import", help="import released weights of the papers' official code")
    imp = s.add_subparsers(dest="what", required=True)
    s = imp.add_parser("neuropictor", help="NeuroPictor's released checkpoints -> a NeuroPictorPipeline folder "
                                           "(docs/neuropictor_import.md)")
    s.add_argument("--ckpt", help="a released fMRI-to-image checkpoint, e.g. ckpt/NSD/finetune_single_sub/sub01/"
                                  "epoch_015.pth (needs the foundation of --profile)")
    s.add_argument("--encoder", help="the UK Biobank autoencoder, ckpt/fMRI2fMRI_UKB/checkpoint_120000.pth")
    s.add_argument("--encoder-config", help="its fMRI_AutoEncoder.yaml (gives the head count)")
    s.add_argument("--encoder-heads", type=int, help="attention heads of the encoder, without --encoder-config")
    s.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    s.add_argument("--subject", type=int, help="the subject a finetune_single_sub checkpoint belongs to (notebook 07 "
                                               "scores it on that subject only)")
    s.add_argument("--profile", choices=["smoke", "demo", "full"], default="full",
                   help="whose complete foundation stage (notebook 02) the pipeline runs on (default full: SD 2.1 "
                        "+ OpenCLIP ViT-H/14 at the paths that stage recorded)")
    s.add_argument("--device", help="where the foundation is loaded (default: the config's)")
    s.add_argument("--fmri-parts-only", action="store_true",
                   help="write conditioner/ and controlnet/ only, not the foundation's VAE/UNet/scheduler")
    s.add_argument("--trust-pickle", action="store_true",
                   help="unpickle files that hold more than tensors (can run code: only files you trust)")
    s.add_argument("--allow-other-unet", action="store_true",
                   help="import even if the checkpoint's frozen UNet is not the foundation's (recorded)")
    s.set_defaults(func=_cmd_import)

    s = sub.add_parser("flatmap", help="build the vertex -> pixel flat map prepare uses for surface betas")
    s.add_argument("--lh-flat", required=True, help="left hemisphere flat mesh (.gii, FreeSurfer surface, .npy)")
    s.add_argument("--rh-flat", required=True)
    s.add_argument("--lh-mask", help="vertices to keep: .label, .mgz/.mgh, .gii or .npy (e.g. lh.nsdgeneral.mgz)")
    s.add_argument("--rh-mask")
    s.add_argument("--size", type=int, default=256, help="side of the square map (NeuroPictor: 256)")
    s.add_argument("--out", required=True, help="the .npz to write (prepare --flatmap / data.flatmap)")
    s.set_defaults(func=_cmd_flatmap)

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

    s = sub.add_parser("seeds", help="the chain for several simulator seeds, then the spread of its findings")
    s.add_argument("--seeds", required=True, type=_ints, help="e.g. 0,1,2")
    s.add_argument("--profile", choices=["smoke", "demo"], default="demo")
    s.add_argument("--config", help="a run config applied to every seed (its data.sim_seed is set per seed)")
    s.add_argument("--root", help="where the seeds' homes go (default $NEURORECON_HOME/seeds/<profile>)")
    s.add_argument("--out", help="folder of the CSV tables (default benchmarks/)")
    s.set_defaults(func=_cmd_seeds)

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
