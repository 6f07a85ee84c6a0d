"""The NAS-Bench-201 quality table, measured by the tool: every search method with an NB201
preset and both random-search baselines, x 3 search seeds, through ``pcdarts compare``.

For each method it reports the mean ± sample std over the seeds of the benchmark's CIFAR-10,
CIFAR-100 and ImageNet16-120 validation accuracies of the found cells, the seed agreement,
the parameter-free ops, the search time and the peak memory (``compare.md``), and here in
addition every found cell with its rank among all 15,625 NB201 cells by CIFAR-10 validation
accuracy (its top-percentile) and whether the method beats ``random-lookup`` on the mean.
``quality.md`` and ``quality.json`` are written next to ``compare.md``.

Two budgets:

* ``--scale cpu`` (default): fits a session on a 2-core machine: the NB201 supernet shrunk
  to C=8, N=2, 2000 images of the shared CIFAR-10 batch with one fixed split for every seed,
  ``--budget 5`` (every epoch field of every preset scaled alike), one thread per run, two
  runs at once;
* ``--scale paper``: the presets as they are (C=16, N=5, 50-100 epochs, all the data): the
  command for a GPU (``--data cifar10:PATH --jobs <GPUs>``).

    python benchmarks/search_quality.py                                   # the CPU table
    python benchmarks/search_quality.py --scale paper --data cifar10:/data/cifar-10-batches-py --jobs 4

Any other arguments are dotted overrides passed to every run (``--space.C 4``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BASELINES = ("random-lookup", "rsws")
CPU_OVERRIDES = ("--space.C", "8", "--space.layers", "2", "--data.max_samples", "2000", "--data.split_seed", "0",
                 "--run.threads", "1")
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar-10-batches-py"


def nb201_methods() -> list[str]:
    """Every registered method with an NB201 preset (the baselines last)."""
    from pcdarts.errors import ConfigError
    from pcdarts.registry import METHODS
    from pcdarts.search.compare import preset_for
    out = []
    for m in METHODS.names():
        try:
            preset_for(m, "nb201")
        except ConfigError:
            continue
        out.append(m)
    return [m for m in out if m not in BASELINES] + [m for m in BASELINES if m in out]


def all_valid_accuracies(dataset: str = "cifar10") -> list[float]:
    """The benchmark's validation accuracy of every one of the 15,625 NB201 cells."""
    from pcdarts.analysis.zero_cost import NUM_CELLS, cell_of_code
    from pcdarts.nb201 import query
    return [float(query(cell_of_code(c), dataset).valid_acc_mean) for c in range(NUM_CELLS)]


def top_percent(value: float, population: Sequence[float]) -> float:
    """The share (%) of the population strictly better than ``value``: 0.5 means top 0.5 %."""
    return 100.0 * sum(1 for v in population if v > value) / len(population)


def quality_report(root: Path, methods: Sequence[str], seeds: Sequence[int],
                   population: Optional[Sequence[float]] = None) -> dict[str, Any]:
    """Per method and seed: the found cell, its CIFAR-10 validation accuracy and top-percentile;
    per method: the mean and whether it beats random-lookup's mean."""
    from pcdarts.nb201 import query
    population = list(population) if population is not None else all_valid_accuracies()
    report: dict[str, Any] = {"methods": {}, "cells": len(population)}
    for m in methods:
        runs = []
        for seed in seeds:
            run = root / f"{m}-s{seed}"
            cell = json.loads((run / "manifest.json").read_text()).get("genotype")
            acc = float(query(cell, "cifar10").valid_acc_mean)
            runs.append({"seed": seed, "cell": cell, "cifar10_valid": acc, "top_percent": top_percent(acc, population)})
        mean = sum(r["cifar10_valid"] for r in runs) / len(runs)
        report["methods"][m] = {"runs": runs, "cifar10_valid_mean": mean,
                                "all_seeds_top_1_percent": all(r["top_percent"] < 1.0 for r in runs)}
    base = report["methods"].get("random-lookup")
    for m, r in report["methods"].items():
        r["beats_random_lookup"] = None if base is None or m == "random-lookup" else (
            r["cifar10_valid_mean"] > base["cifar10_valid_mean"])
    searched = {m: r for m, r in report["methods"].items() if m not in BASELINES}
    if searched:
        best = max(searched, key=lambda m: searched[m]["cifar10_valid_mean"])
        report["best_method"] = best
    return report


def write_report(root: Path, report: dict[str, Any]) -> Path:
    lines = ["# NB201 search quality: the found cells", "",
             f"Top %: the share of all {report['cells']} NB201 cells with a higher CIFAR-10 validation accuracy.", "",
             "| method | seed | CIFAR-10 valid (%) | top % | cell |", "|---|---|---|---|---|"]
    for m, r in report["methods"].items():
        for run in r["runs"]:
            lines.append(f"| {m} | {run['seed']} | {run['cifar10_valid']:.2f} | {run['top_percent']:.2f} | "
                         f"{run['cell'].replace('|', chr(92) + '|')} |")
    lines += ["", "| method | mean CIFAR-10 valid (%) | every seed in the top 1 % | beats random-lookup |",
              "|---|---|---|---|"]
    for m, r in report["methods"].items():
        beats = "" if r["beats_random_lookup"] is None else ("yes" if r["beats_random_lookup"] else "no")
        lines.append(f"| {m} | {r['cifar10_valid_mean']:.2f} | {'yes' if r['all_seeds_top_1_percent'] else 'no'} "
                     f"| {beats} |")
    if "best_method" in report:
        lines += ["", f"Best search method by mean CIFAR-10 validation accuracy: {report['best_method']}."]
    path = root / "quality.md"
    path.write_text("\n".join(lines) + "\n")
    (root / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    return path


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=("cpu", "paper"), default="cpu", help="the budget (see above)")
    p.add_argument("--methods", default=None, help="comma-separated (default: every method with an NB201 preset "
                                                   "and both baselines)")
    p.add_argument("--seeds", default="0,1,2", help="search seeds (default 0,1,2)")
    p.add_argument("--data", default=None, help=f"NAME:PATH (default cifar10:{SHARED_CIFAR})")
    p.add_argument("--budget", type=int, default=None, help="search epochs (default 5 at --scale cpu, the "
                                                            "presets' at --scale paper)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    p.add_argument("--out", default=None, help="the compare folder (default runs/quality-<scale>)")
    p.add_argument("--no-progress", action="store_true")
    args, overrides = p.parse_known_args(argv)
    from pcdarts.search.compare import compare
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else nb201_methods()
    seeds = [int(s) for s in args.seeds.split(",")]
    data = args.data or f"cifar10:{SHARED_CIFAR}"
    budget = args.budget if args.budget is not None else (5 if args.scale == "cpu" else None)
    extra = list(CPU_OVERRIDES if args.scale == "cpu" else ()) + list(overrides)
    out = Path(args.out or f"runs/quality-{args.scale}")
    print(f"methods: {', '.join(methods)}; seeds {args.seeds}; data {data}; budget {budget}; "
          f"overrides {' '.join(extra) or '-'}", flush=True)
    from pcdarts.errors import PcdartsError
    try:
        root = compare("nb201", methods, seeds, data=data, budget=budget, out=out, overrides=extra,
                       progress=not args.no_progress and args.jobs == 1, jobs=args.jobs)
    except PcdartsError as e:  # one line, as the command line prints it
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = quality_report(root, methods, seeds)
    path = write_report(root, report)
    print(path.read_text())
    print(f"written: {path}, {root / 'quality.json'}, {root / 'compare.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
