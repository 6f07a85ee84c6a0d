"""Does the data or the seed decide a search's cell? The architecture gradient across seeds.

For each seed, a real ``Searcher`` of ``--preset`` (default ``quick``, with any dotted
overrides given after the options) trains through its warm-up: every step before the
architecture first moves, or ``--steps``. Then, without any update, it sums the gradient of
the search loss with respect to every architecture parameter over the whole architecture
split, in train mode as an architecture step sees it. For each parameter the script prints
the correlation of these gradients between every pair of seeds (an op weight's gradient is
centred over the ops of its edge first: the softmax ignores a common shift).

Near 1, the seeds agree on which ops and inputs the data favours, and the found cell can be
stable across seeds; near 0, the seed (initialisation and data order) decides, and the exact
cell will differ from seed to seed however the architecture step is tuned. One JSON line per
parameter goes to stdout.

    python benchmarks/seed_signal.py --seeds 0,1,2
    python benchmarks/seed_signal.py --seeds 0,1,2 --steps 110 --method.warmup_epochs 10 --search.epochs 11
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def architecture_gradient(preset: str, overrides: list[str], seed: int, steps: Optional[int],
                          threads: int) -> dict[str, torch.Tensor]:
    """The summed architecture gradient over the architecture split after the warm-up."""
    from pcdarts.search.config import apply_override, build_config, merge_onto_preset, parse_overrides
    from pcdarts.search.searcher import Searcher

    d: dict = {}
    for key, value in parse_overrides(overrides, command="benchmarks/seed_signal.py"):
        apply_override(d, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        d["run"] = {**d.get("run", {}), "seed": seed, "threads": threads, "progress": False, "plots": False}
        cfg = build_config(merge_onto_preset(preset, d))
        searcher = Searcher(cfg, Path(tmp) / "run")
        warmup = getattr(cfg.method, "warmup_epochs", 0) * len(searcher.train_loader)
        with contextlib.redirect_stdout(sys.stderr):  # the run's epoch and stop lines; stdout is this script's JSON
            searcher.run(stop_after_steps=steps if steps is not None else warmup)
        ctx, method = searcher.context(), searcher.method
        searcher.supernet.train()
        named = [(n, p) for n, p in method.arch.named_parameters() if p.requires_grad]
        total = {n: torch.zeros_like(p) for n, p in named}
        for images, labels in searcher.eval_loader:  # the whole split, in order, unaugmented
            loss, _ = method.loss(ctx, (images, labels), method.mixing())
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
            for (n, _), g in zip(named, grads):
                if g is not None:
                    total[n] += g.detach() * labels.numel()
    return {n: g.cpu() for n, g in total.items()}


def centred(g: torch.Tensor) -> torch.Tensor:
    return (g - g.mean(-1, keepdim=True) if g.dim() == 2 else g - g.mean()).flatten().double()


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="quick", help="preset name or YAML file (default quick)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated search seeds (at least 2)")
    p.add_argument("--steps", type=int, default=None, help="weight steps before measuring (default: the warm-up)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args, overrides = p.parse_known_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if len(seeds) < 2:
        p.error("--seeds needs at least two seeds")
    grads = {s: architecture_gradient(args.preset, overrides, s, args.steps, args.threads) for s in seeds}
    for name in grads[seeds[0]]:
        corr = {}
        for a, b in itertools.combinations(seeds, 2):
            x, y = centred(grads[a][name]), centred(grads[b][name])
            corr[f"{a}-{b}"] = round(float(torch.corrcoef(torch.stack([x, y]))[0, 1]), 3)
        print(json.dumps({"parameter": name, "shape": list(grads[seeds[0]][name].shape), "correlation": corr,
                          "mean": round(sum(corr.values()) / len(corr), 3)}))


if __name__ == "__main__":
    main()
