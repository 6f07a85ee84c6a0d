"""Where the time of a search step goes: a per-op-type table from ``torch.profiler``.

The Searcher is built as in :mod:`search_step` (same options; fast path by default). After
warm-up, ``--profile-steps`` search steps run under the profiler, with markers around the
architecture step, the weight step, every backward pass (``Tensor.backward``,
``torch.autograd.grad``) and the optimisers (``Optimizer.step``/``zero_grad``, gradient
clipping). Every outermost ``aten::`` op is put in one column (architecture step forward /
backward, weight step forward / backward, optimisers) and one row by its kind:

* depthwise conv (a grouped conv with one input channel per group), 1x1 conv, other conv
  (the stem, dense k x k convs), each with its backward;
* BN, pooling, ReLU (``threshold_backward`` included), copies (``copy_``, ``cat``,
  ``clone``, ``contiguous``, index/gather/scatter, padding), the mixing sums (``mm``/``bmm``/
  ``addmm``/``einsum``/``sum``), other elementwise (``add``/``mul``/...), other ops;
* Python overhead: the column's wall time minus the time of its ops (the interpreter, the
  autograd engine's own work, the profiler's cost).

Milliseconds per step, averaged over the profiled steps; a markdown table to stdout (and
``--json``: the same numbers as one JSON line).

    python benchmarks/profile_step.py --space darts --method pc-darts --C 16 --cells 8 --batch 32 --k 4 --threads 2
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parent), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import search_step  # noqa: E402  (this folder's benchmark: its options and Searcher)

COLUMNS = ("arch fwd", "arch bwd", "weight fwd", "weight bwd", "optimisers")
ROWS = ("depthwise conv", "1x1 conv", "other conv", "BN", "pooling", "ReLU", "copies", "mixing sums",
        "elementwise", "other ops", "Python overhead")
COPIES = ("copy", "cat", "clone", "contiguous", "index", "gather", "scatter", "pad", "to", "_to_copy", "stack",
          "narrow_copy", "empty", "zero", "fill", "new_zeros", "zeros", "ones", "split", "chunk", "slice",
          "select", "as_strided", "permute", "view", "reshape", "transpose", "t", "expand", "unsqueeze", "squeeze",
          "flatten", "unbind", "channel_shuffle", "resize")
MIXING = ("mm", "bmm", "addmm", "matmul", "einsum", "sum", "linear", "baddbmm", "addbmm", "softmax",
          "_softmax", "_softmax_backward_data", "mean")
ELEMENTWISE = ("add", "mul", "sub", "div", "neg", "sqrt", "pow", "addcmul", "addcdiv", "lerp", "mul_", "add_",
               "clamp", "where", "exp", "log", "abs", "sign", "maximum", "minimum", "rsqrt", "reciprocal", "norm",
               "linalg_vector_norm", "_foreach")

MARKS = ("bench::arch_step", "bench::weight_step", "bench::backward", "bench::optimiser")


def conv_kind(ev: Any) -> str:
    """depthwise / 1x1 / other from the weight shape of a conv event (record_shapes)."""
    shapes = [s for s in (ev.input_shapes or []) if isinstance(s, list) and len(s) == 4]
    if len(shapes) >= 2:
        w = shapes[1] if "backward" not in ev.key else (shapes[2] if len(shapes) > 2 else shapes[1])
        if w[2] == 1 and w[3] == 1:
            return "1x1 conv"
        if w[1] == 1:
            return "depthwise conv"
    return "other conv"


def op_row(ev: Any) -> str:
    name = ev.key.removeprefix("aten::")
    base = name.rstrip("_")
    if "conv" in name:
        return conv_kind(ev)
    if "batch_norm" in name:
        return "BN"
    if "pool" in name:
        return "pooling"
    if base in ("relu", "threshold_backward", "threshold", "clamp_min"):
        return "ReLU"
    if base in MIXING:
        return "mixing sums"
    if base in COPIES or any(name.startswith(c) for c in ("index", "_to_copy", "copy", "cat", "clone")):
        return "copies"
    if base in ELEMENTWISE or name.startswith("_foreach"):
        return "elementwise"
    return "other ops"


def ancestors(ev: Any) -> list[str]:
    out, p = [], ev.cpu_parent
    while p is not None:
        out.append(p.key)
        p = p.cpu_parent
    return out


def column(names: list[str]) -> str | None:
    """The column of an event whose ancestors are ``names`` (None: outside both steps)."""
    if any(n.startswith(("Optimizer.", "bench::optimiser")) for n in names):
        return "optimisers"
    step = "arch" if "bench::arch_step" in names else "weight" if "bench::weight_step" in names else None
    if step is None:
        return None
    return f"{step} {'bwd' if 'bench::backward' in names else 'fwd'}"


@contextlib.contextmanager
def marked(searcher: Any) -> Any:
    """Profiler markers around the steps, backward passes and optimisers (patched in, put back)."""
    saved = [(torch.Tensor, "backward"), (torch.autograd, "grad"), (nn.utils, "clip_grad_norm_")]
    originals = [getattr(o, n) for o, n in saved]

    def wrap(fn: Any, mark: str) -> Any:
        def inner(*a: Any, **k: Any) -> Any:
            with record_function(mark):
                return fn(*a, **k)
        return inner

    method, s = searcher.method, searcher
    had = {n: n in vars(method) for n in ("arch_step", "step")}
    torch.Tensor.backward = wrap(originals[0], "bench::backward")  # type: ignore[method-assign]
    torch.autograd.grad = wrap(originals[1], "bench::backward")
    nn.utils.clip_grad_norm_ = wrap(originals[2], "bench::optimiser")
    s.weight_step = wrap(type(s).weight_step.__get__(s), "bench::weight_step")
    method.arch_step = wrap(type(method).arch_step.__get__(method), "bench::arch_step")
    try:
        yield
    finally:
        for (o, n), f in zip(saved, originals):
            setattr(o, n, f)
        del s.weight_step
        for n, present in had.items():
            if not present and n in vars(method):
                delattr(method, n)


def profile_table(searcher: Any, steps: int) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """(row -> column -> ms per step, column -> wall ms per step) of ``steps`` search steps."""
    ctx = searcher.context()
    with marked(searcher), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            searcher.search_step(searcher.method.has_arch, ctx)
    events = prof.events()
    table: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    wall: dict[str, float] = defaultdict(float)
    for ev in events:
        names = ancestors(ev)
        if ev.key in MARKS or ev.key.startswith("Optimizer."):
            # the wall time of each column's regions (outermost region of its kind only)
            if ev.key == "bench::backward" and "bench::backward" not in names:
                col = column([ev.key, *names])
                if col is not None:
                    wall[col] += ev.cpu_time_total
            elif (ev.key == "bench::optimiser" or ev.key.startswith("Optimizer.")) and \
                    not any(n.startswith(("Optimizer.", "bench::optimiser")) for n in names):
                wall["optimisers"] += ev.cpu_time_total
            elif ev.key in ("bench::arch_step", "bench::weight_step"):
                wall[ev.key.removeprefix("bench::").replace("_", " ")] += ev.cpu_time_total
            continue
        if not ev.key.startswith("aten::") or any(n.startswith("aten::") for n in names):
            continue  # only the outermost aten ops (their time includes the nested ones)
        col = column(names)
        if col is not None:
            table[op_row(ev)][col] += ev.cpu_time_total
    # forward wall = step wall - its backward and optimiser regions
    opt_in = defaultdict(float)
    for ev in events:
        if ev.key.startswith("Optimizer.") or ev.key == "bench::optimiser":
            names = ancestors(ev)
            if any(n.startswith(("Optimizer.", "bench::optimiser")) for n in names):
                continue
            step = "arch" if "bench::arch_step" in names else "weight" if "bench::weight_step" in names else None
            if step:
                opt_in[step] += ev.cpu_time_total
    for step in ("arch", "weight"):
        wall[f"{step} fwd"] = wall.pop(f"{step} step", 0.0) - wall.get(f"{step} bwd", 0.0) - opt_in[step]
    for col in COLUMNS:
        ops = sum(table[r][col] for r in ROWS if r != "Python overhead")
        table["Python overhead"][col] = max(wall.get(col, 0.0) - ops, 0.0)
    ms = {r: {c: table[r][c] / 1000 / steps for c in COLUMNS} for r in ROWS}
    return ms, {c: wall.get(c, 0.0) / 1000 / steps for c in COLUMNS}


def markdown(ms: dict[str, dict[str, float]], wall: dict[str, float]) -> str:
    lines = ["| op type | " + " | ".join(COLUMNS) + " | total | share |", "|---" * (len(COLUMNS) + 3) + "|"]
    grand = sum(wall.values()) or 1.0
    for r in sorted(ROWS, key=lambda r: -sum(ms[r].values())):
        tot = sum(ms[r].values())
        lines.append(f"| {r} | " + " | ".join(f"{ms[r][c]:.0f}" for c in COLUMNS)
                     + f" | {tot:.0f} | {100 * tot / grand:.0f}% |")
    lines.append("| **wall** | " + " | ".join(f"**{wall[c]:.0f}**" for c in COLUMNS) + f" | **{grand:.0f}** | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    p.add_argument("--profile-steps", type=int, default=2)
    p.add_argument("--json", action="store_true", help="also print the numbers as one JSON line")
    own, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    args = search_step.parse_args(rest)
    if args.threads:
        torch.set_num_threads(args.threads)
    impl = "fast" if args.impl == "both" else args.impl
    with tempfile.TemporaryDirectory() as tmp:
        searcher = search_step.build_searcher(args, impl, tmp)
        search_step.run_steps(searcher, searcher.context(), args.warmup)
        ms, wall = profile_table(searcher, own.profile_steps)
    print(f"{args.space} {args.method} {impl} C={args.C} cells={args.cells} batch={args.batch} k={searcher.k} "
          f"threads={torch.get_num_threads()}: ms per step (profiled, {own.profile_steps} steps)")
    print(markdown(ms, wall))
    if own.json:
        print(json.dumps({"impl": impl, "ms": ms, "wall_ms": wall}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
