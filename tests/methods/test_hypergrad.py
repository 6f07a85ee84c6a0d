"""The second-order (unrolled) architecture gradient (:mod:`pcdarts.methods.hypergrad`) against
double backward, and the batch-norm statistics its step moves (as the published code)."""
from __future__ import annotations

import torch
from torch.func import functional_call

from pcdarts.config import SpaceConfig, build_config
from pcdarts.methods import DartsConfig, SearchContext, WeightStepInfo
from pcdarts.methods.hypergrad import second_order_grads
from pcdarts.registry import METHODS, OBJECTIVES
from pcdarts.search.searcher import Searcher, new_run_dir
from pcdarts.spaces import get_space


def _searcher(cfg_dict):
    cfg = build_config(cfg_dict)
    return Searcher(cfg, new_run_dir(cfg))


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
    ctx = SearchContext(supernet=net, objective=OBJECTIVES.get("cross-entropy")(), weight_params=W,
                        weight_step_info=lambda: info)
    xt, yt = torch.randn(6, 2, 6, 6, dtype=dtype), torch.randint(0, 3, (6,))
    xv, yv = torch.randn(6, 2, 6, 6, dtype=dtype), torch.randint(0, 3, (6,))
    w_before = [p.detach().clone() for p in W]
    hyper, _, _ = second_order_grads(lambda b: method.loss(ctx, b, method.mixing()), method.arch_parameters(), W,
                                     info, (xt, yt), (xv, yv), hvp_eps=1e-6, supernet=net)
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


def test_second_order_step_updates_batchnorm_stats_three_times_like_the_published_code(tiny):
    """The published code evaluates the virtual weights on a copy: the live BN statistics see
    the virtual-step forward and the two finite-difference forwards (3), never the validation batch."""
    s = _searcher(tiny(method={"name": "darts", "order": 2}, space={"name": "nb201", "layers": 1}))
    bns = [m for m in s.supernet.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.track_running_stats]
    assert bns
    before = [int(m.num_batches_tracked) for m in bns]
    batch, arch_batch = s.train_loader.next(), s.arch_loader.next()
    s.method.arch_step(s.context(), batch, arch_batch)
    assert [int(m.num_batches_tracked) - b for m, b in zip(bns, before)] == [3] * len(bns)
