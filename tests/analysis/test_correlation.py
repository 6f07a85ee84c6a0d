"""The rank correlations of pcdarts.analysis.correlation against scipy on fixed vectors."""
from __future__ import annotations

import math

import pytest

from pcdarts.analysis.correlation import average_ranks, kendall, spearman, top_k_overlap

VECTORS = [
    ([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]),
    ([1, 2, 2, 3, 5, 4, 0], [2, 1, 3, 3, 6, 5, 0]),       # ties in both
    ([0.3, 0.1, 0.9, 0.5, 0.5, 0.2], [10, 30, 20, 40, 40, 50]),
    ([5, 4, 3, 2, 1], [1, 2, 3, 4, 5]),                   # perfectly reversed
]


@pytest.mark.parametrize("x,y", VECTORS)
def test_kendall_and_spearman_match_scipy(x, y):
    stats = pytest.importorskip("scipy.stats")
    assert kendall(x, y) == pytest.approx(stats.kendalltau(x, y)[0], abs=1e-12)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_ties_non_finite_and_topk():
    assert list(average_ranks([3, 1, 3, 2])) == [3.5, 1.0, 3.5, 2.0]
    # -inf ranks below every finite value, +inf above
    assert kendall([float("-inf"), 1, 2], [0, 1, 2]) == pytest.approx(1.0)
    assert spearman([1, 2, float("inf")], [0, 1, 2]) == pytest.approx(1.0)
    assert math.isnan(kendall([1, 1, 1], [1, 2, 3]))
    assert top_k_overlap([5, 4, 3, 2, 1], [5, 1, 4, 2, 3], 2) == 0.5
    with pytest.raises(ValueError, match="different lengths"):
        kendall([1, 2], [1, 2, 3])
