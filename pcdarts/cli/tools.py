"""``pcdarts info | plot | subset | plan``: the tool subcommands (argparse + calls into the library)."""
from __future__ import annotations

import argparse
import json
from typing import Any

from pcdarts.analysis.plot import _BACKENDS, FORMATS, default_prefix, plot_genotype
from pcdarts.analysis.stats import describe_cells, genotype_stats
from pcdarts.data.subset import LINK_MODES, build_subset
from pcdarts.genotype import load_genotype
from pcdarts.registry import SPACES
from pcdarts.search.planner import plan, plan_run


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (argparse then prints the usage and the one error line)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _info(args: argparse.Namespace) -> int:
    """Handler of ``pcdarts info``: print size, cost and cell ops; 0 on success, 2 on bad input."""
    num_classes = getattr(args, "num_classes", None)
    if num_classes is None:
        num_classes = 1000 if args.stem == "imagenet" else 10
    genotype = load_genotype(args.genotype)
    stats = genotype_stats(genotype, num_classes=num_classes, in_channels=getattr(args, "in_channels", 3),
                           input_size=args.input_size, C=args.C, layers=args.layers, stem=args.stem)
    print(f"genotype: {genotype}")
    side = stats["input_size"]
    print(f"space: {genotype.space}  stem: {args.stem}  input: {getattr(args, 'in_channels', 3)}x{side}x{side}"
          f"  classes: {num_classes}")
    print(f"parameters: {stats['params']:.3f} M (auxiliary head excluded)")
    print(f"multiply-adds: {stats['macs']:.1f} M (Conv2d + Linear only, batch of 1)")
    for line in describe_cells(genotype):
        print(line)
    return 0


def add_info_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``pcdarts info GENOTYPE_OR_NAME``; the handler is stored as ``func``."""
    p = subparsers.add_parser(
        "info", help="parameters, multiply-adds and cell ops of a genotype's evaluation network",
        description="Print parameters (M, auxiliary head excluded), multiply-adds (M, Conv2d+Linear "
                    "only) and the ops of each cell node for a genotype's evaluation network.")
    p.add_argument("genotype", metavar="GENOTYPE_OR_NAME",
                   help="a published name, a genotype file/run directory, or a genotype string")
    p.add_argument("--C", type=positive_int, default=None,
                   help="initial channels (default 36 cifar / 48 imagenet / 16 NB201)")
    p.add_argument("--layers", type=positive_int, default=None,
                   help="cells (default 20 cifar / 14 imagenet); cells per stage for NB201 (default 5)")
    p.add_argument("--stem", choices=("cifar", "imagenet"), default="cifar")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="classifier outputs (default 10, or 1000 with --stem imagenet)")
    p.add_argument("--in-channels", type=positive_int, default=3)
    p.add_argument("--input-size", type=positive_int, default=None,
                   help="square input side (default 32 / 224 imagenet)")
    p.set_defaults(func=_info)
    return p


def _plot(args: argparse.Namespace) -> int:
    genotype = load_genotype(args.genotype)
    prefix = args.out if args.out is not None else default_prefix(args.genotype, genotype)
    paths = plot_genotype(genotype, prefix, formats=(args.format,), backend=args.backend)
    for p in paths:
        print(p)
    return 0


def add_plot_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``pcdarts plot GENOTYPE_OR_NAME``; the handler is stored as ``func``."""
    p = subparsers.add_parser(
        "plot", help="draw a genotype's cells",
        description="Draw the cells of a genotype (graphviz dot if installed, else matplotlib). Writes "
                    "PREFIX_normal.FMT and PREFIX_reduce.FMT (DARTS) or PREFIX_cell.FMT (NB201).")
    p.add_argument("genotype", metavar="GENOTYPE_OR_NAME",
                   help="a published name, a genotype file/run directory, or a genotype string")
    p.add_argument("--out", default=None, help="output prefix (default: next to the genotype: a run directory's "
                                               "pictures go into it; a published name or pasted string is drawn "
                                               "in the current folder as NAME_* or genotype-<hash>_*)")
    p.add_argument("--format", choices=FORMATS, default="png")
    p.add_argument("--backend", choices=_BACKENDS, default="auto")
    p.set_defaults(func=_plot)
    return p


def _subset_main(args: argparse.Namespace) -> int:
    record = build_subset(args.src, args.dst, train=args.train, arch=args.arch, seed=args.seed,
                          link=args.link, overwrite=args.overwrite)
    t = record["totals"]
    print(f"pcdarts subset: {record['num_classes']} classes, {t['train']} train + {t['arch']} arch "
          f"images of {t['total']} ({args.link}) -> {args.dst} (see subset.json)")
    return 0


def add_subset_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``subset SRC DST`` to an argparse subparsers object; sets ``func`` to a handler
    that takes the parsed args and returns an exit code (0 ok, 2 error)."""
    p = subparsers.add_parser(
        "subset", help="build the per-class PC-DARTS ImageNet search subsets",
        description="Sample, for every class folder of SRC, a fraction of images into "
                    "DST/train/<class>/ and a disjoint fraction into DST/arch/<class>/, "
                    "reproducibly per class; writes DST/subset.json.")
    p.add_argument("src", metavar="SRC", help="image folder laid out as SRC/<class>/<image>")
    p.add_argument("dst", metavar="DST", help="output folder (must be empty unless --overwrite)")
    p.add_argument("--train", type=float, default=0.1, help="fraction per class for train (0.1)")
    p.add_argument("--arch", type=float, default=0.025, help="fraction per class for arch (0.025)")
    p.add_argument("--seed", type=int, default=0, help="base seed (0)")
    p.add_argument("--link", choices=LINK_MODES, default="symlink",
                   help="how files are placed (symlink)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DST/train, DST/arch and DST/subset.json in a non-empty DST")
    p.set_defaults(func=_subset_main)
    return p


def add_plan_subcommand(subparsers: Any) -> None:
    """``pcdarts plan``: estimate the peak memory of a search step."""
    p = subparsers.add_parser("plan", help="estimate the peak memory of one search step; suggest batch / K "
                                           "for a memory budget",
                              description="Estimate the peak memory of one search step (arch step + weight "
                                          "step) without running it at full size. Exit status 1 when a "
                                          "--budget-mib is given and the step does not fit.")
    p.add_argument("--run", metavar="RUN_DIR",
                   help="plan the step of a search run directory: its config (space, method and objective with "
                        "their settings, search.batch_size) and data shape; --batch, --device, --budget-mib, "
                        "--no-amp and --data-mib still apply, the other options are the run's")
    p.add_argument("--space", default="darts", help=" | ".join(SPACES.names()))
    p.add_argument("--method", default="pc-darts")
    p.add_argument("--objective", default="cross-entropy", help="search objective (mae: its decoder is planned too)")
    p.add_argument("--batch", type=int, default=None, help="batch of each split (default 64; --run: the run's)")
    p.add_argument("--C", type=int, default=16, dest="C")
    p.add_argument("--layers", type=int, default=None,
                   help="DARTS cells (8) / NB201 cells per stage (5) / broad blocks (2)")
    p.add_argument("--k", type=int, default=None, help="partial-channel factor (default: the method's)")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--device", default="cpu", help="cpu | cuda (what to plan for)")
    p.add_argument("--budget-mib", type=float, default=None)
    p.add_argument("--impl", default="auto", choices=["auto", "fast", "reference"],
                   help="supernet path planned for (auto: the one a search on --device uses)")
    p.add_argument("--no-amp", action="store_true", help="CUDA: plan without bf16 autocast")
    p.add_argument("--data-mib", type=float, default=0.0, help="dataset kept on the device")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    if getattr(args, "run", None):
        res = plan_run(args.run, batch=args.batch, device=args.device, budget_mib=args.budget_mib,
                       amp=False if args.no_amp else None, data_mib=args.data_mib)
    else:
        batch = 64 if args.batch is None else args.batch
        res = plan(args.space, args.method, batch, args.C, args.layers, args.k, args.device, args.input_size,
                   args.in_channels, args.num_classes, args.budget_mib, impl=args.impl, amp=not args.no_amp,
                   data_mib=args.data_mib, objective=args.objective)
    print(json.dumps(res.to_dict()) if args.json else res.summary())
    return 0 if res.fits in (None, True) else 1


def add_subcommands(subparsers: Any) -> None:
    """Register ``info``, ``plot``, ``subset`` and ``plan``."""
    add_info_subcommand(subparsers)
    add_plot_subcommand(subparsers)
    add_subset_subcommand(subparsers)
    add_plan_subcommand(subparsers)
