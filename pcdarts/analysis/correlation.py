"""Rank correlations between two score lists: Kendall's tau-b, Spearman's rho, top-k overlap.

Pure Python + numpy (no scipy dependency); ties are handled as scipy does (tau-b;
Spearman on average ranks). Used by ``pcdarts zero-cost`` and ``pcdarts ws-analysis``.
Non-finite scores (a proxy's -inf for a degenerate cell) rank below every finite one.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def _clean(x: Sequence[float]) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    finite = a[np.isfinite(a)]
    low = (finite.min() - 1.0) if finite.size else 0.0
    high = (finite.max() + 1.0) if finite.size else 0.0
    a = np.where(np.isnan(a) | np.isneginf(a), low, a)
    return np.where(np.isposinf(a), high, a)


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    a = _clean(x)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), dtype=np.float64)
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and a[order[j + 1]] == a[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: the Pearson correlation of the average ranks (NaN if either is constant)."""
    _check(x, y)
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b, O(n^2) (fine for the few thousand points the tools rank)."""
    _check(x, y)
    a, b = _clean(x), _clean(y)
    dx = np.sign(a[:, None] - a[None, :])
    dy = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), k=1)
    sx, sy = dx[iu], dy[iu]
    concordant_minus_discordant = float((sx * sy).sum())
    n0x, n0y = float(np.count_nonzero(sx)), float(np.count_nonzero(sy))
    den = math.sqrt(n0x * n0y)
    return concordant_minus_discordant / den if den > 0 else float("nan")


def top_k_overlap(x: Sequence[float], y: Sequence[float], k: int) -> float:
    """The fraction of the k highest of ``x`` that are among the k highest of ``y``."""
    _check(x, y)
    k = max(1, min(int(k), len(x)))
    top = lambda v: set(np.argsort(-_clean(v), kind="mergesort")[:k].tolist())  # noqa: E731
    return len(top(x) & top(y)) / k


def _check(x: Sequence[float], y: Sequence[float]) -> None:
    if len(x) != len(y):
        raise ValueError(f"rank correlation of lists of different lengths ({len(x)} and {len(y)})")
    if len(x) < 2:
        raise ValueError("rank correlation needs at least two points")


__all__ = ["average_ranks", "spearman", "kendall", "top_k_overlap"]
