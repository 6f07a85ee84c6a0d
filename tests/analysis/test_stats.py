"""The architecture-weight figures of :mod:`pcdarts.analysis.stats` over the live ops of each edge,
and the end-of-search warning (collapse, or weights that never moved)."""
from __future__ import annotations

import math
import warnings

import pytest

import pcdarts
from pcdarts.analysis.stats import arch_weight_summary, collapse_stats, collapse_warning, network_label
from pcdarts.genotype import NB201Genotype


def test_entropy_counts_the_live_ops_of_each_edge_only():
    # edge 0: 4 of 8 ops live, uniform over them; edge 1: 2 of 8 live, 0.75 / 0.25 (a removed op's
    # stale weight is ignored); edge 2: one live op, nothing to choose: left out
    weights = {"normal": [[0.25, 0.25, 0.25, 0.25, 0, 0, 0, 0],
                          [0.75, 0.25, 0.4, 0, 0, 0, 0, 0],
                          [1.0, 0, 0, 0, 0, 0, 0, 0]]}
    masks = {"normal": [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]]}
    h1 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)  # 0.8113
    s = arch_weight_summary(weights, masks)
    assert s["entropy"] == pytest.approx((1.0 + h1) / 2)
    assert s["max"] == pytest.approx((0.25 + 0.75) / 2)
    assert s["uniform"] == pytest.approx((1 / 4 + 1 / 2) / 2)
    # the first edge alone: weights that never moved read 1.00 of uniform, and uniform is 1/4, not 1/8
    alone = arch_weight_summary({"normal": weights["normal"][:1]}, {"normal": masks["normal"][:1]})
    assert alone == pytest.approx({"entropy": 1.0, "max": 0.25, "uniform": 0.25})
    assert arch_weight_summary({"normal": weights["normal"][:1]})["entropy"] == pytest.approx(math.log(4) / math.log(8))
    st = collapse_stats(NB201Genotype(("nor_conv_3x3",) * 6), weights, masks)
    assert st["arch_entropy"]["normal"] == pytest.approx((1.0 + h1) / 2, abs=1e-4)


def test_weights_that_never_moved_are_not_called_a_collapse():
    pools = NB201Genotype(("avg_pool_3x3",) * 5 + ("nor_conv_3x3",))  # parameter-free: would read as collapse
    still = collapse_warning(pools, {"normal": 1.0, "reduce": 0.998})
    assert still.startswith("the architecture did not move") and "collapse" not in still
    assert "dominated by parameter-free ops" in collapse_warning(pools, {"normal": 1.0, "reduce": 0.7})
    assert "dominated by parameter-free ops" in collapse_warning(pools)  # no op weights (e.g. IS-DARTS)
    assert collapse_warning(NB201Genotype(("nor_conv_3x3",) * 6), {"cell": 0.5}) is None


def test_a_pruned_search_reports_entropy_over_the_live_ops(tiny):
    """--prune removes ops before the search: with the architecture never trained (arch lr 0),
    the weights are uniform over the live ops, so the entropy reads 1.00 (0.68 before, over 5
    ops) and the end of the search says that the architecture did not move."""
    cfg = tiny(method={"name": "darts", "warmup_epochs": 0, "arch_lr": 0.0}, space={"name": "nb201", "layers": 1},
               search={"epochs": 1, "prune": "params:0.5"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = pcdarts.search(cfg)
    last = res.history[-1]
    live = [sum(row) for row in last["op_masks"]["cell"]]
    assert min(live) >= 2 and max(live) < 5  # ops were removed on every edge
    assert last["arch_entropy"]["cell"] == pytest.approx(1.0, abs=1e-4)
    moved = arch_weight_summary(last["arch_weights"], last["op_masks"])
    assert moved["uniform"] == pytest.approx(sum(1 / n for n in live) / len(live))
    assert moved["max"] == pytest.approx(moved["uniform"], rel=1e-3)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("the architecture did not move") for m in messages), messages
    assert not any("dominated by parameter-free ops" in m for m in messages)


def test_fixed_op_weights_report_no_entropy(tiny):
    """IS-DARTS's op weights are 1/|O| over the live ops by construction: no entropy is
    logged for them (it would always read 1.00), so no did-not-move warning either."""
    res = pcdarts.search(tiny(method={"name": "is-darts", "shrink_steps": 1, "shrink_interval": 1},
                              space={"name": "nb201", "layers": 1}, search={"epochs": 2}))
    assert "arch_weights" in res.history[-1] and "op_masks" in res.history[-1]
    assert all("arch_entropy" not in r for r in res.history)


def test_network_label_words_the_head():
    g = NB201Genotype(("nor_conv_3x3",) * 6)
    shape = dict(in_channels=3, input_size=16)
    assert "10 classes, 3x16x16 input" in network_label(g, num_classes=10, **shape)
    assert "1 class, 3x16x16" in network_label(g, num_classes=1, **shape)
    unlabelled = network_label(g, num_classes=1, labelled=False, **shape)
    assert "1-output head (unlabelled data: no classes), 3x16x16 input" in unlabelled and "class," not in unlabelled


# moved from the issue-8 grab-bag (what a new user hits: nothing on disk lost, nothing misread)

def test_arch_weight_summary():
    from pcdarts.analysis.stats import arch_weight_summary
    assert arch_weight_summary({"normal": [[0.25] * 4] * 3})["entropy"] == pytest.approx(1.0)
    s = arch_weight_summary({"normal": [[1.0, 0, 0, 0]], "reduce": [[0.25] * 4]})
    assert s["entropy"] == pytest.approx(0.5) and s["max"] == pytest.approx(0.625) and s["uniform"] == 0.25
    assert arch_weight_summary(None) == {}
