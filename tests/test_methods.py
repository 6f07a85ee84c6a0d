"""Methods x spaces: one search step each, the second-order hypergradient, determinism, resume."""
from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

import pcdarts
from pcdarts.config import SpaceConfig, build_config
from pcdarts.methods import DartsConfig, SearchContext, WeightStepInfo
from pcdarts.registry import METHODS, SPACES
from pcdarts.search import Searcher, new_run_dir
from pcdarts.spaces import get_space


def _searcher(cfg_dict):
    cfg = build_config(cfg_dict)
    return Searcher(cfg, new_run_dir(cfg))


@pytest.mark.parametrize("space", SPACES.names())
@pytest.mark.parametrize("method", METHODS.names())
def test_one_search_step_per_method_and_space(tiny, method, space):
    layers = 3 if space == "darts" else 1
    s = _searcher(tiny(method={"name": method, "warmup_epochs": 0},
                       space={"name": space, "layers": layers}))
    w0 = [p.detach().clone() for p in s.weight_params]
    a0 = [p.detach().clone() for p in s.method.arch_parameters()]
    s.search_step(arch_active=s.method.is_arch_active(0), ctx=s.context())
    assert torch.isfinite(s.meters["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(w0, s.weight_params)), "weights did not change"
    changed = any(not torch.equal(a, b) for a, b in zip(a0, s.method.arch_parameters()))
    assert changed == s.method.has_arch
    # architecture parameters are registered, but not in the weight optimiser
    arch_ids = {id(p) for p in s.method.arch_parameters()}
    assert not arch_ids & {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    assert not arch_ids & {id(p) for p in s.supernet.parameters()}


def test_warmup_freezes_architecture_and_skips_arch_data(tiny):
    s = _searcher(tiny(method={"name": "pc-darts", "warmup_epochs": 1, "k": 2}))
    a0 = [p.detach().clone() for p in s.method.arch_parameters()]
    pos = (s.arch_loader.epoch, s.arch_loader.position)
    s.search_step(arch_active=s.method.is_arch_active(0), ctx=s.context())
    assert all(torch.equal(a, b) for a, b in zip(a0, s.method.arch_parameters()))
    assert (s.arch_loader.epoch, s.arch_loader.position) == pos  # no arch batch fetched
    assert s.method.is_arch_active(1)


def test_arch_and_eval_loaders_share_one_copy_of_the_arch_split(tiny):
    s = _searcher(tiny())
    assert s.arch_loader.images.data_ptr() == s.eval_loader.images.data_ptr()
    assert s.train_loader.images.data_ptr() != s.arch_loader.images.data_ptr()
    assert len(s.train_loader.labels) + len(s.arch_loader.labels) == s.data_info["n_weight"] + s.data_info["n_arch"]


def test_pc_darts_defaults_are_the_authors():
    c = METHODS.get("pc-darts").Config()
    assert (c.k, c.edge_norm, c.warmup_epochs, c.arch_lr, c.arch_weight_decay) == (4, True, 15, 6e-4, 1e-3)
    assert tuple(c.arch_betas) == (0.5, 0.999)
    d = METHODS.get("darts").Config()
    assert (d.k, d.edge_norm, d.warmup_epochs, d.arch_lr, d.order) == (1, False, 0, 3e-4, 1)


def test_second_order_hypergradient_matches_double_backward():
    torch.manual_seed(0)
    dtype = torch.float64
    space = get_space("nb201")
    scfg = SpaceConfig(name="nb201", C=4, layers=1)
    net = space.build_supernet(scfg, k=1, num_classes=3, in_channels=2).to(dtype)
    # a small finite-difference radius: with float64 the central difference is then exact to
    # ~1e-8, so the test checks the mathematics (virtual step, signs, the (g+ - g-)/(2 eps) term)
    method = METHODS.get("darts")(DartsConfig(order=2, hvp_eps=1e-6), space, scfg)
    method.arch.to(dtype)
    for p in method.arch_parameters():
        p.data.normal_(0, 0.5)
    W = list(net.parameters())
    names = [n for n, _ in net.named_parameters()]
    m_bufs = [0.1 * torch.randn_like(p) for p in W]
    lr, mu, wd = 0.05, 0.9, 3e-4
    info = WeightStepInfo(lr=lr, momentum=mu, weight_decay=wd, momentum_buffers=m_bufs)
    ctx = SearchContext(supernet=net, objective=torch.nn.functional.cross_entropy, weight_params=W,
                        weight_step_info=lambda: info)
    xt, yt = torch.randn(6, 2, 6, 6, dtype=dtype), torch.randint(0, 3, (6,))
    xv, yv = torch.randn(6, 2, 6, 6, dtype=dtype), torch.randint(0, 3, (6,))
    w_before = [p.detach().clone() for p in W]
    hyper, _, _ = method._second_order_grads(ctx, (xt, yt), (xv, yv))
    assert all(torch.equal(a, b) for a, b in zip(w_before, W)), "weights not restored exactly"

    # exact: d/d alpha L_val(w - lr * (mu m + dL_tr/dw + wd w), alpha), by double backward
    alphas = method.arch_parameters()
    loss_tr = torch.nn.functional.cross_entropy(net(xt, method.mixing()), yt)
    g = torch.autograd.grad(loss_tr, W, create_graph=True)
    w_virtual = {n: p - lr * (mu * m + gi + wd * p) for n, p, m, gi in zip(names, W, m_bufs, g)}
    loss_val = torch.nn.functional.cross_entropy(functional_call(net, w_virtual, (xv, method.mixing())), yv)
    exact = torch.autograd.grad(loss_val, alphas)
    for h, e in zip(hyper, exact):
        assert torch.allclose(h, e, rtol=1e-4, atol=1e-7 * e.abs().max()), (h - e).abs().max()
    # and the second-order term matters (the test would catch dropping it)
    first = torch.autograd.grad(torch.nn.functional.cross_entropy(
        functional_call(net, {n: v.detach() for n, v in w_virtual.items()}, (xv, method.mixing())), yv), alphas)
    assert any(not torch.allclose(f, e, rtol=1e-3) for f, e in zip(first, exact))


def _final_alphas(result):
    return result.history[-1]["arch_weights"]


def test_same_seed_same_architecture(tiny):
    a = pcdarts.search(tiny(run={"out": str(tiny()["run"]["out"]) + "a"}))
    b = pcdarts.search(tiny(run={"out": str(tiny()["run"]["out"]) + "b"}))
    assert _final_alphas(a) == _final_alphas(b)
    assert a.genotype == b.genotype
    c = pcdarts.search(tiny(run={"out": str(tiny()["run"]["out"]) + "c", "seed": 1}))
    assert _final_alphas(c) != _final_alphas(a)


@pytest.mark.parametrize("method,stop", [("pc-darts", 4), ("pc-darts", 6), ("darts", 5)])
def test_resume_equals_uninterrupted_run(tiny, method, stop):
    base = tiny(method={"name": method, "warmup_epochs": 1, "k": 2, "order": 2 if method == "darts" else 1},
                search={"epochs": 3}, space={"channel_mode": "random"} if stop == 6 else {})
    base["run"]["out"] += "-full"
    full = pcdarts.search(base)
    part = dict(base, run=dict(base["run"], out=base["run"]["out"] + "-part"))
    # 3 steps per epoch here: stop=4 and 5 stop mid-epoch 1, stop=6 at an epoch boundary
    first = pcdarts.search(part, stop_after_steps=stop)
    assert first.interrupted
    resumed = pcdarts.search(resume=first.run_dir)
    assert not resumed.interrupted
    assert _final_alphas(resumed) == _final_alphas(full)
    assert resumed.genotype == full.genotype
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    ck_full = torch.load(full.run_dir / "checkpoint.pt", weights_only=False)
    ck_res = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=False)
    for k, v in ck_full["supernet"].items():
        assert torch.equal(v, ck_res["supernet"][k]), k


def test_config_checks_read_the_method_class_flags(monkeypatch):
    """validate() asks the Method class (not its config dataclass) whether it has an
    architecture and needs an architecture split."""
    from pcdarts.methods import PCDarts

    base = {"search": {"epochs": 2}, "method": {"warmup_epochs": 2}}
    with pytest.raises(pcdarts.config.ConfigError, match="warmup_epochs=2 must be smaller"):
        build_config(base)
    monkeypatch.setattr(PCDarts, "has_arch", False)
    build_config(base)  # a method without architecture parameters has nothing to warm up
    split = {"data": {"train_portion": 1.0}}
    monkeypatch.setattr(PCDarts, "has_arch", True)
    with pytest.raises(pcdarts.config.ConfigError, match="needs an architecture split"):
        build_config(split)
    monkeypatch.setattr(PCDarts, "needs_arch_split", False)
    build_config(split)
