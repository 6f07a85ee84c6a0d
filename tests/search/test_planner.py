"""The memory planner: estimate vs a measured step, suggestion logic, CLI handler."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pcdarts.cli.tools import add_plan_subcommand
from pcdarts.search import planner
from pcdarts.search.planner import PlanResult, plan

REPO = Path(__file__).resolve().parents[2]

# a small DARTS/NB201 search step: quick to measure at full batch in a subprocess
SMALL = dict(C=8, input_size=16, in_channels=3, num_classes=10, k=2)

_MEASURE = r"""
import json, sys, torch
torch.set_num_threads(1)
from pcdarts.search.planner import _Step
space, impl, layers, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
step = _Step(space, "pc-darts", 8, layers, 2, 16, 3, 10, impl, "first+shuffle")
step.run(batch)  # warm-up: optimiser states exist, as in the middle of a search
peak = step.peak_above_state_mib(batch)
print(json.dumps({"tensor_mib": sum(step.state_mib().values()) + peak}))
"""


def _measured_tensor_peak(space: str, impl: str, layers: int, batch: int) -> float:
    """Tensor peak of one real search step at full batch, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, space, impl, str(layers), str(batch)], cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])["tensor_mib"]


CASES = [("darts", "fast", 5), ("darts", "reference", 5), ("nb201", "fast", 2)]
BATCH = 24


@pytest.fixture(scope="module")
def estimates():
    # each plan measures in its own one-thread subprocess: two at a time on two cores
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=2) as pool:
        plans = pool.map(lambda case: plan(case[0], "pc-darts", BATCH, layers=case[2], impl=case[1], **SMALL), CASES)
        return dict(zip(CASES, plans))


@pytest.mark.parametrize("case", CASES)
def test_estimate_within_25_percent_of_measured_step(case, estimates):
    space, impl, layers = case
    est = estimates[case]
    measured = _measured_tensor_peak(space, impl, layers, BATCH)
    assert abs(est.tensor_mib - measured) <= 0.25 * measured, (est.tensor_mib, measured)
    assert est.peak_mib >= est.tensor_mib
    assert set(est.breakdown) == {"params", "buffers", "grads", "optimizer", "arch", "data", "activations", "runtime"}
    assert est.per_sample_mib > 0


def _benchmark_peak_rss(space: str, impl: str, layers: int, batch: int) -> float:
    """Peak RSS of real search steps (the Searcher, synthetic data) in a fresh process, as
    ``benchmarks/search_step.py`` measures it."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "search_step.py"), "--space", space, "--C", "8", "--cells",
           str(layers), "--k", "2", "--batch", str(batch), "--input-size", "16", "--threads", "1",
           "--child", impl, "--child-steps", "2", "--warmup", "1"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


@pytest.mark.parametrize("case", [("darts", "fast", 5), ("darts", "reference", 5)])
def test_cpu_headline_within_25_percent_of_benchmark_peak_rss(case, estimates):
    """The CPU headline is a peak RSS: compare it with what the benchmark measures."""
    space, impl, layers = case
    est = estimates[case]
    measured = _benchmark_peak_rss(space, impl, layers, BATCH)
    assert abs(est.peak_mib - measured) <= 0.25 * measured, (est.peak_mib, measured)
    assert est.rss_per_sample_mib >= est.per_sample_mib  # the heap holds at least the tensors
    assert est.breakdown["runtime"] == pytest.approx(est.peak_mib - est.tensor_mib)


def test_fast_path_plans_far_less_memory_than_reference(estimates):
    fast, ref = estimates[("darts", "fast", 5)], estimates[("darts", "reference", 5)]
    assert fast.breakdown["activations"] < 0.5 * ref.breakdown["activations"]


def _fake_measure(space, method, C, layers, k, input_size, in_channels, num_classes, impl, amp, channel_mode, rss,
                  objective="cross-entropy"):
    """Deterministic stand-in: 10 MiB of state, activations 2 + batch * 8 / k MiB, peak RSS
    112 + batch * 8 / k (100 MiB of process and heap beyond the tensors)."""
    state = {"params": 4.0, "buffers": 1.0, "grads": 4.0, "optimizer": 1.0, "arch": 0.0}
    return planner._Measured(state, 2.0, 8.0 / k, rss_fixed=112.0, rss_per=8.0 / k)


def test_suggestions(monkeypatch):
    monkeypatch.setattr(planner, "_measure", _fake_measure)
    r = plan("darts", "pc-darts", batch=64, C=16, k=1, budget_mib=400.0)
    # peak RSS = 112 + 64 * 8 = 624 > 400; tensors 10 state + 2 + 64 * 8 = 524
    assert r.peak_mib == pytest.approx(624.0) and r.tensor_mib == pytest.approx(524.0)
    assert r.breakdown["runtime"] == pytest.approx(100.0)
    assert r.fits is False
    assert r.suggest_batch == 36  # 112 + 36 * 8 = 400
    assert r.suggest_k == 2  # 112 + 64 * 4 = 368 <= 400; K=1 does not fit
    r = plan("darts", "pc-darts", batch=8, C=16, k=1, budget_mib=400.0)
    assert r.fits is True and r.suggest_k == 1
    r = plan("darts", "pc-darts", batch=8, C=16, k=1, budget_mib=50.0)
    assert r.fits is False and r.suggest_batch == 0 and r.suggest_k is None
    assert "budget 50 MiB: does NOT fit" in r.summary()


def test_cuda_plan_has_no_runtime_and_uses_bf16(monkeypatch):
    seen = {}

    def fake(*args):
        seen["amp"] = args[9]
        return _fake_measure(*args)

    monkeypatch.setattr(planner, "_measure", fake)
    r = plan("darts", "pc-darts", batch=256, device="cuda", k=4)
    assert r.breakdown["runtime"] == 0.0 and r.amp and seen["amp"] is True
    assert r.tensor_mib == pytest.approx(10 + 2 + 256 * 2)
    r = plan("darts", "pc-darts", batch=256, device="cuda", k=4, amp=False)
    assert not r.amp and seen["amp"] is False


def test_cli_handler(monkeypatch, capsys):
    monkeypatch.setattr(planner, "_measure", _fake_measure)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_plan_subcommand(sub)
    args = parser.parse_args(["plan", "--space", "darts", "--method", "pc-darts", "--batch", "256", "--device", "cuda"])
    assert args.func(args) == 0
    assert "estimated peak" in capsys.readouterr().out
    args = parser.parse_args(["plan", "--batch", "64", "--k", "1", "--device", "cuda", "--budget-mib", "100",
                              "--json"])
    assert args.func(args) == 1  # does not fit
    d = json.loads(capsys.readouterr().out)
    assert d["fits"] is False and d["suggest_batch"] == 11 and isinstance(PlanResult(**d), PlanResult)


def test_the_planner_counts_the_objectives_decoder_and_a_multi_level_methods_models():
    """`pcdarts plan --objective mae` plans the decoder (weights, grads, momenta); a method
    that owns its step runs its own step, and its extra models count as its state."""
    import torch
    from pcdarts.search.planner import _Step
    torch.manual_seed(0)
    ce = _Step("nb201", "pc-darts", 8, 1, 2, 16, 3, 10, "fast", "first+shuffle")
    mae = _Step("nb201", "pc-darts", 8, 1, 2, 16, 3, 10, "fast", "first+shuffle", objective="mae")
    decoder = sum(p.numel() for p in mae.objective.parameters()) * 4 / 2**20
    assert decoder > 0
    for step in (ce, mae):
        step.run(4)
    assert mae.state_mib()["params"] == pytest.approx(ce.state_mib()["params"] + decoder)
    assert mae.state_mib()["grads"] > ce.state_mib()["grads"]
    lbt = _Step("nb201", "lbt", 8, 1, 1, 16, 3, 10, "fast", "first+shuffle")
    before = {k: v.clone() for k, v in lbt.method.models.state_dict().items()}
    lbt.run(4)  # the method's own step: the student is trained too
    assert any(not torch.equal(before[k], v) for k, v in lbt.method.models.state_dict().items())
    student = sum(p.numel() for p in lbt.method.models.parameters()) * 4 / 2**20
    assert lbt.state_mib()["arch"] >= student
