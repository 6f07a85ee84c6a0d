"""Zero-cost proxies on NAS-Bench-201 cells: scores, rank correlations with the benchmark,
a training-free search (``pcdarts zero-cost``; docs/methods.md, "Zero-cost proxies").

Every sampled (or every one of the 15,625) NB201 cell is built as its evaluation network
(:class:`pcdarts.nn.networks.NB201Network`, ``C`` channels, ``N`` cells per stage), initialised
from ``seed`` (the same weights for a cell whatever the order or the sample), put in train
mode, and scored by each proxy of :mod:`pcdarts.scorers.zero_cost` on one fixed batch: the
first ``batch_size`` images of a seeded permutation of the data's training split. With the
NAS-Bench-201 lookup (:mod:`pcdarts.nb201`) each proxy's Kendall tau and Spearman rho
against the benchmark's validation accuracy are computed (:mod:`pcdarts.analysis.correlation`),
next to the ``params`` and ``macs`` baselines.

Scores are cached, one JSON line per (cell, proxy, seed, data fingerprint, network size), in
``zero_cost_cache.jsonl`` (in the output folder, or the default cache folder
``$XDG_CACHE_HOME/pcdarts/zero-cost``), written as each cell finishes: a re-run, or a run
that was interrupted, recomputes nothing it has. The data fingerprint is a hash of the
exact batch (images after normalisation, labels), so another dataset, seed or batch size
never reads a stale score.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional, Sequence, Union

import numpy as np
import torch

from pcdarts.analysis.correlation import average_ranks, kendall, spearman
from pcdarts.config import coerce_section
from pcdarts.errors import ConfigError
from pcdarts.genotype import NB201_EDGES, NB201Genotype
from pcdarts.genotype.primitives import NB201_PRIMITIVES
from pcdarts.ranges import Count, Range, Seed, check_ranges
from pcdarts.registry import PROXIES
from pcdarts.scorers import zero_cost as zc
from pcdarts.utils import progress_bar

# the order of the table: the proxies, the newer ones, the rank ensemble, then the baselines;
# other registered ones after
PROXY_ORDER = ("naswot", "synflow", "snip", "grad_norm", "jacob_cov", "meco", "zico", "ensemble", "params", "macs")
NUM_CELLS = len(NB201_PRIMITIVES) ** len(NB201_EDGES)  # 15,625
CACHE_FILE = "zero_cost_cache.jsonl"
# the rank ensemble: not a function of one network but of the scored set (the mean rank of each
# cell under its member proxies), so it lives here rather than in the PROXIES registry
ENSEMBLE = "ensemble"
DEFAULT_ENSEMBLE = ("naswot", "synflow", "meco", "zico")


def known_proxy(name: str) -> bool:
    """A registered proxy or the rank ensemble."""
    return name == ENSEMBLE or name in PROXIES


def proxy_names() -> list[str]:
    """Every name ``--proxies`` accepts, sorted."""
    return sorted([*PROXIES.names(), ENSEMBLE])


def default_proxies() -> list[str]:
    """Every registered proxy and the ensemble, the ones of :data:`PROXY_ORDER` first."""
    return [p for p in PROXY_ORDER if known_proxy(p)] + [p for p in PROXIES.names() if p not in PROXY_ORDER]


@dataclass(frozen=True)
class ZeroCostConfig:
    """The settings of one ``pcdarts zero-cost`` (and :func:`run_zero_cost`), a section of the
    one config machinery (declared ranges, checked when built; every bad value one ConfigError).

    Attributes:
        data: data spec of the one batch every cell is scored on.
        sample: NB201 cells drawn with ``seed``; None = all 15,625.
        proxies: the proxies (and ``ensemble``) to score; () = :func:`default_proxies`.
        search: also pick the best cell by this proxy; None = no pick.
        ensemble_of: the rank ensemble's members; () = :data:`DEFAULT_ENSEMBLE`.
        C, N: the NB201 network's first-stage channels and cells per stage.
        batch_size: images of the batch.
        seed: seed of the sample, the batch and every cell's weights.
        dataset: the benchmark's dataset the scores are correlated with.
    """

    data: str = "digits"
    sample: Optional[Annotated[int, Range(1, NUM_CELLS)]] = 200
    proxies: tuple[str, ...] = ()
    search: Optional[str] = None
    ensemble_of: tuple[str, ...] = ()
    C: Count = 16
    N: Count = 5
    batch_size: Count = 64
    seed: Seed = 0
    dataset: str = "cifar10"

    def __post_init__(self) -> None:
        from pcdarts.nb201 import DATASETS
        check_ranges(self, "zero-cost")
        for p in self.names:
            if not known_proxy(p):
                raise ConfigError(f"unknown proxy {p!r}; choose from: {', '.join(proxy_names())}")
        for p in self.members:
            if p not in PROXIES:
                raise ConfigError(f"--ensemble-of: unknown proxy {p!r} (the ensemble's members are single proxies); "
                                  f"choose from: {', '.join(PROXIES.names())}")
        for p in dict.fromkeys(self.scored):
            need = self.min_images(p)
            if self.batch_size < need:
                others = [q for q in self.names if self.min_images(q) <= self.batch_size]
                raise ConfigError(f"--batch-size {self.batch_size}: the {p} proxy needs at least {need} images; "
                                  f"use --batch-size {need} or more, or leave {p} out (e.g. --proxies "
                                  f"{','.join(others) or 'naswot'})")
        if self.dataset not in DATASETS:
            raise ConfigError(f"--benchmark must be one of {', '.join(DATASETS)}, got {self.dataset!r}")

    @property
    def names(self) -> list[str]:
        """The proxies reported (the search proxy included)."""
        names = list(self.proxies) or default_proxies()
        return names + ([self.search] if self.search is not None and self.search not in names else [])

    @property
    def members(self) -> list[str]:
        return list(self.ensemble_of) or list(DEFAULT_ENSEMBLE)

    @property
    def scored(self) -> list[str]:
        """The single proxies computed: the reported ones and, for the ensemble, its members."""
        single = [p for p in self.names if p != ENSEMBLE]
        return single + ([m for m in self.members if m not in single] if ENSEMBLE in self.names else [])

    def min_images(self, proxy: str) -> int:
        """The images a proxy needs (the ensemble: what its members need)."""
        if proxy == ENSEMBLE:
            return max(self.min_images(m) for m in self.members)
        return getattr(PROXIES.get(proxy), "min_images", 1) if proxy in PROXIES else 1


def zero_cost_config(**values: Any) -> ZeroCostConfig:
    """A :class:`ZeroCostConfig` through the machinery (types coerced, ranges checked)."""
    return coerce_section(ZeroCostConfig, "zero-cost", values)


def ensemble_scores(rows: Sequence[dict[str, Any]], members: Sequence[str]) -> list[float]:
    """The rank ensemble of ``rows``: per row, the mean over ``members`` of its average rank
    (1 = lowest score of the set, ties sharing their mean rank, non-finite scores lowest) under
    that proxy. Higher = better, like every proxy; it is relative to the scored set."""
    if not members:
        raise ValueError("the rank ensemble needs at least one member proxy")
    if not rows:
        return []
    ranks = np.stack([average_ranks([float(r[m]) for r in rows]) for m in members])
    return [float(v) for v in ranks.mean(0)]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pcdarts" / "zero-cost"


def cell_of_code(code: int) -> NB201Genotype:
    """The NB201 cell whose base-5 digits (edge 0 most significant) are its op indices."""
    digits = []
    for _ in NB201_EDGES:
        code, d = divmod(code, len(NB201_PRIMITIVES))
        digits.append(d)
    return NB201Genotype(tuple(NB201_PRIMITIVES[d] for d in reversed(digits)))


def sample_cells(n: Optional[int], seed: int = 0) -> list[str]:
    """Arch strings of ``n`` distinct cells drawn uniformly with ``seed`` (None: all 15,625, in code order)."""
    if n is None:
        codes = list(range(NUM_CELLS))
    else:
        if not 1 <= n <= NUM_CELLS:
            raise ValueError(f"--sample must be between 1 and {NUM_CELLS}, got {n}")
        codes = np.random.default_rng(seed).choice(NUM_CELLS, size=n, replace=False).tolist()
    return [cell_of_code(int(c)).arch_str() for c in codes]


@dataclass
class ProxyBatch:
    """The one batch every cell is scored on, with what identifies it."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    fingerprint: str
    spec: str


def load_batch(spec: str, batch_size: int, seed: int = 0, device: Union[str, torch.device] = "cpu") -> ProxyBatch:
    """The seeded subset of ``batch_size`` images (:func:`pcdarts.data.sources.seeded_subset`:
    the first ``batch_size`` of a ``seed``-permutation; all of them, in order, when the set is
    smaller) of the training split of a data spec (``digits``, ``cifar10:PATH``,
    ``synthetic:16x3x64`` ...), normalised by the search's one normalisation
    (:func:`pcdarts.data.device_loader.normalise`)."""
    from pcdarts.data.device_loader import normalise
    from pcdarts.data.sources import load_dataset, seeded_subset
    ds = load_dataset(spec, "train")
    images, labels = seeded_subset(ds.images, ds.labels, int(batch_size), seed)
    x = normalise(images, ds.mean, ds.std).contiguous()
    y = labels.long().contiguous()
    h = hashlib.sha1()
    h.update(repr(tuple(x.shape)).encode())
    h.update(x.numpy().tobytes())
    h.update(y.numpy().tobytes())
    return ProxyBatch(x.to(device), y.to(device), int(ds.num_classes), h.hexdigest()[:16], spec)


class ScoreCache:
    """Proxy scores on disk, one JSON line ``{"k": key, "v": value}`` each, appended as they come."""

    def __init__(self, folder: Optional[Union[str, Path]]) -> None:
        self.path = None if folder is None else Path(folder) / CACHE_FILE
        self.values: dict[str, float] = {}
        self.hits = 0
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    self.values[str(rec["k"])] = float(rec["v"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by an interruption: scored again

    @staticmethod
    def key(arch: str, proxy: str, seed: int, fingerprint: str, size: str) -> str:
        return f"{arch}|{proxy}|seed={seed}|data={fingerprint}|{size}"

    def get(self, key: str) -> Optional[float]:
        v = self.values.get(key)
        if v is not None:
            self.hits += 1
        return v

    def put(self, items: dict[str, float]) -> None:
        self.values.update(items)
        if self.path is None or not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            for k, v in items.items():
                f.write(json.dumps({"k": k, "v": v}) + "\n")


def network_size(C: int, N: int, num_classes: int, in_channels: int, input_size: int) -> str:
    return f"nb201-C{C}-N{N}-classes{num_classes}-in{in_channels}x{input_size}"


def score_cells(archs: Sequence[str], batch: ProxyBatch, proxies: Sequence[str], *, C: int = 16, N: int = 5,
                seed: int = 0, cache: Optional[ScoreCache] = None, progress: bool = False) -> list[dict[str, Any]]:
    """One row per cell: ``{"arch": ..., proxy: score, ...}`` (cached scores are not recomputed)."""
    from pcdarts.nn.networks import build_network
    cache = cache if cache is not None else ScoreCache(None)
    x, y = batch.images, batch.labels
    size = network_size(C, N, batch.num_classes, x.shape[1], x.shape[-1])
    rows = []
    bar = progress_bar(progress, len(archs), "zero-cost proxies", unit="cell")
    try:
        for arch in archs:
            keys = {p: ScoreCache.key(arch, p, seed, batch.fingerprint, size) for p in proxies}
            row: dict[str, Any] = {"arch": arch}
            missing = []
            for p, k in keys.items():
                v = cache.get(k)
                if v is None:
                    missing.append(p)
                else:
                    row[p] = v
            if missing:
                with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                    torch.manual_seed(seed)  # the same initial weights for a cell, whatever the order
                    net = build_network(NB201Genotype.from_arch_str(arch), num_classes=batch.num_classes,
                                        in_channels=x.shape[1], C=C, layers=N).to(x.device)
                net.train()
                new = zc.score(net, (x, y), missing, seed=seed)
                cache.put({keys[p]: v for p, v in new.items()})
                row.update(new)
            rows.append({"arch": arch, **{p: row[p] for p in proxies}})
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return rows


def add_accuracies(rows: list[dict[str, Any]], dataset: str = "cifar10") -> Optional[str]:
    """Adds ``valid_acc`` (the benchmark's mean validation accuracy, %) to every row; returns
    None, or why the lookup is unavailable (the rows are left without accuracies)."""
    try:
        from pcdarts.nb201 import BenchmarkError, query
    except ImportError as e:  # pragma: no cover - the package is part of pcdarts
        return str(e)
    try:
        for r in rows:
            r["valid_acc"] = query(r["arch"], dataset).valid_acc_mean
    except (BenchmarkError, ImportError, OSError) as e:
        for r in rows:
            r.pop("valid_acc", None)
        return str(e)
    return None


def correlations(rows: Sequence[dict[str, Any]], proxies: Sequence[str], target: str = "valid_acc"
                 ) -> dict[str, dict[str, float]]:
    """Per proxy: Kendall tau-b and Spearman rho of its scores against ``target``, over the
    rows that have a target (non-finite scores rank lowest)."""
    have = [r for r in rows if r.get(target) is not None]
    out = {}
    for p in proxies:
        xs = [float(r[p]) for r in have]
        ys = [float(r[target]) for r in have]
        if len(have) < 2:
            out[p] = {"kendall": float("nan"), "spearman": float("nan"), "n": len(have)}
        else:
            out[p] = {"kendall": kendall(xs, ys), "spearman": spearman(xs, ys), "n": len(have)}
    return out


def format_table(corr: dict[str, dict[str, float]], dataset: str) -> str:
    """The correlation table ``pcdarts zero-cost`` prints."""
    n = next(iter(corr.values()))["n"] if corr else 0
    lines = [f"rank correlation with NAS-Bench-201 {dataset} validation accuracy ({n} cells)",
             f"{'proxy':<12}{'Kendall tau':>12}{'Spearman rho':>14}"]
    lines.append("-" * len(lines[-1]))
    for p, c in corr.items():
        tag = "  (baseline)" if p in ("params", "macs") else ""
        lines.append(f"{p:<12}{c['kendall']:>12.3f}{c['spearman']:>14.3f}{tag}")
    return "\n".join(lines)


def best_cell(rows: Sequence[dict[str, Any]], proxy: str) -> dict[str, Any]:
    """The row with the highest ``proxy`` score (ties: the first), i.e. a training-free search."""
    finite = [r for r in rows if math.isfinite(float(r[proxy]))]
    if not finite:
        raise ValueError(f"no cell has a finite {proxy} score")
    return max(finite, key=lambda r: float(r[proxy]))


def write_csv(rows: Sequence[dict[str, Any]], path: Union[str, Path], proxies: Sequence[str]) -> Path:
    """scores.csv: one row per cell, the arch string, one column per proxy, the lookup accuracy."""
    path = Path(path)
    cols = ["arch", *proxies] + (["valid_acc"] if any("valid_acc" in r for r in rows) else [])
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([r.get(c, "") for c in cols])
    return path


def scatter_plot(rows: Sequence[dict[str, Any]], proxies: Sequence[str], path: Union[str, Path],
                 corr: dict[str, dict[str, float]], dataset: str) -> Path:
    """One panel per proxy: its score against the benchmark accuracy, tau in the title."""
    from pcdarts.analysis.plot import _matplotlib
    Figure, FigureCanvasAgg = _matplotlib()
    cols = min(4, len(proxies))
    nrows = math.ceil(len(proxies) / cols)
    fig = Figure(figsize=(3.2 * cols, 2.9 * nrows))
    FigureCanvasAgg(fig)
    for i, p in enumerate(proxies):
        ax = fig.add_subplot(nrows, cols, i + 1)
        pts = [(float(r[p]), float(r["valid_acc"])) for r in rows
               if r.get("valid_acc") is not None and math.isfinite(float(r[p]))]
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, s=6, alpha=0.6)
            if p != "synflow" and min(xs) > 0 and max(xs) > 20 * min(xs):  # synflow is a log already
                ax.set_xscale("log")
        ax.set_title(f"{p}: tau {corr[p]['kendall']:.2f}", fontsize=9)
        ax.set_xlabel("log score" if p == "synflow" else "score", fontsize=8)
        ax.set_ylabel(f"{dataset} valid acc (%)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


@dataclass
class ZeroCostResult:
    rows: list[dict[str, Any]]
    proxies: list[str]
    correlations: dict[str, dict[str, float]] = field(default_factory=dict)
    lookup_error: Optional[str] = None
    best: Optional[dict[str, Any]] = None
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    cache_hits: int = 0
    settings: dict[str, Any] = field(default_factory=dict)


def run_zero_cost(data: str = "digits", *, sample: Optional[int] = 200, proxies: Optional[Sequence[str]] = None,
                  C: int = 16, N: int = 5, batch_size: int = 64, seed: int = 0, dataset: str = "cifar10",
                  out: Optional[Union[str, Path]] = None, cache_dir: Optional[Union[str, Path]] = None,
                  use_cache: bool = True, search: Optional[str] = None, device: Union[str, torch.device] = "cpu",
                  progress: bool = False, ensemble_of: Optional[Sequence[str]] = None) -> ZeroCostResult:
    """Score ``sample`` NB201 cells (None = all), correlate with the lookup, optionally pick the
    best cell by ``search`` (a proxy name), and with ``out`` write scores.csv,
    correlations.json and scatter.png there (the Python twin of ``pcdarts zero-cost``).
    ``ensemble`` among the proxies adds the rank ensemble of ``ensemble_of`` (default
    :data:`DEFAULT_ENSEMBLE`); its members are scored too, reported or not."""
    t0 = time.time()
    cfg = zero_cost_config(data=data, sample=sample, proxies=tuple(proxies or ()), search=search,
                           ensemble_of=tuple(ensemble_of or ()), C=C, N=N, batch_size=batch_size, seed=seed,
                           dataset=dataset)  # every bad value: one ConfigError naming it
    names, members, scored = cfg.names, cfg.members, cfg.scored
    archs = sample_cells(sample, seed)
    batch = load_batch(data, batch_size, seed, device)
    folder = None
    if use_cache:
        folder = Path(cache_dir) if cache_dir is not None else (Path(out) if out is not None else default_cache_dir())
    cache = ScoreCache(folder)
    rows = score_cells(archs, batch, scored, C=C, N=N, seed=seed, cache=cache, progress=progress)
    if ENSEMBLE in names:
        for r, v in zip(rows, ensemble_scores(rows, members)):
            r[ENSEMBLE] = v
    rows = [{"arch": r["arch"], **{p: r[p] for p in names}} for r in rows]
    result = ZeroCostResult(rows, names, cache_hits=cache.hits,
                            settings={"data": data, "fingerprint": batch.fingerprint, "sample": sample,
                                      "cells": len(rows), "C": C, "N": N, "batch_size": int(batch.images.shape[0]),
                                      "seed": seed, "dataset": dataset, "proxies": names,
                                      **({"ensemble_of": members} if ENSEMBLE in names else {}),
                                      "cache": None if cache.path is None else str(cache.path)})
    result.lookup_error = add_accuracies(rows, dataset)
    if result.lookup_error is None and len(rows) >= 2:
        result.correlations = correlations(rows, names)
    if search is not None:
        best = dict(best_cell(rows, search))
        best["proxy"] = search
        if "valid_acc" in best:
            accs = sorted((r["valid_acc"] for r in rows), reverse=True)
            best["rank_in_sample"] = 1 + accs.index(best["valid_acc"])
            best["best_in_sample"] = accs[0]
        result.best = best
    result.seconds = time.time() - t0
    if out is not None:
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        result.files.append(write_csv(rows, o / "scores.csv", names))
        summary = {"settings": result.settings, "correlations": result.correlations, "best": result.best,
                   "lookup_error": result.lookup_error, "seconds": round(result.seconds, 1)}
        (o / "correlations.json").write_text(json.dumps(summary, indent=2) + "\n")
        result.files.append(o / "correlations.json")
        if result.correlations:
            try:
                result.files.append(scatter_plot(rows, names, o / "scatter.png", result.correlations, dataset))
            except ImportError as e:
                import warnings
                warnings.warn(f"no scatter plot: {e}")
    return result


__all__ = ["PROXY_ORDER", "NUM_CELLS", "ENSEMBLE", "DEFAULT_ENSEMBLE", "ensemble_scores", "known_proxy",
           "proxy_names", "ProxyBatch", "ScoreCache", "ZeroCostResult", "best_cell", "cell_of_code",
           "correlations", "default_cache_dir", "default_proxies", "format_table", "load_batch", "run_zero_cost",
           "sample_cells", "score_cells", "scatter_plot", "write_csv", "add_accuracies"]
