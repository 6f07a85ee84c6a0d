"""Metrics, report files and plots of ``pcdarts ws-analysis`` (docs/methods.md, "Weight-sharing analysis").

Pure functions of the logged accuracies ``A[run][epoch][child]``, the steps since each
child was last trained, and the optional ground truth; every correlation comes from
:mod:`pcdarts.analysis.correlation` (Kendall tau-b, Spearman rho, top-k overlap; checked
against scipy), Pearson r from numpy. Nothing here trains or evaluates a network.

Metric definitions (docs/methods.md, "Weight-sharing analysis"):

* ranking vs ground truth per epoch: Kendall tau, Spearman rho, Pearson r, top-k overlap
  for k = 1 %, 5 %, 10 % of the children (at least one), and the ground-truth percentile
  of the supernet's top-1 child (100 = the best child, 0 = the worst);
* stability within a run: per child the std of its rank (1 = best) over epochs
  >= ``stable_from * E``; the fraction of consecutive epochs whose top-1 child differs;
  Kendall tau between consecutive epochs;
* stability across seeds: the selected (final top-1) child per seed, its ground truth
  (mean/sample std/min/max), how often each child is selected, pairwise tau between seeds'
  final rankings; a spread (std) over a single seed is undefined: null in report.json,
  ``n/a`` in sweep.csv;
* recency (interference): Spearman / Kendall correlation between a child's shared-weight
  accuracy and its steps since last trained at evaluation time (negative = the most
  recently trained children are favoured), and the same for the rank residual (rank by
  shared weights minus rank by ground truth, so the child's own quality is factored out).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from pcdarts.analysis.correlation import average_ranks, kendall, spearman, top_k_overlap
from pcdarts.utils import mean_std

TOP_K_PERCENT = (1, 5, 10)


def _finite(v: float) -> Optional[float]:
    return None if v is None or not math.isfinite(v) else float(v)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r (NaN if either is constant)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def ranks_best_first(acc: Sequence[float]) -> np.ndarray:
    """Rank 1 = the highest accuracy (ties share their average rank)."""
    return len(acc) + 1 - average_ranks(acc)


def ranking_metrics(acc: Sequence[float], gt: Sequence[float]) -> dict[str, Any]:
    """Shared-weight accuracies against the ground truth (one epoch of one run)."""
    n = len(acc)
    out: dict[str, Any] = {"kendall": kendall(acc, gt), "spearman": spearman(acc, gt), "pearson": pearson(acc, gt)}
    for pct in TOP_K_PERCENT:
        out[f"top_{pct}pct"] = top_k_overlap(acc, gt, max(1, round(pct / 100 * n)))
    top = int(np.argmax(acc))
    g = np.asarray(gt, dtype=np.float64)
    out["top1_gt"] = float(g[top])
    out["top1_gt_percentile"] = 100.0 * float((g < g[top]).sum()) / max(n - 1, 1)
    return out


def epoch_records(accuracy: list[list[float]], steps_since: list[list[int]], train_loss: list[float],
                  names: Sequence[str], gt: Optional[Sequence[float]]) -> list[dict[str, Any]]:
    """One record per epoch: ranking vs ground truth, consecutive-epoch stability, recency."""
    recs = []
    for e, acc in enumerate(accuracy):
        top = int(np.argmax(acc))
        r: dict[str, Any] = {"epoch": e + 1, "train_loss": train_loss[e], "mean_acc": float(np.mean(acc)),
                             "best_acc": float(acc[top]), "top1_child": top, "top1_arch": names[top]}
        if gt is not None:
            r.update(ranking_metrics(acc, gt))
        if e > 0:
            prev = accuracy[e - 1]
            r["kendall_prev_epoch"] = kendall(acc, prev)
            r["top1_changed"] = top != int(np.argmax(prev))
        since = steps_since[e]
        r["recency_spearman"] = spearman(acc, since) if len(set(since)) > 1 else float("nan")
        r["recency_kendall"] = kendall(acc, since) if len(set(since)) > 1 else float("nan")
        if gt is not None and len(set(since)) > 1:
            resid = ranks_best_first(acc) - ranks_best_first(gt)
            r["recency_residual_spearman"] = spearman(resid, since)
        recs.append(r)
    return recs


def within_run_stability(accuracy: list[list[float]], stable_from: float) -> dict[str, Any]:
    """Rank std per child over the late epochs, top-1 changes and consecutive-epoch tau."""
    E = len(accuracy)
    e0 = min(int(math.floor(stable_from * E)), E - 1)
    ranks = np.stack([ranks_best_first(a) for a in accuracy[e0:]])  # [E', M]
    std = ranks.std(axis=0)
    tops = [int(np.argmax(a)) for a in accuracy]
    taus = [kendall(accuracy[e], accuracy[e - 1]) for e in range(1, E)]
    return {"from_epoch": e0 + 1, "rank_std_mean": float(std.mean()), "rank_std_max": float(std.max()),
            "rank_std": std.tolist(),
            "top1_change_fraction": float(np.mean([a != b for a, b in zip(tops[1:], tops[:-1])])) if E > 1 else None,
            "consecutive_kendall_mean": float(np.nanmean(taus)) if taus else None}


def across_seeds(final: list[list[float]], names: Sequence[str], gt: Optional[Sequence[float]]) -> dict[str, Any]:
    """The selected (final top-1) child of each seed, its ground truth and the seeds' agreement."""
    picks = [int(np.argmax(a)) for a in final]
    counts: dict[str, int] = {}
    for p in picks:
        counts[names[p]] = counts.get(names[p], 0) + 1
    pair = [kendall(final[i], final[j]) for i in range(len(final)) for j in range(i + 1, len(final))]
    out: dict[str, Any] = {"selected": [names[p] for p in picks], "selected_index": picks,
                           "selection_counts": counts, "pairwise_kendall": pair,
                           "pairwise_kendall_mean": float(np.mean(pair)) if pair else None}
    if gt is not None:
        g = np.asarray([gt[p] for p in picks], dtype=np.float64)
        mean, std = mean_std(g)  # sample std, None for one seed
        out["selected_gt"] = {"mean": mean, "std": std, "min": float(g.min()),
                              "max": float(g.max()), "best_possible": float(np.max(gt))}
    return out


def summarise(runs: list[dict[str, Any]], names: Sequence[str], gt: Optional[Sequence[float]]) -> list[dict[str, Any]]:
    """One summary per sharing setting (its runs are the seeds): the sweep table rows."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["label"], []).append(r)
    rows = []
    for label, rs in by.items():
        last = [r["epochs"][-1] for r in rs]
        row: dict[str, Any] = {"setting": label, "groups": rs[0]["groups"], "prefix": rs[0]["prefix"],
                               "seeds": [r["seed"] for r in rs], "weights": rs[0]["weights"],
                               "seconds_mean": float(np.mean([r["seconds"] for r in rs]))}
        for key in ("kendall", "spearman", "pearson", "top_1pct", "top_5pct", "top_10pct", "top1_gt",
                    "top1_gt_percentile", "recency_spearman", "recency_residual_spearman"):
            vals = [x[key] for x in last if key in x and x[key] is not None and x[key] == x[key]]
            if vals:
                row[f"final_{key}_mean"], row[f"final_{key}_std"] = mean_std(vals)  # sample std; one seed: None
        row["rank_std_mean"] = float(np.mean([r["stability"]["rank_std_mean"] for r in rs]))
        cons = [r["stability"]["consecutive_kendall_mean"] for r in rs
                if r["stability"]["consecutive_kendall_mean"] is not None]
        row["consecutive_kendall_mean"] = float(np.mean(cons)) if cons else None
        row["across_seeds"] = across_seeds([r["accuracy"][-1] for r in rs], names, gt)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- files


def _clean(obj: Any) -> Any:
    """NaN/inf -> None so the JSON is standard."""
    if isinstance(obj, float):
        return _finite(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_csvs(out: Path, report: dict[str, Any]) -> list[Path]:
    """children.csv, accuracy.csv (long: run x epoch x child), epochs.csv, sweep.csv, ground_truth.csv."""
    names, gt = report["children"], report["ground_truth"]["accuracy"]
    paths = [out / "children.csv", out / "accuracy.csv", out / "epochs.csv", out / "sweep.csv"]
    with open(paths[0], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["child", "arch", "ground_truth"])
        for i, nm in enumerate(names):
            w.writerow([i, nm, "" if gt is None else gt[i]])
    with open(paths[1], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "groups", "prefix", "seed", "epoch", "child", "arch", "shared_acc", "shared_loss",
                    "steps_since_trained", "ground_truth"])
        for r in report["runs"]:
            for e, (acc, loss, since) in enumerate(zip(r["accuracy"], r["loss"], r["steps_since"])):
                for i, nm in enumerate(names):
                    w.writerow([r["label"], r["groups"], "all" if r["prefix"] is None else r["prefix"], r["seed"],
                                e + 1, i, nm, f"{acc[i]:.4f}", f"{loss[i]:.6f}", since[i],
                                "" if gt is None else gt[i]])
    keys = sorted({k for r in report["runs"] for rec in r["epochs"] for k in rec})
    keys = ["epoch"] + [k for k in keys if k != "epoch"]
    with open(paths[2], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "seed"] + keys)
        for r in report["runs"]:
            for rec in r["epochs"]:
                w.writerow([r["label"], r["seed"]] + ["" if rec.get(k) is None else rec.get(k) for k in keys])
    skeys = [k for k in report["settings"][0] if k not in ("across_seeds", "seeds")]
    with open(paths[3], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(skeys + ["selected_gt_mean", "pairwise_kendall_mean"])
        for s in report["settings"]:
            sel = s["across_seeds"].get("selected_gt") or {}
            w.writerow([("n/a" if k.endswith("_std") else "") if s.get(k) is None else s.get(k) for k in skeys]
                       + [sel.get("mean", ""), s["across_seeds"].get("pairwise_kendall_mean") or ""])
    if gt is not None:
        paths.append(out / "ground_truth.csv")
        with open(paths[-1], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["arch", "accuracy"])
            for nm, g in zip(names, gt):
                w.writerow([nm, g])
    return paths


def plot_report(out: Path, report: dict[str, Any]) -> list[Path]:
    """tau_vs_epoch.png, rank_heatmap.png, top1_histogram.png."""
    from pcdarts.analysis.plot import _matplotlib, integer_ticks
    Figure, Canvas = _matplotlib()
    gt = report["ground_truth"]["accuracy"]
    runs, settings = report["runs"], report["settings"]
    labels = [s["setting"] for s in settings]
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#7f7f7f"]
    styles = ["-", "--", ":", "-."]
    paths = []

    fig = Figure(figsize=(7, 4))
    Canvas(fig)
    ax = fig.subplots()
    key = "kendall" if gt is not None else "kendall_prev_epoch"
    for r in runs:
        c = colors[labels.index(r["label"]) % len(colors)]
        seeds = [x["seed"] for x in runs if x["label"] == r["label"]]
        ep = [x["epoch"] for x in r["epochs"] if x.get(key) is not None]
        val = [x[key] for x in r["epochs"] if x.get(key) is not None]
        ax.plot(ep, val, styles[seeds.index(r["seed"]) % len(styles)], color=c, marker="." if len(ep) < 40 else None,
                label=f"{r['label']} seed {r['seed']}")
    ax.axhline(0, color="#999999", lw=0.8)
    ax.set_xlabel("epoch")
    integer_ticks(ax.xaxis)
    ax.set_ylabel("Kendall tau vs ground truth" if gt is not None else "Kendall tau vs previous epoch")
    ax.set_title(f"{report['space']}: shared-weight ranking ({report['config']['eval']['bn']} BN)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    paths.append(out / "tau_vs_epoch.png")
    fig.savefig(str(paths[-1]), bbox_inches="tight", dpi=120)

    names = report["children"]
    order = (np.argsort(-np.asarray(gt), kind="mergesort") if gt is not None
             else np.argsort(ranks_best_first(runs[0]["accuracy"][-1]), kind="mergesort"))
    firsts = [next(r for r in runs if r["label"] == lab) for lab in labels]
    fig = Figure(figsize=(1.5 + 4.2 * len(firsts), max(3.0, 0.12 * len(names) + 1.5)))
    Canvas(fig)
    axes = fig.subplots(1, len(firsts), squeeze=False)[0]
    for i, (ax, r) in enumerate(zip(axes, firsts)):
        R = np.stack([ranks_best_first(a) for a in r["accuracy"]], axis=1)[order]  # [M, E]
        im = ax.imshow(R, aspect="auto", cmap="viridis_r", interpolation="nearest",
                       extent=(0.5, R.shape[1] + 0.5, len(names) - 0.5, -0.5))
        ax.set_xlabel("epoch")
        integer_ticks(ax.xaxis)
        ax.set_title(f"{r['label']} seed {r['seed']}", fontsize=9)
        if i == 0:
            ax.set_ylabel("children, by ground truth (best on top)" if gt is not None else "children, by final rank")
        fig.colorbar(im, ax=ax, label="shared-weight rank (1 = best)" if i == len(firsts) - 1 else None)
    paths.append(out / "rank_heatmap.png")
    fig.savefig(str(paths[-1]), bbox_inches="tight", dpi=120)

    fig = Figure(figsize=(7, 2.6 * len(settings)))
    Canvas(fig)
    axes = fig.subplots(len(settings), 1, squeeze=False, gridspec_kw={"hspace": 0.5})[:, 0]
    for ax, s in zip(axes, settings):
        rs = [r for r in runs if r["label"] == s["setting"]]
        final = np.zeros(len(names))
        late = np.zeros(len(names))
        for r in rs:
            final[int(np.argmax(r["accuracy"][-1]))] += 1
            e0 = r["stability"]["from_epoch"] - 1
            for a in r["accuracy"][e0:]:
                late[int(np.argmax(a))] += 1
        x = np.arange(len(names))
        ax.bar(x - 0.2, final[order], width=0.4, label="final top-1 (one per seed)", color="#1f77b4")
        ax.bar(x + 0.2, late[order], width=0.4, label="top-1 of each late epoch", color="#aec7e8")
        ax.set_title(f"{s['setting']}: top-1 child across {len(rs)} seed(s)", fontsize=9)
        ax.set_ylabel("count")
        integer_ticks(ax.yaxis)
        ax.legend(fontsize=7)
    axes[-1].set_xlabel("children, by ground truth (best left)" if gt is not None else "children, by final rank")
    paths.append(out / "top1_histogram.png")
    fig.savefig(str(paths[-1]), bbox_inches="tight", dpi=120)
    return paths


__all__ = ["pearson", "ranks_best_first", "ranking_metrics", "epoch_records", "within_run_stability",
           "across_seeds", "summarise", "write_csvs", "plot_report", "TOP_K_PERCENT"]
