"""What ``search.compile`` (torch.compile, inductor) buys per search step, compile time included.

Two Searchers from the same seed on the synthetic set, the fast path eager and compiled
(``--search.compile``). The compiled one's first step runs eagerly (it builds the fast path's
plan caches); its second step traces and compiles the weight graph and the architecture
graph: that step's time minus an eager step is the compile time. Then rounds of steps
alternate between the two (same machine load). Optionally (``--bf16``) a third Searcher runs
the eager step under CPU bf16 autocast, and the relative error of one batch's weight and
architecture gradients under bf16 against float32 is reported. One JSON line goes to stdout, with the break-even
step count (compile time / time saved per step) and the 50-epoch search projection.

    python benchmarks/compile_step.py --space nb201 --C 8 --cells 1 --batch 16 --threads 2
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.search_step import SYNTHETIC, interleaved_times, run_steps  # noqa: E402


def build(args: argparse.Namespace, run_dir: str, compile: bool) -> Any:
    from pcdarts.search.config import build_config
    from pcdarts.search.searcher import Searcher

    cfg = build_config({
        "method": {"name": args.method, **({"warmup_epochs": 0} if args.method in ("darts", "pc-darts") else {})},
        "space": {"name": args.space, "C": args.C, "layers": args.cells, "k": args.k, "impl": "fast"},
        "data": {"dataset": SYNTHETIC, "path": f"32x3x{4 * args.batch}"},
        "search": {"batch_size": args.batch, "compile": compile},
        "run": {"device": "cpu", "progress": False, "plots": False, "seed": 0},
    })
    return Searcher(cfg, Path(run_dir))


def bf16_gradient_error(searcher: Any) -> dict[str, float]:
    """Relative error (L2 norm of the difference over the norm) of the weight and the architecture
    gradients of one batch's loss under CPU bf16 autocast against float32."""
    ctx, batch = searcher.context(), searcher.train_loader.next()
    wp, ap = list(searcher.weight_params), list(searcher.method.arch_parameters())

    def grads(bf16: bool) -> list[torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = ctx.objective(searcher.supernet, batch, searcher.method.mixing())
        gs = torch.autograd.grad(loss, wp + ap, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g.float() for g, p in zip(gs, wp + ap)]

    g32, g16 = grads(False), grads(True)
    out = {}
    for name, sl in (("weight", slice(0, len(wp))), ("arch", slice(len(wp), None))):
        a, b = torch.cat([g.flatten() for g in g32[sl]]), torch.cat([g.flatten() for g in g16[sl]])
        out[f"bf16_{name}_grad_rel_err"] = round(float((b - a).norm() / a.norm()), 4)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--space", default="nb201")
    p.add_argument("--method", default="darts")
    p.add_argument("--C", type=int, default=8)
    p.add_argument("--cells", type=int, default=1, help="DARTS: cells; NB201: cells per stage N")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="also time the eager step under CPU bf16 autocast")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        eager, comp = build(args, f"{tmp}/e", False), build(args, f"{tmp}/c", True)
        run_steps(eager, eager.context(), 1)  # the first step, eager in both (it builds the plan caches)
        run_steps(comp, comp.context(), 1)
        t_eager = run_steps(eager, eager.context(), 1)
        t0 = time.perf_counter()
        run_steps(comp, comp.context(), 1)  # traces and compiles both graphs
        compile_s = time.perf_counter() - t0 - t_eager
        searchers = {"eager": eager, "compiled": comp}
        if args.bf16:
            bf = build(args, f"{tmp}/b", False)
            bf._autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # the step's objective calls
            searchers["bf16"] = bf
            bf16_errors = bf16_gradient_error(build(args, f"{tmp}/g", False))
        times = interleaved_times(searchers, 1, args.steps, args.rounds)
    rec: dict[str, Any] = {"space": args.space, "method": args.method, "C": args.C, "cells": args.cells,
                           "batch": args.batch, "k": args.k, "threads": args.threads, "torch": torch.__version__,
                           "backend": "inductor", "compile_s": round(compile_s, 1)}
    for name, t in times.items():
        rec[f"{name}_s_per_step"] = round(t / args.steps, 4)
    if args.bf16:
        rec.update(bf16_errors)
    saved = rec["eager_s_per_step"] - rec["compiled_s_per_step"]
    rec["speedup"] = round(rec["eager_s_per_step"] / rec["compiled_s_per_step"], 3)
    rec["break_even_steps"] = round(compile_s / saved) if saved > 0 else None
    # a 50-epoch CIFAR-10 search: 25k weight images per epoch at this batch
    steps_50 = 50 * (25000 // args.batch)
    rec["search_50_epochs_saved_s"] = round(steps_50 * saved - compile_s)
    print(json.dumps(rec))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
