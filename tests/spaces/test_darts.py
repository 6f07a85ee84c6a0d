"""The DARTS space's search-cell BN options (``space.pool_bn``, ``space.track_running_stats``):
they change the network as stated, on the reference and the fast path alike (fast == reference
in outputs, architecture and weight gradients, train and eval mode), and reach the broad space
and DARTS-'s auxiliary skip. Tiny float64 nets: C=4, 3 cells, batch 4, 8x8 inputs."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

from pcdarts.config import SpaceConfig, build_config
from pcdarts.errors import ConfigError
from pcdarts.nn.edges import MixedEdge, Mixing, normalise_edges
from pcdarts.nn.ops import FactorizedReduce, PoolBN
from pcdarts.spaces import get_space
from pcdarts.spaces.darts import DartsSupernet, FastDartsSupernet, darts_node_edges

BNS = (nn.modules.batchnorm._BatchNorm,)


def _nets(k=2, aux_skip=False, **bn):
    torch.manual_seed(0)
    kw = dict(C=4, layers=3, k=k, aux_skip=aux_skip, **bn)
    ref, fast = DartsSupernet(**kw), FastDartsSupernet(**kw)
    fast.load_state_dict(ref.state_dict())
    return ref.double(), fast.double()


def _cell_bns(net):
    return [m for cell in net.cells for m in cell.modules() if isinstance(m, BNS)]


def _mixing(seed=1, aux=None):
    g = torch.Generator().manual_seed(seed)
    alphas = {ct: torch.randn(14, 8, generator=g, dtype=torch.float64).requires_grad_() for ct in ("normal", "reduce")}
    betas = {ct: torch.randn(14, generator=g, dtype=torch.float64).requires_grad_() for ct in ("normal", "reduce")}
    mix = Mixing(ops={ct: torch.softmax(a, -1) for ct, a in alphas.items()},
                 edges={ct: normalise_edges(b, darts_node_edges(4)) for ct, b in betas.items()}, aux_skip=aux)
    return mix, [*alphas.values(), *betas.values()]


def _x():
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=lambda m: f"{what}: {m}")


def test_the_options_change_the_network_as_stated():
    plain, _ = _nets()
    pools = [m for m in plain.modules() if isinstance(m, PoolBN)]
    assert pools and all(p.bn is not None for p in pools)
    assert all(b.track_running_stats and b.running_mean is not None for b in _cell_bns(plain))
    official, _ = _nets(pool_bn=False, track_running_stats=False, aux_skip=True)
    assert all(p.bn is None for p in official.modules() if isinstance(p, PoolBN))
    bns = _cell_bns(official)  # preprocessing, ops and the auxiliary FactorizedReduce alike
    assert bns and all(not b.track_running_stats and b.running_mean is None for b in bns)
    assert any(isinstance(e.aux, FactorizedReduce) for e in official.modules() if isinstance(e, MixedEdge))
    assert official.stem[1].running_mean is not None  # the stem keeps its running statistics
    # without running statistics the eval-mode forward uses batch statistics: it equals train mode
    mix, _ = _mixing(aux=0.5)
    with torch.no_grad():
        official.stem.eval()  # (the stem is outside the cells: take it out of the comparison)
        train_out = official(_x(), mix)
        official.eval()
        assert torch.equal(official(_x(), mix), train_out)
        plain.eval()
        assert not torch.allclose(plain(_x(), Mixing(ops=mix.ops, edges=mix.edges)), train_out)


@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("space", ["darts", "broad"])
def test_the_space_config_reaches_the_supernet(space, impl):
    cfg = SpaceConfig(name=space, C=4, layers=3 if space == "darts" else 2, impl=impl, pool_bn=False,
                      track_running_stats=False)
    net = get_space(space).build_supernet(cfg, k=2, num_classes=3, in_channels=3)
    assert type(net).__name__.startswith("Fast") == (impl == "fast")
    assert all(p.bn is None for p in net.modules() if isinstance(p, PoolBN))
    assert all(b.running_mean is None for cell in net.cells for b in cell.modules() if isinstance(b, BNS))
    default = get_space(space).build_supernet(dataclasses.replace(cfg, pool_bn=None, track_running_stats=True),
                                              k=2, num_classes=3, in_channels=3)
    assert all(p.bn is not None for p in default.modules() if isinstance(p, PoolBN))


def test_nb201_refuses_pool_bn_naming_the_field():
    with pytest.raises(ConfigError, match="space.pool_bn"):
        build_config({"space": {"name": "nb201", "pool_bn": True}})
    build_config({"space": {"name": "nb201", "pool_bn": False}})


@pytest.mark.parametrize("pool_bn,track,k,aux", [(False, False, 1, None), (False, False, 4, None),
                                                 (False, True, 2, 0.7), (True, False, 2, 0.7)])
def test_fast_equals_reference_with_the_bn_options(pool_bn, track, k, aux):
    ref, fast = _nets(k, aux_skip=aux is not None, pool_bn=pool_bn, track_running_stats=track)
    results = []
    for net in (ref, fast):
        net.train()
        mix, arch = _mixing(aux=aux)
        out = net(_x(), mix)
        w = torch.arange(out.numel(), dtype=out.dtype).view_as(out).sin()
        params = [p for p in net.parameters()]
        grads = torch.autograd.grad((out * w).sum(), arch + params, allow_unused=True)
        net.eval()
        with torch.no_grad():
            ev = net(_x(), _mixing(aux=aux)[0])
        results.append((out.detach(), grads, ev, net.state_dict()))
    (o_r, g_r, e_r, s_r), (o_f, g_f, e_f, s_f) = results
    _close(o_f, o_r, "train output")
    _close(e_f, e_r, "eval output")
    for i, (a, b) in enumerate(zip(g_f, g_r)):
        if b is None:
            assert a is None or not a.any(), i
        else:
            _close(a, b, f"gradient {i}")
    assert s_f.keys() == s_r.keys()
    for n in s_r:  # running statistics (where kept) moved identically
        _close(s_f[n].double(), s_r[n].double(), f"state {n}")
