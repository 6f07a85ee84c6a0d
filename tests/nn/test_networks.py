"""Evaluation networks, counting rules, plots and the info/plot subcommands (all CPU, tiny)."""
from __future__ import annotations

import argparse
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from pcdarts.errors import report_user_errors
from pcdarts.genotype import DartsGenotype, NB201Genotype
from pcdarts.nn.networks import (AuxiliaryHead, DartsCell, NB201Network, NetworkCIFAR, NetworkImageNet,
                              build_network, drop_path)
from pcdarts.genotype.published import PUBLISHED
from pcdarts.analysis.stats import count_macs, count_params, genotype_stats
from pcdarts.cli.tools import add_info_subcommand

V2 = PUBLISHED["DARTS_V2"]
assert isinstance(V2, DartsGenotype)
NB_WITH_NONE = NB201Genotype.from_arch_str(
    "|none~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_1x1~2|")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine the
    thread hand-offs dominate (seconds instead of milliseconds per test): run these tests
    single-threaded (after conftest's thread setting) and restore the count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _forward_backward(net: nn.Module, x: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, object]:
    net.train()
    logits, aux = net(x)
    assert logits.shape == (x.shape[0], num_classes)
    loss = logits.square().mean()
    if aux is not None:
        assert aux.shape == (x.shape[0], num_classes)
        loss = loss + 0.4 * aux.square().mean()
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    return logits, aux


@pytest.mark.parametrize("size,in_channels", [(32, 3), (16, 1), (8, 3)])
def test_cifar_forward_backward_and_aux(size: int, in_channels: int) -> None:
    torch.manual_seed(0)
    net = NetworkCIFAR(V2, C=4, layers=5, num_classes=7, in_channels=in_channels, auxiliary=True)
    x = torch.randn(2, in_channels, size, size)
    _, aux = _forward_backward(net, x, 7)
    assert aux is not None  # training mode computes the auxiliary head
    net.eval()
    with torch.no_grad():
        logits, aux = net(x)
    assert aux is None and logits.shape == (2, 7)
    assert "auxiliary_head.classifier.weight" in dict(net.named_parameters())


def test_cifar_without_auxiliary_head() -> None:
    net = NetworkCIFAR(PUBLISHED["PC_DARTS_cifar"], C=4, layers=5, auxiliary=False)
    _, aux = _forward_backward(net, torch.randn(2, 3, 16, 16), 10)
    assert aux is None


def test_imagenet_forward_backward() -> None:
    torch.manual_seed(0)
    net = NetworkImageNet(V2, C=8, layers=5, num_classes=11)
    _, aux = _forward_backward(net, torch.randn(2, 3, 64, 64), 11)
    assert aux is not None
    assert len(net.auxiliary_head.features) == 7  # no second BN (original quirk)
    net.eval()
    assert net(torch.randn(1, 3, 64, 64))[1] is None


def test_nb201_network_skips_none_edges() -> None:
    net = NB201Network(NB_WITH_NONE, C=4, N=1, num_classes=5)
    cell = net.cells[0]
    assert sorted(cell.edges.keys()) == ["2<-0", "3<-0", "3<-1", "3<-2"]  # 2 none edges skipped
    logits, aux = _forward_backward(net, torch.randn(2, 3, 16, 16), 5)
    assert aux is None
    # node 1 has only a none input, so it is zeros and the 3<-1 pooling edge contributes nothing
    x = torch.randn(2, 4, 8, 8)
    cell.eval()
    with torch.no_grad():
        out = cell(x)
        expected = cell.edges["3<-0"](x) + cell.edges["3<-2"](cell.edges["2<-0"](x))
    torch.testing.assert_close(out, expected)


def test_nb201_all_none_cell_is_zero() -> None:
    g = NB201Genotype(("none",) * 6)
    net = NB201Network(g, C=4, N=1)
    x = torch.randn(2, 4, 8, 8)
    assert torch.count_nonzero(net.cells[0](x)) == 0


def test_drop_path_function() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 3, 2, 2, requires_grad=True)
    x_before = x.detach().clone()
    y = drop_path(x, 0.5)
    torch.testing.assert_close(x.detach(), x_before)  # never in place
    per_sample = (y.detach() / x_before).flatten(1)
    for row in per_sample:  # each sample is either dropped or rescaled by 1/keep, as a whole
        assert torch.allclose(row, torch.zeros_like(row)) or torch.allclose(row, torch.full_like(row, 2.0))
    assert 10 < int((per_sample[:, 0] == 0).sum()) < 54
    y.sum().backward()
    assert x.grad is not None
    assert drop_path(x, 0.0) is x
    assert torch.count_nonzero(drop_path(x, 1.0)) == 0
    with pytest.raises(ValueError, match="drop_path_prob"):
        drop_path(x, 1.5)


def test_drop_path_spares_identity_and_only_runs_in_training() -> None:
    torch.manual_seed(0)
    # DARTS_V2 normal cell: nodes 2, 3 use only convs; node 4 = sep_conv(1) + skip(0);
    # node 5 = skip(0) + dil_conv(2). With p = 1 every non-identity output is zeroed, so the
    # cell output must be exactly [0, 0, pre0(s0), pre0(s0)].
    cell = DartsCell(V2, 6, 6, 4, reduction=False, reduction_prev=False)
    s0, s1 = torch.randn(3, 6, 8, 8), torch.randn(3, 6, 8, 8)
    cell.train()
    out = cell(s0, s1, drop_prob=1.0)
    pre0 = cell.preprocess0(s0)
    zeros = torch.zeros_like(pre0)
    torch.testing.assert_close(out, torch.cat([zeros, zeros, pre0, pre0], dim=1))
    # eval mode ignores drop-path entirely
    cell.eval()
    with torch.no_grad():
        torch.testing.assert_close(cell(s0, s1, drop_prob=1.0), cell(s0, s1, drop_prob=0.0))


def test_network_drop_path_prob_is_read_each_forward() -> None:
    net = NetworkCIFAR(V2, C=4, layers=5, auxiliary=False)
    assert net.drop_path_prob == 0.0
    seen: list[float] = []
    net.cells[0].register_forward_pre_hook(lambda m, args: seen.append(args[2]))
    x = torch.randn(2, 3, 8, 8)
    net.eval()
    with torch.no_grad():
        ref = net(x)[0]
        net.drop_path_prob = 1.0
        torch.testing.assert_close(net(x)[0], ref)  # eval: prob 1 equals prob 0
    net.drop_path_prob = 0.7
    net.train()
    net(x)
    assert seen == [0.0, 1.0, 0.7]


def test_aux_head_handles_any_map_size() -> None:
    head = AuxiliaryHead(6, 3, pool_stride=3, second_bn=True)
    for side in (1, 2, 4, 8, 16):
        assert head(torch.randn(2, 6, side, side)).shape == (2, 3)


@pytest.mark.parametrize("name,target", [("DARTS_V2", 3.3e6), ("PC_DARTS_cifar", 3.6e6)])
def test_published_cifar_param_counts(name: str, target: float) -> None:
    with torch.device("meta"):  # shapes are all a parameter count needs; skips weight init
        net = NetworkCIFAR(PUBLISHED[name], C=36, layers=20, num_classes=10, auxiliary=True)
    n = count_params(net)
    assert abs(n - target) / target < 0.02, n
    assert count_params(net, exclude=()) > n  # the auxiliary head is excluded by default


def test_imagenet_mobile_size_and_macs() -> None:
    s = genotype_stats(V2, stem="imagenet", num_classes=1000)
    assert s["input_size"] == 224
    assert abs(s["params"] - 4.7) / 4.7 < 0.02
    assert 500 < s["macs"] < 600  # paper 574M; counting tools differ (quark0/darts#46)


def test_count_macs_formula_and_mode_restore() -> None:
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    assert count_macs(conv, (3, 9, 9)) == 8 * 5 * 5 * 3 * 3 * 3
    dw = nn.Conv2d(8, 8, 5, padding=4, dilation=2, groups=8, bias=False)
    assert count_macs(dw, (8, 6, 6)) == 8 * 6 * 6 * 1 * 5 * 5
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.BatchNorm1d(5), nn.Dropout())
    model.train()
    model[3].eval()
    assert count_macs(model, (3, 2, 2)) == 12 * 5
    assert model.training and model[1].training and not model[3].training


def test_genotype_stats_is_cached_and_keeps_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    s1 = genotype_stats(NB_WITH_NONE, C=4, layers=1, input_size=16)
    torch.testing.assert_close(torch.rand(3), expected)
    s2 = genotype_stats(NB_WITH_NONE, C=4, layers=1, input_size=16)
    assert s1 == s2 and s1["n_params"] > 0 and s1["n_macs"] > 0
    assert s1["params"] == s1["n_params"] / 1e6 and s1["macs"] == s1["n_macs"] / 1e6


def test_build_network_dispatch_and_errors() -> None:
    assert isinstance(build_network(V2, num_classes=10, C=4, layers=5), NetworkCIFAR)
    assert isinstance(build_network(V2, num_classes=10, C=8, layers=5, stem="imagenet"), NetworkImageNet)
    nb = build_network(NB_WITH_NONE, num_classes=10, C=4, layers=1)
    assert isinstance(nb, NB201Network) and nb.drop_path_prob == 0.0
    assert len(build_network(NB_WITH_NONE, num_classes=10).cells) == 17  # defaults N=5: 15 cells + 2 blocks
    with pytest.raises(ValueError, match="stem"):
        build_network(V2, num_classes=10, stem="mnist")
    with pytest.raises(ValueError, match="stem"):
        build_network(NB_WITH_NONE, num_classes=10, stem="imagenet")
    with pytest.raises(ValueError, match="C must be"):
        NetworkCIFAR(V2, C=0)
    with pytest.raises(TypeError, match="DartsGenotype"):
        NetworkCIFAR(NB_WITH_NONE)  # type: ignore[arg-type]


def _is_png(p: Path) -> bool:
    return p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_genotype_matplotlib(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from pcdarts.analysis.plot import plot_genotype

    paths = plot_genotype(V2, tmp_path / "v2", formats=("png", "svg"), backend="matplotlib")
    names = sorted(p.name for p in paths)
    assert names == ["v2_normal.png", "v2_normal.svg", "v2_reduce.png", "v2_reduce.svg"]
    for p in paths:
        assert (_is_png(p) if p.suffix == ".png" else "<svg" in p.read_text())
    nb = plot_genotype(NB_WITH_NONE, tmp_path / "sub" / "nb", backend="matplotlib")
    assert [p.name for p in nb] == ["nb_cell.png"] and _is_png(nb[0])
    with pytest.raises(ValueError, match="formats"):
        plot_genotype(V2, tmp_path / "x", formats=("jpg",))


def test_plot_genotype_dot_wiring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dot path, with a stand-in ``dot`` that checks its input and writes the -o file."""
    from pcdarts.analysis.plot import plot_genotype

    fake = tmp_path / "bin" / "dot"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nin=$(cat)\n'
                    'case "$in" in *digraph*max_pool_3x3*|*digraph*sep_conv_3x3*) ;; *) exit 3 ;; esac\n'
                    'echo "$1" > "$3"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    paths = plot_genotype(V2, tmp_path / "d", formats=("svg",), backend="dot")
    assert [p.read_text().strip() for p in paths] == ["-Tsvg", "-Tsvg"]


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz dot not installed")
def test_plot_genotype_real_dot(tmp_path: Path) -> None:
    from pcdarts.analysis.plot import plot_genotype

    paths = plot_genotype(V2, tmp_path / "v2", formats=("png", "svg"), backend="dot")
    assert all(p.stat().st_size > 0 for p in paths) and len(paths) == 4


def test_plot_arch_weights(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from pcdarts.analysis.plot import plot_arch_weights

    prims = ["none", "skip_connect", "sep_conv_3x3"]
    history = [{"epoch": e, "primitives": prims,
                "arch_weights": {"normal": [[0.5 - 0.1 * e, 0.25, 0.25 + 0.1 * e]] * 2,
                                 "reduce": [[1 / 3] * 3] * 2}} for e in range(4)]
    history.insert(0, {"epoch": -1})  # records without weights are skipped
    out = plot_arch_weights(history, tmp_path / "w.png")
    assert _is_png(out)
    with pytest.raises(ValueError, match="arch_weights"):
        plot_arch_weights([{"epoch": 0}], tmp_path / "none.png")


def test_info_and_plot_subcommands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    from pcdarts.cli.tools import add_plot_subcommand

    parser = argparse.ArgumentParser(prog="pcdarts")
    sub = parser.add_subparsers(dest="command")
    add_info_subcommand(sub)
    add_plot_subcommand(sub)
    args = parser.parse_args(["info", "DARTS_V2"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "3.349 M" in out and "multiply-adds" in out and "dil_conv_3x3(node 2)" in out
    args = parser.parse_args(["info", "NB201_best_cifar10", "--C", "4", "--layers", "1"])
    assert args.func(args) == 0
    args = parser.parse_args(["info", "no_such_cell"])
    assert report_user_errors(lambda: args.func(args)) == 2 and "published" in capsys.readouterr().err
    args = parser.parse_args(["plot", "PC_DARTS_cifar", "--out", str(tmp_path / "pc"), "--format", "svg",
                              "--backend", "matplotlib"])
    assert args.func(args) == 0
    assert (tmp_path / "pc_normal.svg").is_file() and (tmp_path / "pc_reduce.svg").is_file()
