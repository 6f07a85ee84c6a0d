"""``pcdarts compare``: argparse front of :func:`pcdarts.search.compare.compare`."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from pcdarts.errors import ConfigError
from pcdarts.registry import METHODS, SPACES


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--{what} must be whole numbers separated by commas, e.g. --{what} 0,1,2; "
                          f"got {text!r}") from None


def cmd_compare(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    from pcdarts.search.compare import CompareInterrupted, compare
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        compare(args.space, methods, _int_list(args.seeds, "seeds"), data=args.data, budget=args.budget,
                out=args.out, overrides=overrides, progress=not args.no_progress, overwrite=args.overwrite,
                jobs=args.jobs, shard=args.shard, merge=args.merge, log=lambda line: print(line, flush=True))
    except CompareInterrupted as e:
        print(e, file=sys.stderr, flush=True)
        return e.exit_code
    return 0


def add_subcommand(sub: Any) -> None:
    c = sub.add_parser(
        "compare", help="run several methods x search seeds on one space and data and tabulate them",
        description="Run each method from its preset for the space, once per seed, with the same data and "
                    "overrides (--SECTION.KEY VALUE applies to every run); --budget N runs N epochs and scales "
                    "every epoch-based field of every method alike. On a re-run, finished runs with the same "
                    "settings are skipped and interrupted ones resumed; runs searched with other settings are "
                    "refused (--overwrite searches them again). Ctrl-C or SIGTERM lets the running searches save "
                    "their state. Writes compare.md, compare.csv and compare.png into --out.")
    c.add_argument("--space", required=True, help=f"search space: {', '.join(SPACES.names())}")
    c.add_argument("--methods", required=True,
                   help=f"comma-separated methods ({', '.join(METHODS.names())}) or preset names")
    c.add_argument("--seeds", default="0,1", help="comma-separated search seeds (default 0,1)")
    c.add_argument("--data", help="dataset for every run, e.g. digits, cifar10:PATH (default: each preset's)")
    c.add_argument("--budget", type=int, metavar="EPOCHS", help="search epochs of every run (epoch fields scaled)")
    c.add_argument("--out", help="compare directory (default runs/compare-<space>-<data>[-b<budget>])")
    c.add_argument("--no-progress", action="store_true",
                   help="no progress bars: each run's output goes to <out>/logs/<method>-s<seed>.log")
    c.add_argument("--overwrite", action="store_true",
                   help="search again the runs in --out searched with other settings (each old run is replaced "
                        "once its new run has a checkpoint); runs with the same settings are still reused")
    c.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="runs at once on this host (default 1): with GPUs one GPU each (CUDA_VISIBLE_DEVICES, "
                        "round robin), else the CPU cores split evenly (--run.threads); output to <out>/logs/")
    c.add_argument("--shard", metavar="I/N",
                   help="run only the I-th of N disjoint parts of the grid (e.g. a job array's task I of N); the "
                        "table is written once every run is in --out, else by --merge")
    c.add_argument("--merge", nargs="*", metavar="SHARD_DIR",
                   help="run nothing: build the table from the finished runs in --out and in the shards' --out "
                        "folders given (copied into --out); the same --space/--methods/--seeds/... as the shards")
    c.set_defaults(func=cmd_compare, takes_overrides=True)
