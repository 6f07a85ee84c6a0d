"""Zero-shot pruning of the space before the search (ALGORITHMS §8.1): the requested fraction per
edge, the scores it ranks by, pruned ops never run, every method on the pruned space, resume."""
from __future__ import annotations

import pytest
import torch
from tests.conftest import tiny_method

import pcdarts
from pcdarts.config import SpaceConfig, build_config
from pcdarts.errors import ConfigError
from pcdarts.methods import Darts, DartsConfig
from pcdarts.registry import METHODS, PROXIES
from pcdarts.search.prune import (SupernetAt, live_mixing, op_scores, parse_prune, prune_masks, removal_count,
                                  selectable_ops, zero_shot_prune)
from pcdarts.search.searcher import Searcher, new_run_dir
from pcdarts.spaces import get_space


def _searcher(cfg_dict):
    cfg = build_config(cfg_dict)
    return Searcher(cfg, new_run_dir(cfg))


def _nb201(k=1, impl="fast"):
    torch.manual_seed(0)
    cfg = SpaceConfig(name="nb201", C=4, layers=1, impl=impl)
    return get_space("nb201"), cfg, get_space("nb201").build_supernet(cfg, k=k, num_classes=3, in_channels=1)


def _batch(n=8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_prune_spec_and_config_errors_are_one_line():
    assert (parse_prune("naswot:0.25").proxy, parse_prune("naswot:0.25").fraction) == ("naswot", 0.25)
    assert parse_prune("synflow").fraction == 0.5
    for bad in ("nope:0.5", "naswot:0", "naswot:1", "naswot:half"):
        with pytest.raises(ConfigError) as e:
            parse_prune(bad)
        assert "search.prune" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="search.prune"):
        build_config({"search": {"prune": "naswot:2"}})
    with pytest.raises(ConfigError, match="search.prune_mode"):
        build_config({"search": {"prune": "naswot", "prune_mode": "drop"}})
    from pcdarts.cli import build_parser, search_config_dict
    args = build_parser().parse_args(["search", "--prune", "naswot:0.5"])
    assert search_config_dict(args, [])["search"]["prune"] == "naswot:0.5"


def test_counts_and_candidates():
    assert [removal_count(n, 0.5) for n in (1, 2, 5, 7, 8)] == [0, 1, 3, 4, 4]
    assert removal_count(4, 0.99) == 3  # one op always survives
    darts = get_space("darts")
    assert selectable_ops(darts, SpaceConfig()) == [p != "none" for p in darts.primitives]  # never derived
    assert all(selectable_ops(get_space("nb201"), SpaceConfig(name="nb201")))           # a real choice


def test_prune_masks_remove_the_lowest_per_edge_ties_to_the_lower_index():
    imp = {"cell": torch.tensor([[5.0, 1.0, 3.0, 2.0, 4.0], [1.0, 1.0, 1.0, 0.0, 9.0]], dtype=torch.float64)}
    live = {"cell": torch.ones(2, 5, dtype=torch.bool)}
    cand = {"cell": live["cell"].clone()}
    cand["cell"][0, 0] = False  # not a candidate: never removed
    out = prune_masks(imp, cand, live, 0.5)["cell"]
    assert out[0].tolist() == [True, False, True, False, True]     # 2 of the 4 candidates: 1.0 and 2.0
    assert out[1].tolist() == [False, False, True, False, True]    # 3 of 5: 0.0, then the tied 1.0s by index


@pytest.mark.parametrize("mode", ["remove", "keep"])
def test_op_scores_are_the_proxy_of_the_pruned_or_kept_supernet(mode):
    _, _, net = _nb201()
    batch = _batch()
    cand = {"cell": torch.zeros(6, 5, dtype=torch.bool)}
    cand["cell"][2, 1] = cand["cell"][4, 3] = True
    scores = op_scores(net, batch, "naswot", cand, mode=mode, seed=0)["cell"]
    for e, o in ((2, 1), (4, 3)):
        m = {"cell": torch.ones(6, 5, dtype=torch.bool)}
        if mode == "remove":
            m["cell"][e, o] = False
        else:
            m["cell"][e] = False
            m["cell"][e, o] = True
        value = PROXIES.get("naswot")(SupernetAt(net, live_mixing(m, "cpu")), batch, seed=0)
        assert scores[e, o].item() == (-value if mode == "remove" else value)
    assert torch.isnan(scores[0, 0])  # not a candidate


def test_pruned_ops_are_never_built_nor_run():
    space, cfg, net = _nb201(impl="reference")
    modules = {(e, o): op for _, c, e, o, op in net.candidate_ops() if c == 0}
    report = zero_shot_prune(net, space, cfg, _batch(), parse_prune("naswot:0.5"))
    live = net.masks["cell"]
    assert live.sum(1).tolist() == [2] * 6 and report.removed == 18  # 3 of every edge's 5 ops
    calls = {key: 0 for key in modules}
    for key, op in modules.items():
        op.register_forward_hook(lambda *a, key=key: calls.__setitem__(key, calls[key] + 1))
    method = Darts(DartsConfig(), space, cfg)
    method.set_masks(net.masks)
    mix = method.mixing()
    assert torch.all(mix.ops["cell"][~live] == 0) and torch.allclose(mix.ops["cell"].sum(1), torch.ones(6))
    x, y = _batch()
    torch.nn.functional.cross_entropy(net(x, mix), y).backward()
    built = {id(m) for m in net.modules()}
    for (e, o), op in modules.items():
        if live[e, o]:
            assert calls[(e, o)] == 1
        else:
            assert calls[(e, o)] == 0 and id(op) not in built  # freed, never executed
    assert all(p.grad is not None for p in net.parameters())  # nothing dead left in the supernet


def test_searcher_prunes_each_subset_once_at_the_start(tiny):
    s = _searcher(tiny(method={"name": "pc-darts", "warmup_epochs": 0, "k": 2},
                       search={"prune": "params:0.5"}))  # the DARTS space, fast path
    for ct, m in s.supernet.masks.items():
        assert m[:, 0].all()  # none: never derived, never built, kept
        assert m.sum(1).tolist() == [4] * 14  # none + 3 of the 7 derivable ops (4 removed)
    assert s.prune_report.removed == 2 * 14 * 4
    live_ids = {id(p) for p in s.supernet.parameters()}
    assert {id(p) for g in s.optimizer.param_groups for p in g["params"]} <= live_ids | {
        id(p) for p in s.objective.parameters()}
    w = s.method.mixing().ops
    assert all(torch.all(w[ct][~m.to(w[ct].device)] == 0) for ct, m in s.supernet.masks.items())
    s.search_step(True, s.context())
    assert torch.isfinite(s.meters["loss"])
    g = s.derive()  # the derived cell uses live ops only
    starts = [0, 2, 5, 9]  # first edge of nodes 2..5
    for ct, cell in (("normal", g.normal), ("reduce", g.reduce)):
        for k, (op, inp) in enumerate(cell):
            assert s.supernet.masks[ct][starts[k // 2] + inp, s.space.primitives.index(op)]
    # the saving is measured on the search's own batch, before and after, and reported
    r = s.prune_report
    assert r.cost_before.images == r.cost_after.images == s.cfg.search.batch_size
    assert r.cost_after.state_mib < r.cost_before.state_mib  # fewer weights, grads and momenta
    assert r.cost_before.activation_mib > 0 and r.cost_after.seconds > 0
    assert "pruned vs full supernet" in r.line() and "memory" in r.line()
    assert set(r.to_dict()) >= {"full", "pruned", "removed", "live_after"}


def test_measure_step_counts_saved_activations_and_leaves_the_net_unchanged():
    from pcdarts.search.prune import measure_step
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3))

    class AtMixing(torch.nn.Module):  # the supernet call signature: net(x, mixing)
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, mixing):
            return self.net(x)

    before = {k: v.clone() for k, v in net.state_dict().items()}
    cost = measure_step(AtMixing(), None, _batch(8))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN stats restored
    assert all(p.grad is None for p in net.parameters())
    n_params = sum(p.numel() for p in net.parameters())
    assert cost.state_mib == pytest.approx(3 * 4 * n_params / 2 ** 20)
    # at least the conv input and the ReLU output (8 x 4 x 8 x 8 floats each) are saved for the backward
    assert cost.activation_mib >= 2 * 8 * 4 * 8 * 8 * 4 / 2 ** 20 * 0.99


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_runs_on_the_pruned_space(tiny, method):
    s = _searcher(tiny(method=tiny_method(method), space={"name": "nb201", "layers": 1},
                       search={"prune": "params:0.5"}))
    masks = s.supernet.masks["cell"]
    assert masks.sum() < masks.numel() and masks.any(1).all()
    mix = s.method.mixing()
    for i in range(len(s.supernet.cells)):
        w = mix.weights_for("cell", i).detach().cpu()
        assert torch.all(w[~masks] == 0), "a removed op keeps weight in the mixing"
    ctx = s.context()
    s.method.on_search_start(ctx)  # as the search starts (random-lookup draws its cells there)
    s.search_step(arch_active=s.method.is_arch_active(0), ctx=ctx)
    assert torch.isfinite(s.meters["loss"])
    s.derive()


@pytest.mark.parametrize("method", ["pc-darts", "msr-darts"])
def test_a_pruned_search_resumes_exactly_with_the_checkpoint_masks(tiny, method):
    extra = {"pc-darts": {"warmup_epochs": 0, "k": 2}}.get(method, {})
    base = tiny(method={"name": method, **extra}, space={"name": "nb201", "layers": 1},
                search={"epochs": 2, "prune": "naswot:0.5", "prune_batch_size": 8})
    base["run"]["out"] += "-full"
    full = pcdarts.search(base)
    part = dict(base, run=dict(base["run"], out=base["run"]["out"] + "-part"))
    first = pcdarts.search(part, stop_after_steps=2)
    resumed = pcdarts.search(resume=first.run_dir)
    ck_full = torch.load(full.run_dir / "checkpoint.pt", weights_only=True)
    ck_res = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=True)
    assert torch.equal(ck_full["masks"]["cell"], ck_res["masks"]["cell"]) and not ck_full["masks"]["cell"].all()
    assert resumed.history[-1]["arch_weights"] == full.history[-1]["arch_weights"]
    assert resumed.genotype == full.genotype
    for k, v in ck_full["supernet"].items():
        assert torch.equal(v, ck_res["supernet"][k]), k
