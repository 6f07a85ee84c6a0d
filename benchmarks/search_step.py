"""Time and memory of one search step, fast path against the reference path.

A search step is what :meth:`pcdarts.search.Searcher.search_step` does: one
architecture step (Adam on alpha/beta) and one weight step (SGD), optimisers included,
with batches from the device-resident loader. The Searcher is built exactly as for a
real run, from a synthetic dataset of random uint8 images (no data needed), once with
``space.impl=fast`` and once with ``space.impl=reference``.

Timing: both paths live in one process; after warm-up steps, rounds of steps alternate
between them so both see the same machine conditions. Peak memory: each path runs again
alone in a fresh subprocess (peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on
CUDA), so the peaks do not mix. One JSON line goes to stdout.

    python benchmarks/search_step.py --space darts --method pc-darts --C 16 --cells 8 --batch 32 --k 4
    python benchmarks/search_step.py --method all --C 8 --cells 5 --batch 16   # one line per case

``--method`` takes a registered method name or a case of :data:`CASES` (a method in a given
configuration, a structure change before the timed steps, another space or objective); ``all``
runs every case. A pass the fast supernet runs on its reference path (``supernet.reference(why)``)
is printed once by the supernet and listed in the line's ``fast_reference_passes``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pcdarts.registry import SPACES  # noqa: E402
from pcdarts.spaces import get_space  # noqa: E402
from pcdarts.utils import peak_memory_mib  # noqa: E402

SYNTHETIC = "synthetic"  # pcdarts.data.sources: random uint8 images, SIZExCHANNELSxCOUNT


@dataclass(frozen=True)
class Case:
    """A benchmark case: a method's config section, optionally another space, objective or
    search settings, and a structure change applied to the built Searcher before any step."""

    method: dict[str, Any]
    space: Optional[str] = None
    objective: Optional[dict[str, Any]] = None
    search: dict[str, Any] = field(default_factory=dict)
    setup: Optional[Callable[[Any], None]] = None


def _drnas_stage(searcher: Any) -> None:
    """The start of DrNAS's second progressive stage: 4 ops kept per edge, K 4 -> 2."""
    searcher.method.on_epoch_start(1, searcher.context())


def _is_darts_shrink(searcher: Any) -> None:
    """IS-DARTS's first shrink step (its IIM pass, then the ops removed)."""
    searcher.method.shrink(0, searcher.context())


CASES: dict[str, Case] = {
    "pc-darts": Case({"name": "pc-darts"}),
    "darts": Case({"name": "darts"}),
    "darts-2nd": Case({"name": "darts", "order": 2}),
    "drnas": Case({"name": "drnas"}),
    "drnas+stage": Case({"name": "drnas", "stage_starts": [1], "stage_keep_ops": [4], "stage_k": [2], "k": 4},
                        search={"epochs": 2}, setup=_drnas_stage),
    "darts-minus": Case({"name": "darts-minus"}),
    "is-darts": Case({"name": "is-darts"}),
    "is-darts+shrink": Case({"name": "is-darts"}, setup=_is_darts_shrink),
    "msr-darts": Case({"name": "msr-darts"}),
    "sdarts-rs": Case({"name": "sdarts-rs"}),
    "sdarts-adv": Case({"name": "sdarts-adv"}),
    "beta-darts": Case({"name": "beta-darts"}),
    "lbt": Case({"name": "lbt"}),
    "il": Case({"name": "il"}),
    "lease": Case({"name": "lease"}),
    "rsws": Case({"name": "rsws"}),
    "pc-darts@broad": Case({"name": "pc-darts"}, space="broad"),
    "pc-darts@s1": Case({"name": "pc-darts"}, space="s1"),
    "pc-darts@s2": Case({"name": "pc-darts"}, space="s2"),
    "pc-darts@s3": Case({"name": "pc-darts"}, space="s3"),
    "pc-darts@s4": Case({"name": "pc-darts"}, space="s4"),
    "pc-darts+mae": Case({"name": "pc-darts"}, objective={"name": "mae"}),
}
# random-lookup trains no supernet (it looks drawn cells up in a benchmark): nothing to time


def case_of(args: argparse.Namespace) -> Case:
    """The case ``--method`` names (a bare registered method name: that method's defaults)."""
    return CASES.get(args.method) or Case({"name": args.method})


def build_searcher(args: argparse.Namespace, impl: str, run_dir: str) -> Any:
    """A Searcher configured like a real run of ``args`` (its case) on the synthetic set."""
    from pcdarts.search.config import build_config
    from pcdarts.search.searcher import Searcher

    case = case_of(args)
    space: dict[str, Any] = {"name": case.space or args.space, "C": args.C, "layers": args.cells, "impl": impl,
                             "channel_mode": args.channel_mode, **({"k": args.k} if args.k else {})}
    cfg = build_config({
        "method": dict(case.method),
        "space": space,
        **({"objective": dict(case.objective)} if case.objective else {}),
        "data": {"dataset": SYNTHETIC, "path": f"{args.input_size}x{args.in_channels}x{4 * args.batch}"},
        "search": {"batch_size": args.batch, "amp": not args.no_amp, **case.search,
                   **({"prune": args.prune, "prune_batch_size": args.prune_batch} if args.prune else {})},
        "run": {"device": args.device, "progress": False, "plots": False, "seed": 0,
                "deterministic": args.deterministic, "flush_denormal": not args.keep_subnormals},
    })
    searcher = Searcher(cfg, Path(run_dir))
    net = searcher.supernet
    if impl == "fast" and hasattr(net, "recompute"):
        net.recompute = not args.no_recompute
    if case.setup is not None:
        case.setup(searcher)
    if args.compile and searcher.device.type == "cuda":
        searcher.supernet = torch.compile(net)
    return searcher


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(searcher: Any, ctx: Any, n: int) -> float:
    """Seconds for ``n`` search steps (architecture step active, for methods that have one)."""
    _sync(searcher.device)
    t0 = time.perf_counter()
    for _ in range(n):
        searcher.search_step(searcher.method.has_arch, ctx)  # methods without an arch step take none
    _sync(searcher.device)
    return time.perf_counter() - t0


def interleaved_times(searchers: dict[str, Any], warmup: int, steps: int, rounds: int) -> dict[str, float]:
    """Seconds of ``steps`` search steps per searcher, after ``warmup`` each, taken in ``rounds``
    rounds that alternate between the searchers (so all see the same machine load)."""
    ctxs = {name: s.context() for name, s in searchers.items()}
    for name, s in searchers.items():
        run_steps(s, ctxs[name], warmup)
    times = {name: 0.0 for name in searchers}
    for n in [steps // rounds + (r < steps % rounds) for r in range(rounds)]:
        for name, s in searchers.items():
            times[name] += run_steps(s, ctxs[name], n)
    return times


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One path alone: warm-up, a few steps, peak memory (run in a fresh process)."""
    with tempfile.TemporaryDirectory() as tmp:
        s = build_searcher(args, args.child, tmp)
        ctx = s.context()
        if s.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(s.device)
        run_steps(s, ctx, args.warmup)
        t = run_steps(s, ctx, args.child_steps)
        return {"impl": args.child, "s_per_step": t / args.child_steps, "peak_mib": peak_memory_mib(s.device)}


def measure_peak(impl: str, argv: list[str], args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", impl]
    env = dict(os.environ)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, timeout=3600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--space", default="darts", choices=SPACES.names(),
                   help="the space of the cases that name none")
    p.add_argument("--method", default="pc-darts",
                   help="a registered method, a case (" + ", ".join(CASES) + "), several separated by commas, "
                        "or all (every case)")
    p.add_argument("--C", type=int, default=16, help="initial channels")
    p.add_argument("--cells", type=int, default=None, help="DARTS: cells (8); NB201: cells per stage N (5)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--k", type=int, default=None, help="partial-channel factor K (default: the method's)")
    p.add_argument("--channel-mode", default="first+shuffle")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--steps", type=int, default=6, help="timed steps per path")
    p.add_argument("--rounds", type=int, default=3, help="alternations (steps are split evenly)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--child-steps", type=int, default=2, help="steps of the peak-memory subprocesses")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--impl", default="both", choices=["both", "fast", "reference"])
    p.add_argument("--no-recompute", action="store_true", help="fast path: keep block activations")
    p.add_argument("--keep-subnormals", action="store_true",
                   help="run.flush_denormal false: IEEE subnormal floats on the CPU (slow on x86)")
    p.add_argument("--no-amp", action="store_true", help="CUDA: no bf16 autocast")
    p.add_argument("--compile", action="store_true", help="CUDA: torch.compile the supernet")
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--no-peak", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--prune", default=None, metavar="PROXY:FRACTION",
                   help="zero-shot pruning before the steps (search.prune, e.g. naswot:0.5); compare with a line "
                        "without it")
    p.add_argument("--prune-batch", type=int, default=8, help="images the pruning proxy sees (default 8)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def measure(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """One case: interleaved timing of its paths in this process, peaks in subprocesses."""
    impls = ["fast", "reference"] if args.impl == "both" else [args.impl]
    with tempfile.TemporaryDirectory() as tmp:
        searchers = {impl: build_searcher(args, impl, f"{tmp}/{impl}") for impl in impls}
        times = interleaved_times(searchers, args.warmup, args.steps, args.rounds)
        first = searchers[impls[0]]
        device, k, space = first.device, first.k, first.cfg.space.name
        fast_net = searchers["fast"].supernet if "fast" in searchers else None
        passes = dict(getattr(fast_net, "reference_passes", None) or {})
        built = sum(1 for _ in first.supernet.candidate_ops()) if args.prune else None
    short = {"fast": "fast", "reference": "ref"}
    case = case_of(args)
    rec: dict[str, Any] = {
        "case": args.method, "space": space, "method": case.method["name"],
        **({"objective": case.objective["name"]} if case.objective else {}), "C": args.C,
        "cells": args.cells or get_space(space).default_layers, "batch": args.batch,
        "k": k, "channel_mode": args.channel_mode, "input_size": args.input_size, "device": str(device),
        "threads": torch.get_num_threads(), "steps": args.steps, "recompute": not args.no_recompute,
        "torch": torch.__version__,
    }
    if args.prune:  # the candidate ops still built in all cells (the full DARTS supernet: 7 per edge)
        rec.update(prune=args.prune, built_ops=built)
    for impl in impls:
        s = times[impl] / args.steps
        rec[f"{short[impl]}_s_per_step"] = round(s, 4)
        rec[f"{short[impl]}_images_per_s"] = round(args.batch / s, 2)  # weight-batch images per second
    if len(impls) == 2:
        rec["speedup"] = round(rec["ref_s_per_step"] / rec["fast_s_per_step"], 3)
    if not args.no_peak:
        for impl in impls:
            res = measure_peak(impl, argv, args)
            rec[f"{short[impl]}_peak_mib"] = round(res["peak_mib"], 1)
        if len(impls) == 2:
            rec["peak_ratio"] = round(rec["fast_peak_mib"] / rec["ref_peak_mib"], 3)
    if "fast" in impls:
        rec["fast_reference_passes"] = passes  # the fast supernet's passes on its reference path (none: {})
    return rec


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    names = list(CASES) if args.method == "all" else args.method.split(",")
    if len(names) == 1:
        print(json.dumps(measure(args, argv)), flush=True)
        return 0
    failed = 0
    for name in names:  # one line per case, each with its own argv (the peak subprocesses rebuild it)
        case_argv = [*argv, "--method", name]  # the last --method wins
        try:
            rec = measure(parse_args(case_argv), case_argv)
        except Exception as exc:  # one broken case must not hide the others' lines; it is reported
            failed += 1
            rec = {"case": name, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(rec), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
