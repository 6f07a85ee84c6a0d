"""Ops, mixed edges and supernets: shapes, partial channels, masks, gradients."""
from __future__ import annotations

import pytest
import torch

from pcdarts.config import SpaceConfig
from pcdarts.nn.edges import MixedEdge, Mixing, channel_shuffle, shuffle_permutation
from pcdarts.nn.ops import DARTS_PRIMITIVES, NB201_PRIMITIVES, OPS, ResNetReduction, darts_ops, nb201_ops
from pcdarts.spaces import get_space


@pytest.mark.parametrize("space,factories,prims", [
    ("darts", darts_ops(pool_bn=True), DARTS_PRIMITIVES),
    ("darts-eval", darts_ops(pool_bn=False), DARTS_PRIMITIVES),
    ("nb201", nb201_ops(), NB201_PRIMITIVES),
])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 7])
def test_every_op_keeps_channels_and_divides_resolution(space, factories, prims, stride, size):
    x = torch.randn(2, 6, size, size)
    out_size = (size + stride - 1) // stride
    for name in prims:
        y = factories[name](6, stride, False)(x)
        assert y.shape == (2, 6, out_size, out_size), (space, name, stride)


def test_pooling_bn_only_in_darts_search_ops():
    assert OPS["darts_search"]["max_pool_3x3"](4, 1, False).bn is not None
    assert OPS["darts"]["max_pool_3x3"](4, 1, False).bn is None
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in OPS["nb201"]["avg_pool_3x3"](4, 1, False).modules())


def test_resnet_reduction_block_shape():
    y = ResNetReduction(4, 8)(torch.randn(2, 4, 8, 8))
    assert y.shape == (2, 8, 4, 4)


def test_channel_shuffle_permutation():
    C, K = 8, 4
    x = torch.arange(C, dtype=torch.float32).view(1, C, 1, 1)
    y = channel_shuffle(x, K).flatten()
    # output channel p takes input (p % K) * (C / K) + p // K
    assert y.tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert torch.equal(y.long(), shuffle_permutation(C, K))


def _edge(k, mode, stride=1, C=8, mask=None):
    torch.manual_seed(0)
    return MixedEdge(C, stride, DARTS_PRIMITIVES, OPS["darts_search"], k, mode, mask)


@pytest.mark.parametrize("mode", ["first+shuffle", "first+shift", "random"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_partial_channel_edge_shape(mode, stride, k):
    e = _edge(k, mode, stride)
    y = e(torch.randn(2, 8, 8, 8), torch.softmax(torch.randn(8), 0))
    assert y.shape == (2, 8, 8 // stride, 8 // stride)
    # ops are built for C/K channels
    assert all(m.in_channels == 8 // k for m in e.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1)


def test_first_shuffle_puts_processed_and_bypass_channels_where_the_rule_says():
    C, K = 8, 4
    e = _edge(K, "first+shuffle", mask=[n == "skip_connect" for n in DARTS_PRIMITIVES])
    x = torch.randn(1, C, 4, 4)
    w = torch.zeros(8)
    w[DARTS_PRIMITIVES.index("skip_connect")] = 0.5
    y = e(x, w)
    # processed block [0, C/K) is 0.5*x, then the bypass; shuffled by K groups
    expected = channel_shuffle(torch.cat([0.5 * x[:, :2], x[:, 2:]], 1), K)
    assert torch.allclose(y, expected)


def test_first_shift_moves_processed_block_to_the_end():
    e = _edge(4, "first+shift", mask=[n == "skip_connect" for n in DARTS_PRIMITIVES])
    x = torch.randn(1, 8, 4, 4)
    w = torch.zeros(8)
    w[DARTS_PRIMITIVES.index("skip_connect")] = 2.0
    assert torch.allclose(e(x, w), torch.cat([x[:, 2:], 2 * x[:, :2]], 1))


def test_random_mode_processes_c_over_k_channels_in_place():
    e = _edge(4, "random", mask=[n == "skip_connect" for n in DARTS_PRIMITIVES])
    x = torch.randn(1, 8, 4, 4)
    w = torch.zeros(8)
    w[DARTS_PRIMITIVES.index("skip_connect")] = 3.0
    y = e(x, w)
    scaled = [c for c in range(8) if torch.allclose(y[:, c], 3 * x[:, c])]
    untouched = [c for c in range(8) if torch.allclose(y[:, c], x[:, c])]
    assert len(scaled) == 2 and len(untouched) == 6
    # a fresh subset each call: over many calls every channel gets processed
    seen = set()
    for _ in range(30):
        y = e(x, w)
        seen |= {c for c in range(8) if torch.allclose(y[:, c], 3 * x[:, c])}
    assert seen == set(range(8))


@pytest.mark.parametrize("mode", ["first+shuffle", "first+shift", "random"])
@pytest.mark.parametrize("stride", [1, 2])
def test_k1_edge_is_plain_darts_mixed_op(mode, stride):
    e = _edge(1, mode, stride)
    x = torch.randn(2, 8, 8, 8)
    w = torch.softmax(torch.randn(8), 0)
    manual = sum(w[int(i)] * op(x) for i, op in e.ops.items())
    assert torch.allclose(e(x, w), manual, atol=1e-6)


def test_edge_weight_scales_whole_edge_output():
    e = _edge(4, "first+shuffle")
    x, w = torch.randn(2, 8, 4, 4), torch.softmax(torch.randn(8), 0)
    assert torch.allclose(e(x, w, torch.tensor(0.25)), 0.25 * e(x, w), atol=1e-6)


def test_masked_and_none_ops_are_never_built_or_run():
    mask = [True] * 8
    mask[DARTS_PRIMITIVES.index("sep_conv_5x5")] = False
    e = _edge(2, "first+shuffle", mask=mask)
    assert str(DARTS_PRIMITIVES.index("none")) not in e.ops
    assert str(DARTS_PRIMITIVES.index("sep_conv_5x5")) not in e.ops
    calls = []
    for op in e.ops.values():
        op.register_forward_hook(lambda m, i, o: calls.append(m))
    e(torch.randn(2, 8, 4, 4), torch.softmax(torch.randn(8), 0))
    assert len(calls) == 6  # 8 ops - none - masked
    # pruning later frees the op and it is not run again
    keep = [True] * 8
    keep[DARTS_PRIMITIVES.index("max_pool_3x3")] = False
    e.prune(keep)
    calls.clear()
    e(torch.randn(2, 8, 4, 4), torch.softmax(torch.randn(8), 0))
    assert len(calls) == 5


def _mixing(space_name, net, requires_grad=False, edges=False):
    space = get_space(space_name)
    cfg = SpaceConfig(name=space_name)
    E, O = space.arch_shape(cfg)
    ops = {ct: torch.randn(E, O).softmax(-1).requires_grad_(requires_grad) for ct in space.cell_types}
    ew = {ct: torch.rand(E).requires_grad_(requires_grad) for ct in space.cell_types} if edges else None
    return Mixing(ops=ops, edges=ew)


@pytest.mark.parametrize("space_name,layers", [("darts", 3), ("nb201", 1)])
@pytest.mark.parametrize("k", [1, 2])
def test_supernet_every_parameter_gets_a_gradient(space_name, layers, k):
    torch.manual_seed(0)
    space = get_space(space_name)
    net = space.build_supernet(SpaceConfig(name=space_name, C=4, layers=layers), k=k, num_classes=5, in_channels=3)
    mixing = _mixing(space_name, net, requires_grad=True, edges=True)
    loss = net(torch.randn(2, 3, 8, 8), mixing).logsumexp(1).sum()
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    for t in [*mixing.ops.values(), *mixing.edges.values()]:
        assert t.grad is not None and t.grad.abs().sum() > 0


def test_darts_supernet_structure():
    space = get_space("darts")
    net = space.build_supernet(SpaceConfig(C=4, layers=3), k=1, num_classes=10, in_channels=3)
    assert [c.reduction for c in net.cells] == [False, True, True]
    assert len(net.cells[0].edges) == 14
    ops = list(net.candidate_ops())
    assert len(ops) == 3 * 14 * 7  # `none` is never built
    net8 = space.build_supernet(SpaceConfig(C=4, layers=8), k=1, num_classes=10, in_channels=3)
    assert [i for i, c in enumerate(net8.cells) if c.reduction] == [2, 5]


def test_darts_imagenet_stem_reduces_by_8():
    space = get_space("darts")
    net = space.build_supernet(SpaceConfig(C=4, layers=3, stem="imagenet"), k=2, num_classes=7, in_channels=3)
    m = _mixing("darts", net)
    assert net(torch.randn(2, 3, 32, 32), m).shape == (2, 7)
    feats = net.forward_features(torch.randn(2, 3, 32, 32), m)
    assert feats[0].shape[-1] == 4  # 32 / 8


def test_nb201_supernet_structure():
    space = get_space("nb201")
    net = space.build_supernet(SpaceConfig(name="nb201", C=4, layers=2, track_running_stats=False), k=1,
                               num_classes=10, in_channels=3)
    search_cells = [c for c in net.cells if hasattr(c, "edges")]
    assert len(search_cells) == 6 and len(net.cells) == 8
    bn = [m for m in search_cells[0].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(not m.affine and not m.track_running_stats for m in bn)
    assert net(torch.randn(2, 3, 8, 8), _mixing("nb201", net)).shape == (2, 10)


def test_supernet_prune_removes_ops_everywhere():
    space = get_space("darts")
    net = space.build_supernet(SpaceConfig(C=4, layers=3), k=1, num_classes=10, in_channels=3)
    n_before = sum(p.numel() for p in net.parameters())
    mask = torch.ones(14, 8, dtype=torch.bool)
    mask[:, DARTS_PRIMITIVES.index("sep_conv_5x5")] = False
    net.prune({"normal": mask})
    sep5 = DARTS_PRIMITIVES.index("sep_conv_5x5")
    assert all(o != sep5 for ct, _c, _e, o, _m in net.candidate_ops() if ct == "normal")
    assert sum(p.numel() for p in net.parameters()) < n_before
    assert not net.masks["normal"][:, DARTS_PRIMITIVES.index("sep_conv_5x5")].any()
    assert net.masks["reduce"].all()
