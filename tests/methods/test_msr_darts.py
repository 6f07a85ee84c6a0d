"""MSR-DARTS (ALGORITHMS §7, §15): the stable rank against dense SVDs, spectral normalisation on
both supernet paths, per-cell softmax(-srank) mixing held for an epoch, the minimum-stable-rank
derivation, exact resume, and the prepare_supernet seam."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pcdarts
from pcdarts.config import SpaceConfig, build_config, load_preset
from pcdarts.errors import ConfigError
from pcdarts.methods.msr_darts import MSRDarts, MSRDartsConfig, SpectralNormBank
from pcdarts.registry import METHODS
from pcdarts.scorers import stable_rank as sr
from pcdarts.search.searcher import Searcher, new_run_dir
from pcdarts.spaces import get_space

CANDIDATES = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


def _searcher(cfg_dict):
    cfg = build_config(cfg_dict)
    return Searcher(cfg, new_run_dir(cfg))


def _msr(tiny, space="darts", **method):
    return tiny(method={"name": "msr-darts", **method},
                space={"name": space, "layers": 3 if space == "darts" else 1},
                data={"max_samples": 40, "train_portion": 0.8})


def dense_circular_operator(w: torch.Tensor, H: int, W: int, groups: int = 1, dilation: int = 1) -> torch.Tensor:
    """The conv as an explicit [C_out*H*W, C_in*H*W] matrix on the H x W torus (tap a of row i
    reads row (i + a*d) mod H), built entry by entry."""
    co, cig = w.shape[:2]
    kh, kw = w.shape[-2:]
    A = torch.zeros(co * H * W, cig * groups * H * W, dtype=torch.float64)
    per_group = co // groups
    for o in range(co):
        for c in range(cig):
            cin = (o // per_group) * cig + c
            for a in range(kh):
                for b in range(kw):
                    for i in range(H):
                        for j in range(W):
                            ii, jj = (i + a * dilation) % H, (j + b * dilation) % W
                            A[(o * H + i) * W + j, (cin * H + ii) * W + jj] += float(w[o, c, a, b])
    return A


def dense_srank(A: torch.Tensor) -> float:
    s = torch.linalg.svdvals(A)
    return float((s ** 2).sum() / s.max() ** 2)


# ---------------------------------------------------------------- stable rank

def test_stable_rank_of_known_matrices():
    assert sr.matrix_stable_rank(torch.eye(5)) == pytest.approx(5.0)
    u, v = torch.randn(6, 1), torch.randn(1, 4)
    assert sr.matrix_stable_rank(u @ v) == pytest.approx(1.0)
    assert sr.matrix_stable_rank(torch.diag(torch.tensor([3.0, 1.0, 0.0]))) == pytest.approx(10 / 9)
    assert sr.matrix_stable_rank(7.5 * torch.eye(3)) == pytest.approx(3.0)  # scale invariant


@pytest.mark.parametrize("co,ci,k,groups,dilation,H,W", [
    (3, 2, 3, 1, 1, 5, 4),   # plain 3x3
    (2, 3, 3, 1, 2, 5, 5),   # dilated
    (4, 4, 3, 4, 1, 5, 5),   # depthwise: block diagonal per frequency
    (3, 3, 5, 3, 2, 4, 4),   # depthwise, dilated 5x5 (span 9) on a 4x4 map: the taps wrap around
    (4, 3, 1, 1, 1, 3, 4),   # 1x1: H*W copies of the matrix's singular values
])
def test_conv_stable_rank_equals_the_dense_svd_of_its_circular_operator(co, ci, k, groups, dilation, H, W):
    torch.manual_seed(co * 10 + k)
    w = torch.randn(co, ci // groups, k, k, dtype=torch.float64)
    A = dense_circular_operator(w, H, W, groups, dilation)
    sv = sr.conv_operator_singular_values(w, (H, W), groups=groups, dilation=(dilation, dilation))
    dense = torch.linalg.svdvals(A)
    assert torch.allclose(torch.sort(sv, descending=True).values, dense[: sv.numel()], atol=1e-10)
    assert dense[sv.numel():].abs().max().item() < 1e-10 if dense.numel() > sv.numel() else True
    ours = sr.conv_stable_rank(w.float(), (H, W), groups=groups, dilation=(dilation, dilation))
    assert ours == pytest.approx(dense_srank(A), rel=1e-5)
    conv = nn.Conv2d(ci, co, k, groups=groups, dilation=dilation, bias=False)
    conv.weight.data.copy_(w)
    assert sr.convs_stable_ranks([(conv, (H, W))])[0] == pytest.approx(dense_srank(A), rel=1e-5)
    # the reshape mode: the C_out x (C_in/groups * k * k) matrix
    assert sr.conv_stable_rank(w, mode="reshape") == pytest.approx(sr.matrix_stable_rank(w.reshape(co, -1)))


def test_operator_stable_rank_grows_with_the_resolution_and_needs_stride_one():
    w = torch.randn(6, 5, 1, 1)
    assert sr.conv_stable_rank(w, (16, 16)) == pytest.approx(4 * sr.conv_stable_rank(w, (8, 8)))  # §15
    assert sr.conv_stable_rank(w, (8, 8)) == pytest.approx(64 * sr.matrix_stable_rank(w[:, :, 0, 0]))
    with pytest.raises(ValueError, match="stride-1"):
        sr.conv_stable_rank(torch.randn(3, 3, 3, 3), (8, 8), stride=(2, 2))


# ---------------------------------------------------------------- spectral normalisation

def _zero_padded_operator_norm(conv: nn.Conv2d, weight: torch.Tensor, H: int, W: int) -> float:
    """Largest singular value of the conv (its own padding/stride) on an H x W input, densely."""
    n = conv.in_channels * H * W
    basis = torch.eye(n, dtype=torch.float64).view(n, conv.in_channels, H, W)
    cols = F.conv2d(basis, weight.double(), None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return float(torch.linalg.matrix_norm(cols.reshape(n, -1), ord=2))


def test_spectral_norm_bank_normalises_every_conv_kind_to_the_coefficient():
    torch.manual_seed(0)
    convs = [nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False),            # depthwise
             nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2, groups=4, bias=False),
             nn.Conv2d(4, 6, 1, bias=False),                                   # pointwise
             nn.Conv2d(4, 4, 3, padding=1, bias=False)]                        # dense 3x3
    for c in convs:
        c.weight.data.mul_(3.0)
    bank = SpectralNormBank([(c, (6, 6)) for c in convs], coeff=2.0, iterations=5, eps=0.0, redraw=False)
    for _ in range(80):  # persistent vectors: converged (slowly where the top singular values are close)
        bank.power_iteration()
    for c in convs:
        assert sr.raw_weight(c) is not c.weight
        assert _zero_padded_operator_norm(c, c.weight.detach(), 6, 6) == pytest.approx(2.0, rel=2e-3)
    # the batched weights equal the per-conv ones, and gradients flow through sigma
    direct = [c.weight for c in convs]
    with bank.batched():
        batched = [c.weight for c in convs]
    for a, b in zip(direct, batched):
        assert torch.allclose(a, b)
    g1 = torch.autograd.grad(sum((w ** 2).sum() for w in direct), [sr.raw_weight(c) for c in convs])
    g2 = torch.autograd.grad(sum((w ** 2).sum() for w in batched), [sr.raw_weight(c) for c in convs])
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-6)
    # ||W/sigma||^2 does not change with the scale of W: the gradient is orthogonal to W
    assert abs(float((g1[2] * sr.raw_weight(convs[2])).sum().detach())) < 1e-4


def test_depthwise_vectors_are_redrawn_from_the_generator_the_others_persist():
    dw, pw = nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False), nn.Conv2d(3, 3, 1, bias=False)
    gen = torch.Generator().manual_seed(0)
    bank = SpectralNormBank([(dw, (5, 5)), (pw, (5, 5))], iterations=1, redraw=True, generator=lambda: gen)
    g_dw, g_pw = bank.groups
    bank.power_iteration()
    pw_u = g_pw.u.clone()
    state = gen.get_state()
    bank.power_iteration()
    a = g_dw.u.clone()
    gen.set_state(state)
    g_pw.u.copy_(pw_u)
    bank.power_iteration()
    assert torch.equal(a, g_dw.u)  # one random restart from the generator, then one iteration
    assert not torch.equal(pw_u, g_pw.u)  # the 1x1 kept iterating from its own vector


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_fast_path_uses_the_normalised_weights_like_the_reference(space):
    torch.manual_seed(0)
    sp = get_space(space)
    scfg = SpaceConfig(name=space, C=4, layers=3 if space == "darts" else 1, impl="fast")
    net = sp.build_supernet(scfg, k=1, num_classes=3, in_channels=2)
    method = MSRDarts(MSRDartsConfig(), sp, scfg)
    method.prepare_supernet(net, (2, 8, 8))
    for _ in range(3):
        method.bank.power_iteration()
    x, y = torch.randn(4, 2, 8, 8), torch.randint(0, 3, (4,))
    mixing = method.mixing()
    params = list(net.parameters())

    def run(reference: bool, batched: bool):
        with (net.reference() if reference else torch.enable_grad()), \
                (method.bank.batched() if batched else torch.enable_grad()):
            out = net(x, mixing)
        return out.detach(), torch.autograd.grad(F.cross_entropy(out, y), params)

    out_ref, g_ref = run(True, False)
    for reference, batched in ((False, False), (False, True), (True, True)):
        out, g = run(reference, batched)
        assert torch.allclose(out, out_ref, atol=1e-5)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g, g_ref))
    net.eval()
    with torch.no_grad():
        a = net(x, mixing)
        with net.reference():
            b = net(x, mixing)
    assert torch.allclose(a, b, atol=1e-5)
    # the un-normalised weights would give another output: the fast path really normalises
    plain = sp.build_supernet(scfg, k=1, num_classes=3, in_channels=2)
    plain.prune(net.masks)
    plain.load_state_dict({k.replace(".parametrizations.weight.original", ".weight"): v
                           for k, v in net.state_dict().items()})
    plain.eval()
    with torch.no_grad():
        assert not torch.allclose(plain(x, mixing), a, atol=1e-3)


# ---------------------------------------------------------------- the search

def test_only_the_parametric_ops_are_built_trained_and_derived(tiny):
    s = _searcher(_msr(tiny))
    assert not s.method.has_arch and s.method.arch_parameters() == []
    prims = s.space.primitives
    for ct, mask in s.supernet.masks.items():
        assert [prims[o] for o in range(len(prims)) if mask[0, o]] == list(CANDIDATES)
    ops = {prims[o] for _, _, _, o, _ in s.supernet.candidate_ops()}
    assert ops == set(CANDIDATES)
    assert {id(p) for p in s.weight_params} == {id(p) for p in s.supernet.parameters()}
    assert len(s.method.bank) == sum(1 for _, _, _, _, op in s.supernet.candidate_ops()
                                     for m in op.modules() if isinstance(m, nn.Conv2d))
    assert all(op in CANDIDATES for op, _ in s.derive().normal + s.derive().reduce)
    assert s.data_info["n_arch"] == 8 and s.data_info["n_weight"] == 32  # 20 % held out, only evaluated
    pos = (s.arch_loader.epoch, s.arch_loader.position)
    s.search_step(s.method.is_arch_active(0), s.context())
    assert (s.arch_loader.epoch, s.arch_loader.position) == pos  # no architecture batch is ever drawn
    ck = s.state_dict()
    assert torch.equal(ck["masks"]["normal"], s.supernet.masks["normal"])


def test_resolutions_follow_the_official_code_or_the_ops(tiny):
    """'cell' (the code): a reduction cell's ops count at its input resolution, halved after the
    stride of a stride-2 edge, so edges leaving node 2 count at twice their real size."""
    cell = _searcher(_msr(tiny)).method
    op = _searcher(_msr(tiny, resolution="op", spectral_norm=False)).method
    # digits are 16x16; the cells: 0 normal (16), 1 reduce (16 -> 8), 2 reduce (8 -> 4)
    o = CANDIDATES.index("sep_conv_3x3") + 4
    assert cell._scored[(0, 0, o)][1] == op._scored[(0, 0, o)][1] == (16, 16)
    assert cell._scored[(1, 0, o)][1] == op._scored[(1, 0, o)][1] == (8, 8)  # stride-2 edge from input 0
    assert cell._scored[(1, 4, o)][1] == (16, 16) and op._scored[(1, 4, o)][1] == (8, 8)  # edge 4: node 2 -> 3
    r_cell, r_op = cell._compute_ranks(), op._compute_ranks()
    assert r_cell[1][4, o] == pytest.approx(4 * r_op[1][4, o])
    assert r_cell[0][0, o] == pytest.approx(r_op[0][0, o])
    ranks = r_cell[0]
    assert torch.isinf(ranks[:, :4]).all() and torch.isfinite(ranks[:, 4:]).all()
    conv, size = cell._scored[(0, 0, o)]
    assert conv.kernel_size == (1, 1)  # the last conv of sep/dil convs is the pointwise one
    assert float(ranks[0, o]) == pytest.approx(sr.conv_stable_rank(sr.raw_weight(conv), size))


def test_mixing_is_per_cell_softmax_of_minus_srank_constant_within_an_epoch(tiny):
    s = _searcher(_msr(tiny))
    ctx = s.context()
    s.method.on_epoch_start(0, ctx)
    mix = s.method.mixing()
    ranks = s.method._compute_ranks()
    assert set(mix.cells) == {0, 1, 2}
    for c, w in mix.cells.items():
        expect = torch.softmax(-ranks[c], dim=-1).float()
        assert torch.allclose(w, expect) and (w[:, :4] == 0).all()
        assert torch.allclose(w.sum(-1), torch.ones(w.shape[0]))
    assert not torch.equal(mix.cells[1], mix.cells[2])  # each cell its own weights
    frozen = {c: w.clone() for c, w in mix.cells.items()}
    for _ in range(2):
        s.search_step(False, ctx)
    now = s.method._compute_ranks()
    assert any(not torch.allclose(now[c], ranks[c]) for c in now)  # the weights moved ...
    assert all(torch.equal(s.method.mixing().cells[c], frozen[c]) for c in frozen)  # ... the mixing did not
    s.method.on_epoch_start(1, ctx)
    for c, w in s.method.mixing().cells.items():
        assert torch.allclose(w, torch.softmax(-now[c], dim=-1).float())


def test_derivation_takes_the_two_edges_of_smallest_min_srank_and_their_argmin_op():
    space = get_space("darts")
    scfg = SpaceConfig(C=4, layers=3)
    method = MSRDarts(MSRDartsConfig(), space, scfg)
    torch.manual_seed(3)
    ranks = {}
    for c in range(3):
        r = torch.full((14, 8), math.inf, dtype=torch.float64)
        r[:, 4:] = torch.rand(14, 4, dtype=torch.float64) * 10 + 1
        ranks[c] = r
    method.cell_type_of = {0: "normal", 1: "reduce", 2: "reduce"}
    method.scored_ranks = ranks
    g = space.derive(method.scores(), None, method.derive_rule())

    def official(W):  # the official parse: per node edges sorted by min srank, then argmin op
        gene, start = [], 0
        for i in range(4):
            block = W[start:start + i + 2]
            for j in sorted(range(i + 2), key=lambda t: float(block[t].min()))[:2]:
                gene.append((space.primitives[int(block[j].argmin())], j))
            start += i + 2
        return tuple(gene)

    assert g.normal == official(ranks[0])
    assert g.reduce == official((ranks[1] + ranks[2]) / 2)  # the mean matrix over the type's cells
    cells = method.cell_genotypes()
    assert cells[0] == official(ranks[0]) and cells[2] == official(ranks[2])


def test_msr_darts_resumes_mid_search_exactly(tiny):
    base = _msr(tiny, per_cell=True)
    base["search"] = {**base["search"], "epochs": 2, "batch_size": 16, "arch_batch_size": 8}
    base["run"]["out"] += "-full"
    full = pcdarts.search(base)
    assert [r["arch_active"] for r in full.history] == [False, False]
    assert "valid_acc" in full.history[-1] and set(full.history[-1]["cell_genotypes"]) == {"0", "1", "2"}
    part = dict(base, run=dict(base["run"], out=base["run"]["out"] + "-part"))
    first = pcdarts.search(part, stop_after_steps=3)  # 2 steps per epoch: stops in the middle of epoch 1
    assert first.interrupted
    resumed = pcdarts.search(resume=first.run_dir)
    assert resumed.genotype == full.genotype
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    assert [r["stable_rank"] for r in resumed.history] == [r["stable_rank"] for r in full.history]
    ck_full = torch.load(full.run_dir / "checkpoint.pt", weights_only=True)
    ck_res = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=True)
    for k, v in ck_full["supernet"].items():
        assert torch.equal(v, ck_res["supernet"][k]), k
    for a, b in zip(ck_full["method"]["spectral_norm"]["u"], ck_res["method"]["spectral_norm"]["u"]):
        assert torch.equal(a, b)
    # pcdarts derive reads the stable ranks saved with the checkpoint: the same genotype
    from pcdarts.cli import derive_from_run
    assert derive_from_run(full.run_dir) == full.genotype


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_one_search_step_on_each_space(tiny, space):
    extra = {"srank_mode": "reshape"} if space == "nb201" else {"ops": "sep_conv_3x3,dil_conv_5x5"}
    s = _searcher(_msr(tiny, space=space, **extra))
    w0 = [p.detach().clone() for p in s.weight_params]
    s.search_step(False, s.context())
    assert any(not torch.equal(a, b) for a, b in zip(w0, s.weight_params))
    g = s.derive()
    live = {s.space.primitives[o] for _, _, _, o, _ in s.supernet.candidate_ops()}
    if space == "nb201":
        assert set(g.ops) <= live == {"nor_conv_1x1", "nor_conv_3x3"}
    else:
        assert {op for op, _ in g.normal + g.reduce} <= live == {"sep_conv_3x3", "dil_conv_5x5"}


# ---------------------------------------------------------------- config and the seam

def test_preset_and_config_errors(tiny):
    cfg = build_config(load_preset("msr-darts_cifar10"))
    assert cfg.method_name == "msr-darts" and cfg.k == 1
    assert (cfg.space.C, cfg.space.layers, cfg.search.epochs, cfg.search.batch_size) == (16, 8, 50, 128)
    assert (cfg.search.lr, cfg.search.lr_min, cfg.search.momentum, cfg.search.weight_decay,
            cfg.search.grad_clip, cfg.data.train_portion) == (0.025, 0.001, 0.9, 3e-4, 5.0, 0.8)
    m = cfg.method
    assert (m.srank_mode, m.resolution, m.spectral_norm, m.sn_coeff, m.sn_iterations, m.sn_redraw) == (
        "operator", "cell", True, 1.0, 5, True)
    for bad, match in (({"srank_mode": "svd"}, "method.srank_mode"), ({"resolution": "x"}, "method.resolution"),
                       ({"ops": "sep_conv_3x3, conv_9x9"}, "method.ops.*unknown"),
                       ({"warmup_epochs": 3}, "method.warmup_epochs"), ({"sn_iterations": 0}, "sn_iterations")):
        with pytest.raises(ConfigError, match=match):
            build_config(_msr(tiny, **bad))


def test_prepare_supernet_runs_before_the_optimiser_and_the_checkpoint(tiny, monkeypatch):
    """The seam: a method's prepare_supernet transforms the supernet before the Searcher builds
    the weight optimiser (so it holds exactly the final weights) and before a resume loads."""
    from pcdarts.methods import PCDarts
    from pcdarts.search import planner, searcher

    calls = []

    class Keeps4(PCDarts):
        def prepare_supernet(self, supernet, input_shape):
            calls.append(input_shape)
            keep = torch.zeros_like(supernet.masks["normal"])
            keep[:, 4:] = True
            supernet.prune({ct: keep for ct in supernet.masks})
            conv = next(m for _, _, _, _, op in supernet.candidate_ops() for m in op.modules()
                        if isinstance(m, nn.Conv2d))
            nn.utils.parametrizations.weight_norm(conv)

    name = "test-keeps-4"
    if name not in METHODS:
        METHODS.register(name)(Keeps4)
    built = []
    real = searcher.weight_optimizer
    monkeypatch.setattr(searcher, "weight_optimizer", lambda params, s: built.append(len(calls)) or real(params, s))
    cfg = tiny(method={"name": name, "warmup_epochs": 0, "k": 2})
    s = _searcher(cfg)
    assert calls == [(1, 16, 16)] and built == [1]
    assert {id(p) for p in s.weight_params} == {id(p) for p in s.supernet.parameters()}
    assert any("parametrizations" in k for k in s.supernet.state_dict())
    first = pcdarts.search(dict(cfg, run={**cfg["run"], "out": cfg["run"]["out"] + "-2"}), stop_after_steps=1)
    resumed = pcdarts.search(resume=first.run_dir, stop_after_steps=1)  # loads into the prepared supernet
    assert resumed.interrupted and len(calls) == 3
    step = planner._Step("darts", name, 4, 3, 2, 8, 1, 10, "fast", "first+shuffle")
    assert calls[-1] == (1, 8, 8) and {id(p) for p in step.weight_params} == {id(p) for p in step.supernet.parameters()}


def _subnormal_survives() -> bool:
    x = torch.full((4,), 1e-39)  # a float32 subnormal
    return bool((x * 1.5).ne(0).all())


def test_a_run_flushes_subnormals_unless_told_not_to(tiny):
    """run.flush_denormal (default on): MSR-DARTS's tiny softmax(-srank) weights make the CPU
    backward run on subnormal floats, 10-100x slower per operation; a run flushes them."""
    cfg = _msr(tiny)
    try:
        _searcher(cfg)
        assert not _subnormal_survives()
        _searcher({**cfg, "run": {**cfg.get("run", {}), "flush_denormal": False}})
        assert _subnormal_survives()
    finally:
        torch.set_flush_denormal(False)
