"""``pcdarts compare``: argparse front of :func:`pcdarts.search.compare.compare`."""
from __future__ import annotations

import argparse
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
    from pcdarts.search.compare import compare
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    root = compare(args.space, methods, _int_list(args.seeds, "seeds"), data=args.data, budget=args.budget,
                   out=args.out, overrides=overrides, progress=not args.no_progress)
    print((root / "compare.md").read_text(), end="")
    print(f"table: {root / 'compare.md'} and {root / 'compare.csv'}; plot: {root / 'compare.png'}")
    return 0


def add_subcommand(sub: Any) -> None:
    c = sub.add_parser(
        "compare", help="run several methods x search seeds on one space and data and tabulate them",
        description="Run each method from its preset for the space, once per seed, with the same data and "
                    "overrides (--SECTION.KEY VALUE applies to every run); --budget N runs N epochs and scales "
                    "every epoch-based field of every method alike. Finished runs are skipped on a re-run. "
                    "Writes compare.md, compare.csv and compare.png into --out.")
    c.add_argument("--space", required=True, help=f"search space: {', '.join(SPACES.names())}")
    c.add_argument("--methods", required=True,
                   help=f"comma-separated methods ({', '.join(METHODS.names())}) or preset names")
    c.add_argument("--seeds", default="0,1", help="comma-separated search seeds (default 0,1)")
    c.add_argument("--data", help="dataset for every run, e.g. digits, cifar10:PATH (default: each preset's)")
    c.add_argument("--budget", type=int, metavar="EPOCHS", help="search epochs of every run (epoch fields scaled)")
    c.add_argument("--out", help="compare directory (default runs/compare-<space>-<data>[-b<budget>])")
    c.add_argument("--no-progress", action="store_true", help="no progress bars from the runs")
    c.set_defaults(func=cmd_compare, takes_overrides=True)
