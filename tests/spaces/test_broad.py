"""The broad space (B-DARTS, ALGORITHMS §10) and the architecture learning-rate schedule.

The BCNN supernet's topology and channel bookkeeping against the official code's numbers,
forward/backward on both paths (fast == reference in float64), the BroadGenotype round
trip through JSON, text, ``pcdarts train``, ``show``, ``info`` and ``plot``, every
``arch_lr_schedule`` against hand-computed factors, and an exact mid-epoch resume of a
broad search under the confident learning rate. Tiny sizes: C=4..8, 8x8 or 16x16 inputs.
"""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

import pcdarts
from pcdarts.cli import main
from pcdarts.config import SpaceConfig, build_config, load_preset
from pcdarts.errors import ConfigError
from pcdarts.genotype import (BroadGenotype, DartsGenotype, GenotypeError, genotype_from_dict, load_genotype,
                              parse_genotype, save_genotype)
from pcdarts.methods import DartsConfig
from pcdarts.methods.darts import arch_lr_factor
from pcdarts.nn.edges import Mixing
from pcdarts.nn.networks import build_network
from pcdarts.registry import METHODS
from pcdarts.spaces import get_space
from pcdarts.nn.broad import BroadNetwork
from pcdarts.spaces.broad import BroadSupernet, FastBroadSupernet
from pcdarts.train.config import build_train_config, load_train_preset
from pcdarts.train.trainer import train
from tests.nn.fast.test_cells import _compare, _x

SPACE = get_space("broad")


def _mixing(seed: int = 0, dtype: torch.dtype = torch.float32) -> Mixing:
    g = torch.Generator().manual_seed(seed)
    return Mixing(ops={ct: torch.softmax(torch.randn(14, 8, generator=g, dtype=dtype), -1).requires_grad_()
                       for ct in SPACE.cell_types})


# ---------------------------------------------------------------- topology

def test_supernet_topology_matches_the_official_bookkeeping():
    # official search net (C=16, 2 blocks of one broad cell, 1 enhancement cell): the
    # classifier reads C + 2C (embedded broad-cell inputs) + 4 * 4C (the enhancement output)
    net = SPACE.build_supernet(SpaceConfig(name="broad", impl="reference"), k=1, num_classes=10, in_channels=3)
    assert [(c.reduction, net.cell_type(c)) for c in net.cells] == [(True, "normal"), (True, "normal"),
                                                                    (False, "reduce")]
    assert net.classifier.in_features == 19 * 16
    assert [len(m) - 1 for m in net.gap_embed] == [2, 1]  # FactorizedReduces to the final resolution
    assert [len(m) - 1 for m in net.en_embed] == [1, 0]
    # deep cells: 2 blocks of (1 normal + 1 reduction), 2 enhancement cells
    net = BroadSupernet(C=8, layers=2, cells_per_block=1, enhancement_cells=2)
    assert [c.reduction for c in net.cells] == [False, True, False, True, False, False]
    assert [net.cell_type(c) for c in net.cells] == ["normal"] * 4 + ["reduce"] * 2
    assert net.classifier.in_features == 8 + 16 + 32 + 4 * 32
    # the official evaluation network: C=48, 6 convolution cells, 2 enhancement cells
    g = BroadGenotype.of(load_genotype("DARTS_V2"))
    ev = build_network(g, num_classes=10)
    assert isinstance(ev, BroadNetwork) and len(ev.cells) == 8
    assert [c.reduction for c in ev.cells] == [False, False, True, False, False, True, False, False]
    assert ev.classifier.in_features == 48 + 96 + 192 + 4 * 192


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_forward_backward_reaches_every_weight_and_both_cell_types(impl):
    torch.manual_seed(0)
    scfg = SpaceConfig(name="broad", C=4, layers=2, cells_per_block=1, enhancement_cells=2, impl=impl)
    net = SPACE.build_supernet(scfg, k=2, num_classes=5, in_channels=1)
    assert isinstance(net, FastBroadSupernet) == (impl == "fast")
    mix = _mixing()
    x = torch.randn(3, 1, 16, 16)
    out = net(x, mix)
    assert out.shape == (3, 5)
    feats = net.forward_features(x, mix)
    assert [f.shape[-1] for f in feats] == [16, 8, 8, 4, 4, 4]  # normal, reduce, normal, reduce, 2 enhancement
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert all(w.grad.abs().sum() > 0 for w in mix.ops.values())


@pytest.mark.parametrize("k,mode,cells_per_block,layers,aux", [
    (1, "first+shuffle", 0, 1, None), (2, "first+shuffle", 1, 2, None), (2, "random", 0, 1, 0.7),
    (4, "first+shift", 0, 2, None)])
def test_fast_equals_reference_in_float64(k, mode, cells_per_block, layers, aux):
    torch.manual_seed(0)
    kw = dict(C=8, layers=layers, cells_per_block=cells_per_block, enhancement_cells=2, k=k, channel_mode=mode,
              aux_skip=aux is not None)
    ref, fast = BroadSupernet(**kw).double(), FastBroadSupernet(**kw).double()
    fast.load_state_dict(ref.state_dict())
    # logits, arch gradients, weight gradients and BN running statistics (the broad space's
    # arch tensors have the DARTS shapes and node groups, so the DARTS helpers apply)
    _compare("darts", ref, fast, _x(), edge_weights=True, aux=aux)
    outs = []
    for net in (ref.eval(), fast.eval()):  # and in eval mode, on the running statistics
        torch.manual_seed(7)  # random channel mode: the same draws on both paths
        with torch.no_grad():
            outs.append(net(_x(), _mixing(dtype=torch.float64)))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-7, atol=1e-9)


def test_build_errors_are_named():
    with pytest.raises(ConfigError, match="cifar stem only"):
        SPACE.build_supernet(SpaceConfig(name="broad", stem="imagenet"), k=1, num_classes=10, in_channels=3)
    with pytest.raises(ConfigError, match="must be even"):
        SPACE.build_supernet(SpaceConfig(name="broad", C=5), k=1, num_classes=10, in_channels=3)
    g = BroadGenotype.of(load_genotype("DARTS_V2"))
    with pytest.raises(ValueError, match="multiple of 2"):
        build_network(g, num_classes=10, layers=5)


# ---------------------------------------------------------------- genotype

def test_broad_genotype_text_and_json_round_trip(tmp_path):
    g = BroadGenotype.of(load_genotype("DARTS_V2"))
    assert str(g).startswith("BroadGenotype(normal=[")
    assert parse_genotype(str(g)) == g and load_genotype(str(g)) == g
    assert g.to_dict()["space"] == "broad" and genotype_from_dict(g.to_dict()) == g
    save_genotype(g, tmp_path / "genotype.json")
    assert load_genotype(tmp_path / "genotype.json") == g
    assert json.loads((tmp_path / "genotype.json").read_text())["space"] == "broad"
    # the same cells as a DARTS genotype are another network
    d = load_genotype("DARTS_V2")
    assert isinstance(d, DartsGenotype) and d != g and type(parse_genotype(str(d))) is DartsGenotype
    with pytest.raises(GenotypeError, match="'broad'"):
        genotype_from_dict({**g.to_dict(), "space": "nope"})


# ---------------------------------------------------------------- arch lr schedule

@pytest.mark.parametrize("schedule,factors", [
    ("constant", [1.0, 1.0, 1.0, 1.0]),
    ("linear", [0.25, 0.5, 0.75, 1.0]),
    ("power(2)", [1 / 16, 4 / 16, 9 / 16, 1.0]),          # ((e + 1) / E)^2, the official CLR
    ("power(0.5)", [0.5, math.sqrt(0.5), math.sqrt(0.75), 1.0]),
    ("cosine-increasing", [(1 - math.cos(math.pi * t)) / 2 for t in (0.25, 0.5, 0.75, 1.0)]),
])
def test_arch_lr_factor_by_hand(schedule, factors):
    assert [arch_lr_factor(schedule, e, 4) for e in range(4)] == pytest.approx(factors, rel=1e-12)
    # every method with architecture parameters (Darts and its subclasses) sets it per epoch
    for name in ("darts", "pc-darts", "drnas", "darts-minus"):
        m = METHODS.get(name)(METHODS.get(name).Config(arch_lr_schedule=schedule), SPACE, SpaceConfig(name="broad"))
        for e in range(4):
            m.on_epoch_start(e, SimpleNamespace(epochs=4, epoch=e))
            assert m.optimizer.param_groups[0]["lr"] == pytest.approx(m.cfg.arch_lr * factors[e], rel=1e-12), name


@pytest.mark.parametrize("bad", ["power", "power(0)", "power(-1)", "power(two)", "cosine", ""])
def test_bad_arch_lr_schedule_is_one_named_line(bad):
    with pytest.raises(ConfigError, match=r"method\.arch_lr_schedule must be") as e:
        DartsConfig(arch_lr_schedule=bad)
    assert "\n" not in str(e.value)


def test_presets():
    cfg = build_config(load_preset("b-darts_cifar10"))
    assert (cfg.method_name, cfg.method.order, cfg.method.arch_lr_schedule, cfg.method.arch_lr) == (
        "darts", 1, "power(2)", 3e-4)
    assert (cfg.space.name, cfg.space.C, cfg.space.layers, cfg.space.cells_per_block,
            cfg.space.enhancement_cells) == ("broad", 16, 2, 0, 1)
    assert (cfg.search.epochs, cfg.search.batch_size, cfg.search.lr, cfg.search.lr_min) == (50, 256, 0.1, 0.0)
    tcfg = build_train_config(load_train_preset("b-darts_cifar10"))
    assert (tcfg.model.C, tcfg.model.layers, tcfg.model.auxiliary, tcfg.model.drop_path_prob) == (48, 6, False, 0.3)


# ---------------------------------------------------------------- search, resume, train, show, plot

def _broad_search(tiny, **run):
    return tiny(method={"name": "darts", "arch_lr_schedule": "power(2)", "arch_lr": 0.05},
                space={"name": "broad", "C": 4, "layers": 1}, search={"epochs": 2}, run=run)


def test_broad_search_resumes_mid_epoch_exactly(tiny):
    full = pcdarts.search(_broad_search(tiny, out=tiny()["run"]["out"] + "-full"))
    # the confident learning rate: 0.05 * ((e + 1) / 2)^2 per epoch, kept in the history
    assert [r["arch_lr"] for r in full.history] == pytest.approx([0.05 / 4, 0.05])
    assert isinstance(full.genotype, BroadGenotype)
    part_cfg = _broad_search(tiny, out=tiny()["run"]["out"] + "-part")
    first = pcdarts.search(part_cfg, stop_after_steps=2)  # 3 steps per epoch: stops mid-epoch 0
    assert first.interrupted
    ck = torch.load(first.run_dir / "checkpoint.pt", weights_only=True)
    # the epoch's lr is in the optimiser state (set at the epoch start only, not again on resume)
    assert (ck["epoch"], ck["step"]) == (0, 2)
    assert ck["method"]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05 / 4)
    resumed = pcdarts.search(resume=first.run_dir)
    assert resumed.history[-1]["arch_weights"] == full.history[-1]["arch_weights"]
    assert [r["arch_lr"] for r in resumed.history] == [r["arch_lr"] for r in full.history]
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    assert resumed.genotype == full.genotype
    a = torch.load(full.run_dir / "checkpoint.pt", weights_only=True)
    b = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=True)
    for k, v in a["supernet"].items():
        assert torch.equal(v, b["supernet"][k]), k


def test_broad_genotype_goes_through_train_show_info_and_plot(tiny, tmp_path, capsys):
    cfg = tiny(method={"name": "pc-darts", "warmup_epochs": 0, "k": 2}, space={"name": "broad", "C": 4, "layers": 2},
               search={"epochs": 1})
    res = pcdarts.search(cfg)
    g_file = res.run_dir / "genotype.json"
    g = load_genotype(g_file)
    assert isinstance(g, BroadGenotype) and g == res.genotype
    assert "B-DARTS broad network C=48" in res.history[-1]["genotype_network"]
    # train one tiny epoch: the broad evaluation network, model.layers = convolution cells
    tr = train(str(g_file), {"data": {"dataset": "digits", "max_samples": 32, "max_test_samples": 16},
                             "model": {"C": 4, "layers": 2, "drop_path_prob": 0.2},
                             "train": {"epochs": 1, "batch_size": 16, "lr": 0.05},
                             "run": {"out": str(tmp_path / "train"), "progress": False, "device": "cpu"}})
    assert tr.metrics["final_test_top1"] is not None and tr.metrics["genotype"].startswith("BroadGenotype(")
    assert load_genotype(tr.run_dir) == g
    ck = torch.load(tr.run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("en_out.") for k in ck["model"])
    capsys.readouterr()
    assert main(["show", str(g_file)]) == 0
    out = capsys.readouterr().out
    assert "enhancement cell (reduce):" in out and "B-DARTS broad network" in out
    assert main(["info", str(g_file), "--C", "8", "--layers", "2", "--input-size", "16"]) == 0
    assert "space: broad" in capsys.readouterr().out
    assert main(["plot", str(g_file), "--out", str(tmp_path / "cell"), "--backend", "matplotlib"]) == 0
    assert (tmp_path / "cell_normal.png").is_file() and (tmp_path / "cell_reduce.png").is_file()
