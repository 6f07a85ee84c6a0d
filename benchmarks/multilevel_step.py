"""Time of one search step of the multi-level methods (lbt, il, lease) against DARTS second order.

A search step is what :meth:`pcdarts.search.Searcher.search_step` does: for DARTS second order
one unrolled architecture step and one weight step; for a multi-level method the method's
own step (the hypergradient through its chain of one-step unrolled levels, then one real
update per level). Every method gets a real ``Searcher`` on the same synthetic dataset
(random uint8 images, no data needed), the same supernet settings and its default config
(``darts`` with ``order: 2`` for the baseline), all in one process.

Timing: after ``--warmup`` steps each, ``--rounds`` rounds alternate between the methods (so
all see the same machine conditions) and ``--steps`` steps per method are timed in total,
on ``--threads`` (default 1) CPU threads. One JSON line goes to stdout: seconds per step of
each method and its ratio to DARTS second order.

    python benchmarks/multilevel_step.py --space darts --C 8 --cells 5 --batch 16
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.search_step import interleaved_times  # noqa: E402  (timed as the fast-path benchmark times)
from pcdarts.registry import SPACES  # noqa: E402
from pcdarts.spaces import get_space  # noqa: E402

BASELINE = "darts2"
METHODS = {BASELINE: {"name": "darts", "order": 2}, "lbt": {"name": "lbt"}, "il": {"name": "il"},
           "lease": {"name": "lease"}}


def build_searcher(args: argparse.Namespace, method: dict[str, Any], run_dir: str) -> Any:
    """A Searcher of ``method`` configured like a real run of ``args`` on the synthetic set."""
    from pcdarts.search.config import build_config
    from pcdarts.search.searcher import Searcher

    cfg = build_config({
        "method": {**method, "warmup_epochs": 0},
        "space": {"name": args.space, "C": args.C, "layers": args.cells, "k": 1, "impl": args.impl},
        "data": {"dataset": "synthetic", "path": f"{args.input_size}x{args.in_channels}x{4 * args.batch}"},
        "search": {"batch_size": args.batch},
        "run": {"device": args.device, "progress": False, "plots": False, "seed": 0},
    })
    return Searcher(cfg, Path(run_dir))


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--space", default="darts", choices=SPACES.names())
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    p.add_argument("--C", type=int, default=8, help="initial channels")
    p.add_argument("--cells", type=int, default=5, help="DARTS: cells; NB201: cells per stage N")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--input-size", type=int, default=16)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--impl", default="fast", choices=["fast", "reference"])
    p.add_argument("--steps", type=int, default=6, help="timed steps per method")
    p.add_argument("--rounds", type=int, default=3, help="alternations (steps are split evenly)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if BASELINE not in names:
        names.insert(0, BASELINE)
    with tempfile.TemporaryDirectory() as tmp:
        searchers = {m: build_searcher(args, METHODS[m], f"{tmp}/{m}") for m in names}
        times = interleaved_times(searchers, args.warmup, args.steps, args.rounds)
        device = searchers[names[0]].device
    rec: dict[str, Any] = {
        "space": args.space, "C": args.C, "cells": args.cells or get_space(args.space).default_layers,
        "batch": args.batch, "input_size": args.input_size, "impl": args.impl, "device": str(device),
        "threads": torch.get_num_threads(), "steps": args.steps, "torch": torch.__version__,
    }
    base = times[BASELINE] / args.steps
    for m in names:
        s = times[m] / args.steps
        rec[f"{m}_s_per_step"] = round(s, 4)
        if m != BASELINE:
            rec[f"{m}_vs_{BASELINE}"] = round(s / base, 2)
    print(json.dumps(rec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
