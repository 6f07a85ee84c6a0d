"""IS-DARTS (docs/methods.md, "IS-DARTS"): the IIM statistic, the shrink schedule and counts, pruning,
the node-pairs derivation on survivors, and exact resume across a shrink."""
from __future__ import annotations

import math

import pytest
import torch

import pcdarts
from pcdarts.config import SpaceConfig, build_config, load_preset
from pcdarts.errors import ConfigError
from pcdarts.genotype import DartsGenotype, NB201Genotype
from pcdarts.methods.is_darts import ISDarts, ISDartsConfig, removal_count, shrink_epochs, shrink_mask, subsets
from pcdarts.nn.edges import Mixing
from pcdarts.nn.ops import DARTS_PRIMITIVES, NB201_PRIMITIVES
from pcdarts.scorers.iim import TEXTBOOK_EPS, fisher_elements, iim_statistics, per_sample_fisher
from pcdarts.search.searcher import Searcher, new_run_dir
from pcdarts.spaces import get_space


def _isd(tiny, space="nb201", **method):
    layers = 1 if space == "nb201" else 3
    return tiny(method={"name": "is-darts", **method}, space={"name": space, "layers": layers},
                data={"train_portion": 1.0})


def _searcher(cfg_dict):
    cfg = build_config(cfg_dict)
    return Searcher(cfg, new_run_dir(cfg))


# ---------------------------------------------------------------- the IIM statistic

def _hand_fisher(x, formula):
    """Element by element, in float64 Python arithmetic."""
    B, C, H, W = x.shape
    out = torch.empty(B, C, H, W, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for w in range(W):
                v = [float(x[b, c, h, w]) for c in range(C)]
                mu = sum(v) / C
                var = sum((t - mu) ** 2 for t in v) / (C - 1)
                sd = math.sqrt(var)
                for c in range(C):
                    d2 = (v[c] - mu) ** 2
                    if sd == 0:
                        out[b, c, h, w] = math.inf
                    elif formula == "official":
                        out[b, c, h, w] = 3 * d2 / sd ** 6
                    else:
                        s = max(sd, TEXTBOOK_EPS)
                        out[b, c, h, w] = d2 / s ** 6 - 1 / (2 * s ** 4)
    return out


@pytest.mark.parametrize("formula", ["official", "textbook"])
def test_iim_equals_the_formula_on_hand_made_maps(formula):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 2, generator=g) * torch.tensor([0.5, 1.0, 2.0, 1.5, 0.8]).view(1, 5, 1, 1)
    got = fisher_elements(x, formula).double()
    want = _hand_fisher(x, formula)
    assert torch.allclose(got, want, rtol=1e-4)
    assert torch.allclose(per_sample_fisher(x, formula).double(), want.mean(dim=(1, 2, 3)), rtol=1e-4)
    # a tiny worked example: channels (0, 0, 3) at one pixel -> mu 1, unbiased var 3
    y = torch.tensor([0.0, 0.0, 3.0]).view(1, 3, 1, 1)
    f = fisher_elements(y, formula).flatten().tolist()
    if formula == "official":
        assert f == pytest.approx([3 * 1 / 27, 3 * 1 / 27, 3 * 4 / 27])
    else:
        assert f == pytest.approx([1 / 27 - 1 / 18, 1 / 27 - 1 / 18, 4 / 27 - 1 / 18])


@pytest.mark.parametrize("formula", ["official", "textbook"])
def test_a_constant_map_or_pixel_gives_inf(formula):
    assert per_sample_fisher(torch.full((2, 4, 3, 3), 0.7), formula).tolist() == [math.inf, math.inf]
    assert per_sample_fisher(torch.zeros(1, 4, 2, 2), formula).tolist() == [math.inf]  # the none op
    x = torch.randn(2, 4, 3, 3)
    x[1, :, 2, 0] = 1.25  # one pixel of sample 1 has equal channels: NaN -> inf before averaging
    v = per_sample_fisher(x, formula)
    assert math.isfinite(float(v[0])) and float(v[1]) == math.inf


def test_iim_pass_hooks_every_op_averages_samples_and_cells_and_restores_the_network():
    torch.manual_seed(0)
    space = get_space("nb201")
    scfg = SpaceConfig(name="nb201", C=4, layers=2, impl="fast")
    net = space.build_supernet(scfg, k=1, num_classes=3, in_channels=1)
    net.train()
    mixing = Mixing(ops={"cell": torch.full((6, 5), 0.2)})
    x = torch.randn(5, 1, 8, 8)

    # the hand computation: capture the maps of every op of edge 2 in every cell
    captured = {}
    hs = [m.register_forward_hook(lambda mod, i, out, key=(c, o): captured.setdefault(key, []).append(out))
          for ct, c, e, o, m in net.candidate_ops() if e == 2]
    with net.reference():
        net.eval()
        with torch.no_grad():
            net(x[:2], mixing)
            net(x[2:4], mixing)
    for h in hs:
        h.remove()
    net.train()
    cells = sorted({c for c, _ in captured})
    assert len(cells) == 6  # 3 stages x N=2
    want = {o: sum(float(per_sample_fisher(torch.cat(captured[(c, o)])).double().mean()) for c in cells) / len(cells)
            for o in range(1, 5)}

    # batches of 2 and 3 images, 4 used: the running mean covers exactly the first 4 images
    got = iim_statistics(net, mixing, [(x[:2], None), (x[2:], None)], num_samples=4)["cell"]
    for o in range(1, 5):
        assert float(got[2, o]) == pytest.approx(want[o], rel=1e-5)
    assert torch.isinf(got[:, 0]).all()  # none: never built, its zero map is +inf
    assert net.training and not net.use_reference
    assert all(not m._forward_hooks for *_, m in net.candidate_ops())
    # the reference supernet (no reference() switch) measures the same values
    ref = space.build_supernet(SpaceConfig(name="nb201", C=4, layers=2, impl="reference"), k=1, num_classes=3,
                               in_channels=1)
    ref.load_state_dict(net.state_dict())
    got_ref = iim_statistics(ref, mixing, [(x[:4], None)])["cell"]
    assert torch.allclose(got, got_ref, rtol=1e-5)


# ---------------------------------------------------------------- the shrink schedule and counts

def test_shrink_epochs_follow_the_paper_schedule_and_the_run_length():
    assert shrink_epochs(30, 4, 2) == [22, 24, 26, 28]
    assert shrink_epochs(50, 7, 3) == [29, 32, 35, 38, 41, 44, 47]
    assert shrink_epochs(5, 4, 1) == [1, 2, 3, 4]  # a shortened run still shrinks to one cell


def _live_per_group(mask, groups):
    return [int(sum(mask[e].sum() for e in g)) for g in groups]


@pytest.mark.parametrize("space_name", ["nb201", "darts"])
def test_shrink_counts_follow_the_schedule(space_name):
    space = get_space(space_name)
    scfg = SpaceConfig(name=space_name)
    m = ISDarts(ISDartsConfig(), space, scfg)
    E, O = space.arch_shape(scfg)
    groups = subsets(m.kind, m.node_edges, E)
    mask = torch.ones(E, O, dtype=torch.bool)
    g = torch.Generator().manual_seed(1)
    trace = [_live_per_group(mask, groups)]
    for step in range(m.steps):
        fisher = torch.rand(E, O, generator=g, dtype=torch.float64)
        fisher[:, space.primitives.index("none")] = math.inf
        before = mask
        mask = shrink_mask(fisher, mask, groups, m.keep, step, m.steps)
        assert not (mask & ~before).any()  # nothing comes back
        if step == 0:
            assert not mask[:, space.primitives.index("none")].any()  # none goes at the first shrink
        trace.append(_live_per_group(mask, groups))
    if space_name == "nb201":
        assert (m.steps, m.interval, m.keep) == (4, 2, 1)
        assert trace == [[n] * 6 for n in (5, 4, 3, 2, 1)]  # one op per edge per step
    else:
        assert (m.steps, m.interval, m.keep) == (7, 3, 2)
        # ceil((live - 2) / steps left) per node: 16, 24, 32, 40 (op, input) pairs -> 2
        want = []
        live = [16, 24, 32, 40]
        want.append(list(live))
        for s in range(7):
            live = [n - math.ceil((n - 2) / (7 - s)) for n in live]
            want.append(list(live))
        assert trace == want
        assert trace[1] == [14, 20, 27, 34] and trace[-1] == [2, 2, 2, 2]


def test_removal_count_and_ties_go_to_the_lowest_index():
    assert removal_count(40, 2, 0, 7) == 6
    assert removal_count(2, 2, 3, 7) == 0 and removal_count(5, 1, 0, 1) == 4
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0, 1] = False  # pruned: never chosen, whatever its value
    fisher = torch.tensor([[9.0, 99.0, 5.0, 9.0], [9.0, 1.0, 9.0, 2.0], [3.0, 3.0, 3.0, 3.0]])
    # one group of edges 0, 1 (a node): remove ceil(5/2) = 3 of 7 live: of the four 9.0, the
    # three of lowest (edge, op) index
    new = shrink_mask(fisher, mask, [[0, 1], [2]], keep=2, step=0, steps=2)
    assert new[0].tolist() == [False, False, True, False]
    assert new[1].tolist() == [False, True, True, True]
    assert new[2].tolist() == [False, True, True, True]  # all tied: lowest index goes first


def test_exact_ties_break_in_the_official_op_order():
    """The official code lists a node's (op, input) pairs input by input, each in its own op
    order (none, skip, sep 3/5, dil 3/5, avg pool, max pool), and removes the first of a stable
    sort by -F: ties go to the lowest input, then that order (not DARTS_PRIMITIVES')."""
    space = get_space("darts")
    m = ISDarts(ISDartsConfig(), space, SpaceConfig(name="darts"))
    names = ["none", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
             "avg_pool_3x3", "max_pool_3x3"]
    assert sorted(range(8), key=lambda o: m.op_ranks[o]) == [DARTS_PRIMITIVES.index(n) for n in names]
    mask = torch.ones(14, 8, dtype=torch.bool)
    flat = torch.full((14, 8), math.inf, dtype=torch.float64)  # every pair of node 2 tied: keep the last two
    new = shrink_mask(flat, mask, [[0, 1]], keep=2, step=0, steps=1, op_ranks=m.op_ranks)
    kept = [(e, DARTS_PRIMITIVES[o]) for e, o in new[:2].nonzero().tolist()]
    assert sorted(kept) == [(1, "avg_pool_3x3"), (1, "max_pool_3x3")]
    fisher = torch.ones(14, 8, dtype=torch.float64)
    fisher[0, DARTS_PRIMITIVES.index("max_pool_3x3")] = fisher[0, DARTS_PRIMITIVES.index("skip_connect")] = 5.0
    new = shrink_mask(fisher, mask, [[0, 1]], keep=2, step=0, steps=14, op_ranks=m.op_ranks)  # removes one
    assert not new[0, DARTS_PRIMITIVES.index("skip_connect")] and new[0, DARTS_PRIMITIVES.index("max_pool_3x3")]
    nb = ISDarts(ISDartsConfig(), get_space("nb201"), SpaceConfig(name="nb201"))
    assert nb.op_ranks == sorted(nb.op_ranks)  # NB201: the official order is ours


# ---------------------------------------------------------------- config

def test_config_defaults_presets_and_checks(tiny):
    c = ISDartsConfig()
    assert (c.shrink_steps, c.shrink_interval, c.iim_num_samples, c.iim_formula) == (None, None, None, "official")
    nb = build_config(load_preset("is-darts_nb201"))
    assert (nb.method_name, nb.search.epochs, nb.space.C, nb.space.layers, nb.space.track_running_stats, nb.k) == \
        ("is-darts", 30, 16, 5, False, 1)
    assert (nb.method.shrink_steps, nb.method.shrink_interval, nb.method.iim_num_samples) == (4, 2, 200)
    assert (nb.search.nesterov, nb.search.weight_decay, nb.search.lr_min, nb.search.grad_clip) == (True, 3e-4, 1e-3, 5)
    dc = build_config(load_preset("is-darts_cifar10"))
    assert (dc.space.name, dc.space.layers, dc.search.epochs, dc.method.shrink_steps, dc.method.shrink_interval,
            dc.method.iim_num_samples) == ("darts", 8, 50, 7, 3, 600)
    assert (dc.space.pool_bn, dc.space.track_running_stats) == (False, False)  # the official search cell
    with pytest.raises(ConfigError, match=r"method\.shrink_steps=4 x method\.shrink_interval=2 = 8 epochs"):
        build_config(_isd(tiny))  # 2 epochs
    with pytest.raises(ConfigError, match=r"method\.iim_formula must be one of official, textbook"):
        build_config(_isd(tiny, iim_formula="fisher"))
    with pytest.raises(ConfigError, match=r"method\.shrink_interval must be >= 1"):
        build_config(_isd(tiny, shrink_interval=0))


# ---------------------------------------------------------------- the search

def test_no_split_no_arch_step_constant_mixing(tiny):
    s = _searcher(_isd(tiny, shrink_steps=1, shrink_interval=1))
    assert s.data_info["n_weight"] == 48 and s.method.arch_parameters() == []
    assert not s.method.is_arch_active(0)
    w = s.method.mixing().ops["cell"]
    assert torch.equal(w, torch.full((6, 5), 1 / 5))
    pos = (s.arch_loader.epoch, s.arch_loader.position)
    s.search_step(s.method.is_arch_active(0), s.context())
    assert (s.arch_loader.epoch, s.arch_loader.position) == pos
    # after a shrink the divisor stays |O| = 5 (not the number of survivors)
    s.method.shrink(0, s.context())
    w = s.method.mixing().ops["cell"]
    assert torch.equal(w, s.method.masks()["cell"].float() / 5)
    assert (s.method.masks()["cell"].sum(1) == 1).all()


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_a_shrink_frees_ops_and_the_optimiser_forgets_them(tiny, space):
    cfg = _isd(tiny, space, shrink_steps=2, shrink_interval=1)
    cfg["search"]["epochs"] = 3
    if space == "darts":  # the official search cell (the is-darts_cifar10 preset's space options)
        cfg["space"].update(pool_bn=False, track_running_stats=False)
    s = _searcher(cfg)
    ctx = s.context()
    s.search_step(False, ctx)
    modules = {(c, e, o): m for ct, c, e, o, m in s.supernet.candidate_ops()}
    calls = []
    for key, m in modules.items():
        m.register_forward_hook(lambda mod, i, out, key=key: calls.append(key))
    n_params = len(s.weight_params)
    s.method.on_epoch_end(0, ctx)  # epochs 3, S 2, D 1: shrink step 0 after epoch 1 (1-based)
    masks = s.method.masks()
    assert all(torch.equal(masks[ct], s.supernet.masks[ct]) for ct in masks)
    none = s.space.primitives.index("none")
    assert not any(m[:, none].any() for m in masks.values())
    live = {(c, e, o) for ct, c, e, o, m in s.supernet.candidate_ops()}
    pruned = set(modules) - live
    assert pruned and len(s.weight_params) < n_params
    assert {id(p) for p in s.weight_params} == {id(p) for p in s.supernet.parameters()}
    opt_ids = {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    assert not opt_ids & {id(p) for k in pruned for p in modules[k].parameters()}
    calls.clear()
    s.search_step(False, ctx)  # the fast path
    with s.supernet.reference():
        s.search_step(False, ctx)  # and the reference path
    assert calls and not set(calls) & pruned


def test_node_pairs_derivation_on_hand_written_masks():
    space = get_space("darts")
    scfg = SpaceConfig(name="darts")
    m = ISDarts(ISDartsConfig(), space, scfg)
    assert m.derive_rule() == "node-pairs"
    P = DARTS_PRIMITIVES.index
    # per node, (input, op) survivors; node 3 keeps two ops from the same input
    keep = {0: [(0, "sep_conv_3x3"), (1, "skip_connect")], 1: [(2, "dil_conv_5x5"), (0, "max_pool_3x3")],
            2: [(1, "sep_conv_5x5"), (1, "avg_pool_3x3")], 3: [(4, "sep_conv_3x3"), (0, "dil_conv_3x3")]}
    masks = {ct: torch.zeros(14, 8, dtype=torch.bool) for ct in ("normal", "reduce")}
    for node, pairs in keep.items():
        for inp, op in pairs:
            masks["normal"][m.node_edges[node][inp], P(op)] = True
    masks["reduce"][:, P("max_pool_3x3")] = True  # more than two live: the lowest inputs, then ops
    for ct, mk in masks.items():
        m.masks()[ct].copy_(mk)
    g = space.derive(m.scores(), m.masks(), m.derive_rule())
    assert isinstance(g, DartsGenotype)
    want_normal = tuple((op, inp) for node in range(4) for inp, op in sorted(keep[node]))
    assert g.normal == want_normal
    assert g.reduce == tuple(("max_pool_3x3", i) for _ in range(4) for i in (0, 1))
    # NB201: the one survivor per edge
    nb = ISDarts(ISDartsConfig(), get_space("nb201"), SpaceConfig(name="nb201"))
    assert nb.derive_rule() is None
    ops = ("nor_conv_3x3", "skip_connect", "none", "avg_pool_3x3", "nor_conv_1x1", "nor_conv_3x3")
    nb.masks()["cell"].copy_(torch.zeros(6, 5, dtype=torch.bool))
    for e, op in enumerate(ops):
        nb.masks()["cell"][e, NB201_PRIMITIVES.index(op)] = True
    assert get_space("nb201").derive(nb.scores(), nb.masks(), nb.derive_rule()) == NB201Genotype(ops)


def test_a_shortened_run_shrinks_to_one_cell_and_logs_iim(tiny):
    cfg = _isd(tiny, shrink_steps=2, shrink_interval=1, iim_num_samples=10)
    cfg["search"]["epochs"] = 4  # shrinks after epochs 2 and 3
    res = pcdarts.search(cfg)
    ck = torch.load(res.run_dir / "checkpoint.pt", weights_only=True)
    assert (ck["masks"]["cell"].sum(1) == 1).all()
    assert isinstance(res.genotype, NB201Genotype) and "none" not in res.genotype.ops
    assert res.genotype == NB201Genotype(tuple(NB201_PRIMITIVES[int(i)] for i in ck["masks"]["cell"].float().argmax(1)))
    assert [h["arch_active"] for h in res.history] == [False] * 4
    assert "iim" not in res.history[0] and "iim" in res.history[1]
    from pcdarts.cli import derive_from_run
    assert derive_from_run(res.run_dir) == res.genotype  # from the checkpoint, no data needed
    assert all(v is None for row in res.history[1]["iim"]["cell"] for v in row[:1])  # none: +inf


@pytest.mark.parametrize("space,stop", [("nb201", 4), ("nb201", 9), ("nb201", 6), ("darts", 9)])
def test_resume_mid_search_equals_uninterrupted_run(tiny, space, stop):
    """6 steps per epoch; shrinks after epochs 1 and 2 of 3: stop 4 is before any shrink,
    6 right after the first (an epoch boundary), 9 mid-epoch between the two."""
    base = _isd(tiny, space, shrink_steps=2, shrink_interval=1, iim_num_samples=20)
    base["search"]["epochs"] = 3
    base["run"]["out"] += f"-{space}-full"
    full = pcdarts.search(base)
    part = dict(base, run=dict(base["run"], out=base["run"]["out"][:-5] + f"-part{stop}"))
    first = pcdarts.search(part, stop_after_steps=stop)
    assert first.interrupted
    resumed = pcdarts.search(resume=first.run_dir)
    assert resumed.genotype == full.genotype
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    assert [r.get("iim") for r in resumed.history] == [r.get("iim") for r in full.history]
    ck_full = torch.load(full.run_dir / "checkpoint.pt", weights_only=True)
    ck_res = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(ck_full["masks"][ct], ck_res["masks"][ct]) for ct in ck_full["masks"])
    for k, v in ck_full["supernet"].items():
        assert torch.equal(v, ck_res["supernet"][k]), k
    for k, v in ck_full["method"]["arch"].items():
        assert torch.equal(v, ck_res["method"]["arch"][k]), k


def test_the_registered_iim_scorer_ranks_ops_of_any_method(tiny):
    """``--method.selector iim``: a DARTS search derived by IIM (1/F) instead of alpha."""
    from pcdarts.registry import SELECTORS
    s = _searcher(tiny(method={"name": "darts"}, space={"name": "nb201", "layers": 1}))
    s.search_step(True, s.context())  # BN running statistics move off 0 (digits have all-zero borders)
    scores = SELECTORS.get("iim")(s.method, s.context())["cell"]
    assert scores.shape == (6, 5) and (scores[:, 0] == 0).all()  # none: F = +inf, IIM 0
    assert torch.isfinite(scores).all() and (scores[:, 1:] > 0).all()
    with pytest.raises(ValueError, match="runs only during a search"):
        SELECTORS.get("iim")(s.method, None)
