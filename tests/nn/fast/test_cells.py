"""The fast supernet path against the reference mixed edge (the oracle).

Same outputs, weight gradients, architecture gradients and BN running statistics in
both spaces, for K in {1, 2, 4}, both strides (the 3-cell DARTS net has two reduction
cells), every channel mode, with and without masks and edge weights; state_dict
compatibility; masked ops never run; prune(); the CUDA/bf16 path (gpu-marked).
Tiny float64 nets: C=8, 3 cells (NB201: one cell per stage), batch 2, 8x8 inputs.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pcdarts.search.config import SpaceConfig
from pcdarts.nn.edges import MixedEdge, Mixing
from pcdarts.nn.ops import FactorizedReduce
from pcdarts.registry import METHODS
from pcdarts.spaces.darts import FastDartsSupernet
from pcdarts.spaces.nb201 import FastNB201Supernet
from pcdarts.scorers.alpha import normalise_edges
from pcdarts.spaces import get_space
from pcdarts.spaces.darts import DartsSupernet, darts_node_edges
from pcdarts.spaces.nb201 import NB201_NODE_EDGES, NB201Supernet
from tests.conftest import assert_fast_equals_reference_steps, tiny_method

MODES = ("first+shuffle", "first+shift", "random")
SHAPES = {"darts": (14, 8, ("normal", "reduce")), "nb201": (6, 5, ("cell",))}
NODE_EDGES = {"darts": darts_node_edges(4), "nb201": NB201_NODE_EDGES}


def _nets(space, k=2, mode="first+shuffle", masks=None, recompute=True, dtype=torch.float64, aux_skip=False):
    torch.manual_seed(0)
    if space == "darts":
        kw = dict(C=8, layers=3, k=k, channel_mode=mode, masks=masks, aux_skip=aux_skip)
        ref, fast = DartsSupernet(**kw), FastDartsSupernet(**kw, recompute=recompute)
    else:
        kw = dict(C=8, N=1, k=k, channel_mode=mode, masks=masks, aux_skip=aux_skip)
        ref, fast = NB201Supernet(**kw), FastNB201Supernet(**kw, recompute=recompute)
    fast.load_state_dict(ref.state_dict())
    return ref.to(dtype), fast.to(dtype)


def _arch(space, dtype=torch.float64, seed=1):
    E, O, cts = SHAPES[space]
    g = torch.Generator().manual_seed(seed)
    alphas = {ct: torch.randn(E, O, generator=g, dtype=dtype).requires_grad_() for ct in cts}
    betas = {ct: torch.randn(E, generator=g, dtype=dtype).requires_grad_() for ct in cts}
    return alphas, betas


def _mixing(space, alphas, betas, edge_weights=True, aux=None):
    ops = {ct: torch.softmax(a, -1) for ct, a in alphas.items()}
    edges = {ct: normalise_edges(b, NODE_EDGES[space]) for ct, b in betas.items()} if edge_weights else None
    return Mixing(ops=ops, edges=edges, aux_skip=aux)


def _loss(out):
    """A loss whose gradient differs per logit (a plain sum would hide errors)."""
    w = torch.arange(out.numel(), dtype=out.dtype).view_as(out).sin()
    return (out * w).sum()


def _step(net, space, x, alphas, betas, edge_weights=True, what="both", aux=None):
    """Forward + gradients: ``arch`` (autograd.grad on alpha/beta, as the arch step does),
    ``weight`` (mixing without grad, loss.backward(), as the weight step does) or ``both``."""
    net.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # random channel mode: both paths must draw the same permutations
    if what == "weight":
        with torch.no_grad():
            mix = _mixing(space, alphas, betas, edge_weights, aux)
    else:
        mix = _mixing(space, alphas, betas, edge_weights, aux)
    out = net(x, mix)
    arch = [*alphas.values(), *betas.values()] if edge_weights else list(alphas.values())
    if what == "arch":
        grads = torch.autograd.grad(_loss(out), arch)
        return out.detach(), list(grads), {}
    if what == "weight":
        _loss(out).backward()
        return out.detach(), [], {n: p.grad for n, p in net.named_parameters()}
    grads = torch.autograd.grad(_loss(out), arch + list(net.parameters()), allow_unused=True)
    return out.detach(), list(grads[:len(arch)]), dict(zip((n for n, _ in net.named_parameters()), grads[len(arch):]))


def _close(a, b, what=""):
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=lambda m: f"{what}: {m}")


def _compare(space, ref, fast, x, edge_weights=True, what="both", aux=None):
    alphas, betas = _arch(space)
    out_r, ga_r, gw_r = _step(ref, space, x, alphas, betas, edge_weights, what, aux)
    out_f, ga_f, gw_f = _step(fast, space, x, alphas, betas, edge_weights, what, aux)
    _close(out_f, out_r, "output")
    for i, (a, b) in enumerate(zip(ga_f, ga_r)):
        _close(a, b, f"arch grad {i}")
    assert gw_f.keys() == gw_r.keys()
    for n in gw_r:
        if gw_r[n] is None:
            assert gw_f[n] is None or not gw_f[n].any(), n
        else:
            _close(gw_f[n], gw_r[n], f"grad of {n}")
    sr, sf = ref.state_dict(), fast.state_dict()  # BN running statistics moved identically
    for n in sr:
        _close(sf[n].double(), sr[n].double(), f"state {n}")


def _x(dtype=torch.float64, n=2, size=8):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(3), dtype=dtype)


@pytest.mark.parametrize("space", ["darts", "nb201"])
@pytest.mark.parametrize("k,mode,edge_weights", [
    # with K=1 every channel mode is the same code path (no partial channels, no draws)
    (k, m, e) for k, m, e in itertools.product((1, 2, 4), MODES, (True, False)) if k > 1 or m == MODES[0]])
def test_fast_equals_reference(space, k, mode, edge_weights):
    ref, fast = _nets(space, k, mode)
    _compare(space, ref, fast, _x(), edge_weights)


@pytest.mark.parametrize("strategy", ["replicate", "multiplier"])
def test_fast_equals_reference_with_either_depthwise_strategy(strategy, monkeypatch):
    """Both forms of a node's depthwise convs (replicated input, channel multiplier) equal the
    reference; the default table (blocks.DW_STRATEGY) picks one per kernel."""
    from pcdarts.nn.fast import blocks
    monkeypatch.setattr(blocks, "DW_STRATEGY", {key: strategy for key in [(3, 1), (5, 1), (3, 2), (5, 2)]})
    ref, fast = _nets("darts", 2, "first+shuffle")
    _compare("darts", ref, fast, _x(), True)


def _random_masks(space, seed=3):
    E, O, cts = SHAPES[space]
    g = torch.Generator().manual_seed(seed)
    masks = {ct: torch.rand(E, O, generator=g) > 0.5 for ct in cts}
    for ct in cts:
        masks[ct][0] = False  # an edge with every op masked: only its bypass remains
        masks[ct][1, 1:] = True  # and one edge with every op
    return masks


@pytest.mark.parametrize("space", ["darts", "nb201"])
@pytest.mark.parametrize("k,mode", [(1, "first+shuffle"), (2, "first+shift"), (4, "first+shuffle"), (4, "random")])
def test_fast_equals_reference_with_masks(space, k, mode):
    ref, fast = _nets(space, k, mode, masks=_random_masks(space))
    _compare(space, ref, fast, _x())


@pytest.mark.parametrize("space", ["darts", "nb201"])
@pytest.mark.parametrize("what", ["arch", "weight"])
@pytest.mark.parametrize("recompute", [True, False])
def test_arch_only_and_weight_only_backward(space, what, recompute):
    # the custom backward skips gradients nobody asked for: check both halves on their own
    ref, fast = _nets(space, 4, "first+shuffle", recompute=recompute)
    _compare(space, ref, fast, _x(), what=what)
    if what == "arch":
        assert all(p.grad is None for p in fast.parameters())


@pytest.mark.parametrize("space", ["darts", "nb201"])
@pytest.mark.parametrize("mode", ["first+shuffle", "random"])
def test_eval_mode_uses_running_statistics(space, mode):
    ref, fast = _nets(space, 4, mode)
    x = _x(n=4)
    alphas, betas = _arch(space)
    for net in (ref, fast):  # two training steps move the running statistics
        for _ in range(2):
            _step(net, space, x, alphas, betas)
    ref.eval(), fast.eval()
    with torch.no_grad():
        torch.manual_seed(5)
        out_r = ref(x, _mixing(space, alphas, betas))
        torch.manual_seed(5)
        out_f = fast(x, _mixing(space, alphas, betas))
    _close(out_f, out_r, "eval output")


def test_odd_input_size_and_forward_features():
    ref, fast = _nets("darts", 2)
    x = _x(size=7)
    _compare("darts", ref, fast, x)
    alphas, betas = _arch("darts")
    with torch.no_grad():
        fr = ref.forward_features(x, _mixing("darts", alphas, betas))
        ff = fast.forward_features(x, _mixing("darts", alphas, betas))
    assert len(fr) == len(ff)
    for a, b in zip(ff, fr):
        _close(a, b, "features")


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_state_dict_round_trip(space):
    ref, fast = _nets(space, 4)
    sr, sf = ref.state_dict(), fast.state_dict()
    assert list(sr) == list(sf)
    assert all(sr[n].shape == sf[n].shape for n in sr)
    ref2, _ = _nets(space, 4)
    ref2.load_state_dict(fast.state_dict())
    assert list(fast.candidate_ops()) and len(list(fast.candidate_ops())) == len(list(ref.candidate_ops()))
    for (ct, c, e, o, m), (ct2, c2, e2, o2, m2) in zip(fast.candidate_ops(), ref.candidate_ops()):
        assert (ct, c, e, o) == (ct2, c2, e2, o2) and type(m) is type(m2)


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_prune_on_fast_path(space):
    ref, fast = _nets(space, 2)
    x = _x()
    _compare(space, ref, fast, x)  # builds and caches the plans
    masks = _random_masks(space, seed=11)
    ref.prune(masks), fast.prune(masks)
    assert fast.masks.keys() == ref.masks.keys()
    assert all(torch.equal(fast.masks[ct], ref.masks[ct]) for ct in ref.masks)
    assert list(fast.state_dict()) == list(ref.state_dict())
    _compare(space, ref, fast, x)


class _CountConvs(TorchDispatchMode):
    """Counts depthwise / grouped convolutions (those of sep_conv and dil_conv)."""

    def __init__(self):
        super().__init__()
        self.grouped = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default and args[-1] > 1:
            self.grouped += 1
        return func(*args, **(kwargs or {}))


def test_masked_ops_are_never_run():
    # keep pooling and skip only: the fast path must run no depthwise convolution at all
    E, O, cts = SHAPES["darts"]
    masks = {ct: torch.zeros(E, O, dtype=torch.bool) for ct in cts}
    for ct in cts:
        masks[ct][:, 1:4] = True  # max_pool, avg_pool, skip_connect
    ref, fast = _nets("darts", 2, masks=masks)
    assert not any("op." in n for n, _ in fast.named_parameters() if ".edges." in n)
    alphas, betas = _arch("darts")
    counter = _CountConvs()
    with counter:
        out = fast(_x(), _mixing("darts", alphas, betas))
        _loss(out).backward()
    assert counter.grouped == 0
    ref, fast = _nets("darts", 2, masks=masks)  # fresh BN statistics
    _compare("darts", ref, fast, _x())


def test_every_parameter_gets_a_gradient():
    _, fast = _nets("darts", 4)
    alphas, betas = _arch("darts")
    _, _, grads = _step(fast, "darts", _x(), alphas, betas, what="weight")
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, missing


def test_random_mode_consumes_the_generator_like_the_reference():
    ref, fast = _nets("darts", 4, "random")
    alphas, betas = _arch("darts")
    states = []
    for net in (ref, fast):
        torch.manual_seed(0)
        with torch.no_grad():
            net(_x(), _mixing("darts", alphas, betas))
        states.append(torch.get_rng_state())
    assert torch.equal(states[0], states[1])


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_space_builds_the_fast_supernet(space):
    cfg = SpaceConfig(name=space, C=8, layers=3 if space == "darts" else 1, impl="fast")
    net = get_space(space).build_supernet(cfg, k=2, num_classes=10, in_channels=3)
    assert isinstance(net, FastDartsSupernet if space == "darts" else FastNB201Supernet)


def test_float32_channels_last_output_layout():
    ref, fast = _nets("darts", 4, dtype=torch.float32)
    alphas, betas = _arch("darts", torch.float32)
    with torch.no_grad():
        feats = fast.forward_features(_x(torch.float32), _mixing("darts", alphas, betas))
        out_r = ref(_x(torch.float32), _mixing("darts", alphas, betas))
        out_f = fast(_x(torch.float32), _mixing("darts", alphas, betas))
    assert feats[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_f, out_r, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- CUDA

def _grads_on(net, space, x, y, alphas, amp):
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        out = net(x, _mixing(space, alphas, {ct: torch.zeros_like(a[:, 0]) for ct, a in alphas.items()}))
    loss = torch.nn.functional.cross_entropy(out.float(), y)
    grads = torch.autograd.grad(loss, list(alphas.values()) + list(net.parameters()))
    return torch.cat([g.flatten().float() for g in grads])


@pytest.mark.gpu
@pytest.mark.xfail(reason="known bug found on an H200 (2026-11-30): the fast path's fp32 gradients differ from "
                          "the reference on CUDA (max abs 0.012 / 0.031), not on the CPU; space.impl=auto uses "
                          "the reference on CUDA until it is fixed", strict=False)
@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_cuda_fast_path_matches_reference(space, monkeypatch):
    # fp32 means fp32 here: TF32 convolutions and matmuls (on by default for cuDNN) round to
    # 10 mantissa bits, differently on the two paths. Newer torch has its own switches for it.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    for switch in (getattr(torch.backends.cudnn, "conv", None), getattr(torch.backends.cuda, "matmul", None)):
        if switch is not None and hasattr(switch, "fp32_precision"):
            monkeypatch.setattr(switch, "fp32_precision", "ieee")
    ref, fast = _nets(space, 4, dtype=torch.float32)
    ref, fast = ref.cuda(), fast.cuda().to(memory_format=torch.channels_last)
    x = _x(torch.float32, n=8, size=16).cuda()
    y = torch.arange(8).cuda() % 10
    alphas = {ct: a.detach().float().cuda().requires_grad_() for ct, a in _arch(space)[0].items()}
    g_ref32 = _grads_on(ref, space, x, y, alphas, amp=False)
    g_fast32 = _grads_on(fast, space, x, y, alphas, amp=False)
    torch.testing.assert_close(g_fast32, g_ref32, rtol=1e-3, atol=1e-4)
    # bf16 autocast: the fast path must be as close to fp32 as the reference is
    err_ref = (_grads_on(ref, space, x, y, alphas, amp=True) - g_ref32).norm() / g_ref32.norm()
    err_fast = (_grads_on(fast, space, x, y, alphas, amp=True) - g_ref32).norm() / g_ref32.norm()
    assert err_fast < 3 * err_ref + 1e-2


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_bf16_autocast_on_cpu_fast_path_as_close_as_reference(space):
    """The autocast handling of the fast path (inputs cast up front, backward recomputes
    with autocast off) is device-independent: check it under CPU bf16 autocast."""
    ref, fast = _nets(space, 4, dtype=torch.float32)
    fast = fast.to(memory_format=torch.channels_last)
    x = _x(torch.float32, n=8, size=16)
    y = torch.arange(8) % 10
    alphas = {ct: a.detach().float().requires_grad_() for ct, a in _arch(space)[0].items()}
    g_ref32 = _grads_on(ref, space, x, y, alphas, amp=False)
    torch.testing.assert_close(_grads_on(fast, space, x, y, alphas, amp=False), g_ref32, rtol=1e-3, atol=1e-4)
    err_ref = (_grads_on(ref, space, x, y, alphas, amp=True) - g_ref32).norm() / g_ref32.norm()
    err_fast = (_grads_on(fast, space, x, y, alphas, amp=True) - g_ref32).norm() / g_ref32.norm()
    assert 0 < err_fast < 3 * err_ref + 1e-2, (err_fast, err_ref)


def test_bf16_dilated_depthwise_weight_gradient_is_finite_on_cpu():
    """The CPU's bf16 weight gradient of a dilated channels_last depthwise conv returned NaNs at
    32x32 (torch 2.13; nondeterministic): ConvSpec.backward computes that one in float32."""
    from pcdarts.nn.fast.conv import ConvSpec
    torch.manual_seed(0)
    for c, mult, k in ((2, 1, 3), (2, 3, 5), (4, 2, 5), (16, 3, 3)):
        spec = ConvSpec((1, 1), (k - 1, k - 1), (2, 2), c)
        x = torch.randn(16, c, 32, 32).contiguous(memory_format=torch.channels_last)
        w = torch.randn(c * mult, 1, k, k).contiguous(memory_format=torch.channels_last)
        g = torch.randn_like(spec(x, w))
        gi32, gw32 = spec.backward(g, x, (), w, True, True)
        for _ in range(3):
            gi, gw = spec.backward(g.bfloat16(), x.bfloat16(), (), w.bfloat16(), True, True)
            assert gw.dtype == torch.bfloat16 and torch.isfinite(gw).all() and torch.isfinite(gi).all()
            assert (gw.float() - gw32).norm() / gw32.norm() < 2e-2
            assert (gi.float() - gi32).norm() / gi32.norm() < 2e-2


@pytest.mark.gpu
def test_cuda_search_step_runs(tmp_path):
    from pcdarts.search.searcher import search
    cfg = {"method": {"name": "pc-darts", "warmup_epochs": 0, "k": 2},
           "space": {"name": "darts", "C": 4, "layers": 3, "impl": "fast"},
           "data": {"dataset": "digits", "max_samples": 32},
           "search": {"epochs": 1, "batch_size": 8},
           "run": {"device": "cuda", "out": str(tmp_path / "run"), "progress": False, "plots": False}}
    result = search(cfg)
    assert result.genotype is not None


@pytest.mark.parametrize("space,method", [("darts", {"name": "pc-darts", "warmup_epochs": 0, "k": 2}),
                                          ("darts", {"name": "darts", "order": 2}),
                                          ("nb201", {"name": "pc-darts", "warmup_epochs": 0, "k": 2})])
def test_searcher_step_on_fast_path_equals_reference(tiny, space, method):
    """One whole Searcher step (loader, both optimisers, first/second order) on each path."""
    assert_fast_equals_reference_steps(tiny, method, space)


@pytest.mark.parametrize("space", ["darts", "nb201"])
@pytest.mark.parametrize("k,mode,edge_weights", [(1, "first+shuffle", False), (2, "first+shuffle", True),
                                                 (4, "first+shift", True), (2, "random", False)])
@pytest.mark.parametrize("what", ["both", "weight"])
def test_fast_equals_reference_with_the_aux_skip(space, k, mode, edge_weights, what):
    """The DARTS- auxiliary skip (identity; non-affine FactorizedReduce on stride-2 edges) is the
    same term on both paths: outputs, weight gradients (the FactorizedReduce convs) and BN state."""
    ref, fast = _nets(space, k, mode, aux_skip=True)
    assert any(isinstance(m.aux, FactorizedReduce) for m in ref.modules() if isinstance(m, MixedEdge)) \
        == (space == "darts")
    _compare(space, ref, fast, _x(), edge_weights, what, aux=0.7)


def test_aux_skip_changes_the_output_and_needs_the_modules():
    ref, _ = _nets("darts", 2, aux_skip=True)
    alphas, betas = _arch("darts")
    with torch.no_grad():
        a = ref(_x(), _mixing("darts", alphas, betas, True, None))
        b = ref(_x(), _mixing("darts", alphas, betas, True, 0.5))
    assert not torch.allclose(a, b)
    plain, _ = _nets("darts", 2)
    with pytest.raises(ValueError, match="aux_skip=True"):
        plain(_x(), _mixing("darts", alphas, betas, True, 0.5))


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_widened_supernets_stay_equal_on_both_paths(space):
    """K 4 -> 2 mid-search (DrNAS progressive): old weights are copied into the wider ops, each new
    channel a copy of a random old one; the fast path then still equals the reference."""
    from pcdarts.nn.edges import widen_edges
    ref, fast = _nets(space, 4)
    old = {n: t.clone() for n, t in ref.state_dict().items()}
    moved_r = widen_edges(ref, 2, torch.Generator().manual_seed(0))
    widen_edges(fast, 2, torch.Generator().manual_seed(0))
    assert moved_r and all(e.k == 2 for e in ref.modules() if isinstance(e, MixedEdge))
    new = ref.state_dict()
    for n, t in old.items():  # every old tensor is the leading block of the new one
        block = new[n][tuple(slice(0, s) for s in t.shape)]
        assert torch.equal(block, t), n
    for n, t in new.items():
        if t.dim() and t.shape != old[n].shape:  # new channels repeat old ones
            d = next(i for i, (a, b) in enumerate(zip(old[n].shape, t.shape)) if a != b)
            lead = t[tuple(slice(None) if i == d else slice(0, m) for i, m in enumerate(old[n].shape))]
            extra = lead.narrow(d, old[n].shape[d], t.shape[d] - old[n].shape[d])
            assert all(any(torch.equal(extra.select(d, j), old[n].select(d, i)) for i in range(old[n].shape[d]))
                       for j in range(extra.shape[d])), n
            break
    assert fast.state_dict().keys() == new.keys()
    _compare(space, ref, fast, _x())


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_reference_mode_runs_the_op_modules_so_hooks_fire(space):
    """The fast path never calls the op modules (hooks would be ignored); ``with net.reference():``
    runs them, on the same parameters and with the same result."""
    _, fast = _nets(space, 2)
    alphas, betas = _arch(space)
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1))
             for e in fast.modules() if isinstance(e, MixedEdge) for m in e.ops.values()]
    with torch.no_grad():
        out_fast = fast(_x(), _mixing(space, alphas, betas))
        assert not calls
        with fast.reference():
            out_ref = fast(_x(), _mixing(space, alphas, betas))
        assert calls and not fast.use_reference
    for h in hooks:
        h.remove()
    _close(out_fast, out_ref, "reference mode")


def test_fast_path_refuses_a_primitive_it_has_no_kernel_for():
    from pcdarts.nn.fast.blocks import NB201_KINDS, source_plans
    from pcdarts.genotype.primitives import NB201_PRIMITIVES
    _, fast = _nets("nb201", 1)
    cell = next(c for c in fast.cells if hasattr(c, "edges"))
    kinds = {k: v for k, v in NB201_KINDS.items() if k != "avg_pool_3x3"}
    with pytest.raises(NotImplementedError, match="'avg_pool_3x3'.*space.impl=reference"):
        source_plans(list(((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))), cell.edges, NB201_PRIMITIVES, kinds,
                     3, 8, 1)


@pytest.mark.parametrize("space", ["darts", "nb201"])
@pytest.mark.parametrize("k,mode", [(1, "first+shuffle"), (2, "first+shuffle"), (2, "random")])
def test_active_op_sets_and_per_cell_weights_are_the_same_on_both_paths(space, k, mode):
    """Mixing.active (ops run this step; the others skipped like pruned ones) and Mixing.cells
    (one cell's own weights) give the same outputs and gradients on both paths."""
    ref, fast = _nets(space, k, mode)
    E, O, cts = SHAPES[space]
    g = torch.Generator().manual_seed(5)
    active = {ct: torch.rand(E, O, generator=g) < 0.5 for ct in cts}
    cell_idx = next(i for i, c in enumerate(ref.cells) if hasattr(c, "edges"))
    own = torch.softmax(torch.randn(E, O, generator=g, dtype=torch.float64), -1)

    def run(net):
        alphas, betas = _arch(space)
        torch.manual_seed(7)
        mix = _mixing(space, alphas, betas)
        mix.active, mix.cells = active, {cell_idx: own}
        out = net(_x(), mix)
        grads = torch.autograd.grad(_loss(out), list(alphas.values()) + list(net.parameters()), allow_unused=True)
        return out.detach(), grads

    (out_r, g_r), (out_f, g_f) = run(ref), run(fast)
    _close(out_f, out_r, "output")
    with torch.no_grad():  # the cell's own weights are used (not its type's)
        alphas, betas = _arch(space)
        torch.manual_seed(7)
        plain = _mixing(space, alphas, betas)
        plain.active = active
        assert not torch.allclose(ref(_x(), plain), out_r)
    for i, (a, b) in enumerate(zip(g_f, g_r)):
        if b is None:
            assert a is None or not a.any()
        else:
            _close(a, b, f"grad {i}")
    # inactive ops are not executed (reference: hooks on the op modules)
    calls = []
    hooks = [edge.ops[str(o)].register_forward_hook(lambda *_: calls.append(1))
             for c in ref.cells if hasattr(c, "edges") for e, edge in enumerate(c.edges) for o in edge.active
             if not active[ref.cell_type(c) if hasattr(ref, "cell_type") else "cell"][e][o]]
    with torch.no_grad():
        alphas, betas = _arch(space)
        mix = _mixing(space, alphas, betas)
        mix.active = active
        ref(_x(), mix)
    for h in hooks:
        h.remove()
    assert hooks and not calls


def test_a_second_derivative_through_the_fast_path_raises_instead_of_being_wrong():
    """The fast path's backward passes are hand-written (recompute, fused kernels) and not
    themselves differentiable: differentiating twice must fail loudly (a method that needs it,
    LeaSE's saliency, runs that pass under supernet.reference())."""
    from pcdarts.search.prune import live_mixing
    sp = get_space("darts")
    net = sp.build_supernet(SpaceConfig(name="darts", C=4, layers=2, k=2, impl="fast"), k=2, num_classes=3,
                            in_channels=1)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    (g,) = torch.autograd.grad(net(x, live_mixing(net.masks, "cpu")).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()
    with net.reference():  # the oracle path is twice differentiable
        (g,) = torch.autograd.grad(net(x, live_mixing(net.masks, "cpu")).sum(), x, create_graph=True)
        g.sum().backward()


# the passes a method runs on the reference path on purpose (printed once, in the manifest)
REFERENCE_PASSES = {"lease": {"LeaSE's explanation (a double backward)"},
                    "msr-darts": {"MSR-DARTS's input-size probe (one no-grad forward at setup)"}}


# random-lookup trains no supernet (it looks drawn cells up in a benchmark): no step to check
@pytest.mark.parametrize("name", sorted(set(METHODS.names()) - {"random-lookup"}))
def test_every_method_steps_on_the_fast_path(tiny, name, monkeypatch, capsys):
    """Every registered method's search step (tiny DARTS space, impl=fast) runs its supernet's
    fast cells, and any pass on the reference path is one the method declares, named in
    ``supernet.reference_passes`` and printed once: no silent fallback."""
    from pcdarts.search.config import build_config
    from pcdarts.search.searcher import Searcher, new_run_dir
    calls = {"fast": 0, "reference": 0}
    fast_cell, ref_forward = FastDartsSupernet.cell_forward, DartsSupernet.forward

    def counted_fast(self, *a, **k):
        calls["fast"] += 1
        return fast_cell(self, *a, **k)

    def counted_ref(self, *a, **k):  # the fast supernet's forward calls it only under reference(why)
        calls["reference"] += 1
        assert self.use_reference, "the reference forward ran outside supernet.reference(why)"
        return ref_forward(self, *a, **k)

    monkeypatch.setattr(FastDartsSupernet, "cell_forward", counted_fast)
    monkeypatch.setattr(DartsSupernet, "forward", counted_ref)
    cfg = build_config(tiny(method=tiny_method(name), space={"name": "darts", "layers": 3, "impl": "fast"}))
    s = Searcher(cfg, new_run_dir(cfg))
    assert isinstance(s.supernet, FastDartsSupernet)
    for _ in range(2):
        s.search_step(arch_active=s.method.has_arch, ctx=s.context())
    assert calls["fast"] > 0
    expected = REFERENCE_PASSES.get(name, set())
    assert set(s.supernet.reference_passes) == expected
    assert (calls["reference"] > 0) == bool(expected)
    printed = capsys.readouterr().err
    assert all(printed.count(why) == 1 for why in expected)  # once, though every step enters it


def test_reference_passes_are_recorded_in_the_manifest(tiny):
    """A fast supernet's passes on the reference path (LeaSE's explanation) end up in the run
    manifest's ``reference_passes`` (written with the checkpoint of a stopped run)."""
    import json

    import pcdarts
    cfg = tiny(method=tiny_method("lease"), space={"name": "darts", "layers": 3, "impl": "fast"},
               search={"epochs": 1})
    result = pcdarts.search(cfg, stop_after_steps=1)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert list(manifest["reference_passes"]) == ["LeaSE's explanation (a double backward)"]
    assert manifest["reference_passes"]["LeaSE's explanation (a double backward)"] >= 1  # entries so far
