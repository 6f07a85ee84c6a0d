"""The published PC-DARTS search step side by side with ours: time, peak memory, ratio.

The published code (``yuhuixu1993/PC-DARTS``: ``model_search.py``'s ``Network`` and
``architect.py``'s ``Architect``) is not vendored: pass the path of a checkout. Its
``.cuda()`` calls are shimmed to the identity at run time, so it runs on the CPU unchanged.

One search step on each side is what the published ``train_search.py`` does per batch with
``--unrolled`` off (first order): ``Architect.step`` (Adam on alpha/beta on a validation
batch), then one weight step (SGD with momentum 0.9, weight decay 3e-4, gradient norm
clipped at 5). Ours is :meth:`pcdarts.search.Searcher.search_step` of a PC-DARTS run on the
fast path (:mod:`benchmarks.search_step`'s Searcher, synthetic data with augmentation; the
published side gets fixed random batches, no data pipeline, which if anything favours it).

Timing: both sides live in one process; after warm-up, rounds alternate between them so
both see the same machine load. Peak memory: each side runs again alone in a fresh
subprocess (peak RSS, ``VmHWM``). One JSON line goes to stdout.

    python benchmarks/published_step.py /tmp/pcdarts-published --threads 2

Get a checkout: ``git clone https://github.com/yuhuixu1993/PC-DARTS /tmp/pcdarts-published``.
The published ``MixedOp`` hard-codes K=4 and the DARTS space; the setting is the issue's:
C=16, 8 cells, batch 32, 32x32 inputs, 10 classes.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(REPO), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import search_step  # noqa: E402  (this folder's benchmark)

from pcdarts.utils import peak_rss_mib  # noqa: E402


def cpu_shim() -> None:
    """Make the published code's ``.cuda()`` calls no-ops (tensors and modules stay on the CPU)."""
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]


class PublishedStep:
    """The published first-order search step behind the interface
    :func:`search_step.interleaved_times` times (``context``, ``search_step``, ``device``,
    ``method.has_arch``)."""

    def __init__(self, checkout: Path, C: int, cells: int, batch: int, seed: int = 0) -> None:
        if not (checkout / "model_search.py").is_file() or not (checkout / "architect.py").is_file():
            raise SystemExit(f"published_step: {checkout} is not a checkout of yuhuixu1993/PC-DARTS "
                             f"(no model_search.py / architect.py); clone it and pass its path")
        cpu_shim()
        sys.path.insert(0, str(checkout))
        # the published modules, imported from the checkout
        from architect import Architect
        from model_search import Network
        torch.manual_seed(seed)
        self.device = torch.device("cpu")
        self.method = types.SimpleNamespace(has_arch=True)
        criterion = nn.CrossEntropyLoss()
        self.model = Network(C, 10, cells, criterion)
        hp = types.SimpleNamespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=6e-4,
                                   arch_weight_decay=1e-3)  # train_search.py's defaults
        self.architect = Architect(self.model, hp)
        self.lr = 0.1
        self.optimizer = torch.optim.SGD(self.model.parameters(), self.lr, momentum=0.9, weight_decay=3e-4)
        self.criterion = criterion
        g = torch.Generator().manual_seed(seed + 1)
        self.batches = [(torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g))
                        for _ in range(4)]
        self.i = 0

    def context(self) -> None:
        return None

    def search_step(self, arch_active: bool, ctx: Any) -> None:
        """``train_search.py``'s loop body: the architect's first-order step, then the weight step."""
        x, y = self.batches[self.i % 4]
        xs, ys = self.batches[(self.i + 1) % 4]
        self.i += 1
        self.model.train()
        if arch_active:
            self.architect.step(x, y, xs, ys, self.lr, self.optimizer, unrolled=False)
        self.optimizer.zero_grad()
        loss = self.criterion(self.model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.optimizer.step()


def ours_args(args: argparse.Namespace) -> argparse.Namespace:
    """:mod:`search_step`'s options for our side of the comparison."""
    return search_step.parse_args(["--space", "darts", "--method", "pc-darts", "--C", str(args.C),
                                   "--cells", str(args.cells), "--batch", str(args.batch), "--k", "4",
                                   "--impl", args.impl])


def build(side: str, args: argparse.Namespace, tmp: str) -> Any:
    if side == "published":
        return PublishedStep(Path(args.checkout).resolve(), args.C, args.cells, args.batch)
    return search_step.build_searcher(ours_args(args), args.impl, f"{tmp}/{side}")


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One side alone in this fresh process: warm-up, a few steps, peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        s = build(args.child, args, tmp)
        ctx = s.context()
        search_step.run_steps(s, ctx, args.warmup)
        t = search_step.run_steps(s, ctx, args.child_steps)
    return {"side": args.child, "s_per_step": t / args.child_steps, "peak_mib": peak_rss_mib()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkout", help="path of a checkout of yuhuixu1993/PC-DARTS")
    p.add_argument("--C", type=int, default=16, help="initial channels")
    p.add_argument("--cells", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--impl", default="fast", choices=["fast", "reference"], help="our supernet path")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per side")
    p.add_argument("--rounds", type=int, default=3, help="alternations (steps are split evenly)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--child-steps", type=int, default=2, help="steps of the peak-memory subprocesses")
    p.add_argument("--no-peak", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"ours": build("ours", args, tmp), "published": build("published", args, tmp)}
        times = search_step.interleaved_times(sides, args.warmup, args.steps, args.rounds)
    rec: dict[str, Any] = {"setting": "darts pc-darts first-order", "C": args.C, "cells": args.cells,
                           "batch": args.batch, "k": 4, "impl": args.impl, "threads": torch.get_num_threads(),
                           "steps": args.steps, "torch": torch.__version__,
                           "ours_s_per_step": round(times["ours"] / args.steps, 4),
                           "published_s_per_step": round(times["published"] / args.steps, 4)}
    rec["speedup"] = round(rec["published_s_per_step"] / rec["ours_s_per_step"], 3)
    if not args.no_peak:
        for side in ("ours", "published"):
            cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", side]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=3600)
            rec[f"{side}_peak_mib"] = round(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"], 1)
        rec["peak_ratio"] = round(rec["ours_peak_mib"] / rec["published_peak_mib"], 3)
    print(json.dumps(rec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
