"""Shared tiny fixtures: C=4 supernets with 3 cells on 8x8 inputs, quick configs, data paths.

``tests/`` mirrors the package (``tests/<subpackage>/test_<module>.py`` for
``pcdarts/<subpackage>/<module>.py``); every test folder is a package, so equal basenames do not
clash and test modules import these helpers as ``from tests.conftest import ...``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar-10-batches-py"
# the old spelling ``from conftest import ...`` (tests written before the move) keeps working
if str(REPO / "tests") not in sys.path:
    sys.path.append(str(REPO / "tests"))


def tiny_config(tmp_path: Path, **sections) -> dict:
    """A search config small enough for a test: digits, C=4, 3 cells, 2 epochs, 40 images."""
    d = {
        "method": {"name": "pc-darts", "warmup_epochs": 1, "k": 2},
        "space": {"name": "darts", "C": 4, "layers": 3},
        "data": {"dataset": "digits", "max_samples": 48, "train_portion": 0.5},
        "search": {"epochs": 2, "batch_size": 8, "lr": 0.05, "lr_min": 0.0},
        "run": {"seed": 0, "out": str(tmp_path / "run"), "progress": False, "plots": False},
    }
    for name, values in sections.items():
        if name == "method" and "name" in values:
            d["method"] = dict(values)
        else:
            d.setdefault(name, {}).update(values)
    return d


# what a tiny run needs beyond "no architecture warm-up" (for tests parametrised over METHODS)
TINY_METHOD_SETTINGS = {"is-darts": {"shrink_steps": 1, "shrink_interval": 1},
                        "rsws": {"num_samples": 2, "eval_batches": 1}, "random-lookup": {"num_samples": 2}}


def tiny_method(name: str) -> dict:
    """The method section of a tiny run of method ``name``: no architecture warm-up where the
    method has one, plus :data:`TINY_METHOD_SETTINGS`."""
    import dataclasses

    from pcdarts.registry import METHODS
    fields = {f.name for f in dataclasses.fields(METHODS.get(name).Config)}
    return {"name": name, **({"warmup_epochs": 0} if "warmup_epochs" in fields else {}),
            **TINY_METHOD_SETTINGS.get(name, {})}


@pytest.fixture
def tiny(tmp_path):
    return lambda **sections: tiny_config(tmp_path, **sections)


def _full_and_resumed(base: dict, stop_after_steps: int):
    """(uninterrupted search, the same search stopped after ``stop_after_steps`` and resumed),
    in sibling run directories; the caller compares them."""
    import pcdarts
    base = dict(base, run=dict(base["run"], out=base["run"]["out"] + "-full"))
    full = pcdarts.search(base)
    part = dict(base, run=dict(base["run"], out=base["run"]["out"] + "-part"))
    first = pcdarts.search(part, stop_after_steps=stop_after_steps)
    assert first.interrupted
    resumed = pcdarts.search(resume=first.run_dir)
    assert resumed.history[-1]["arch_weights"] == full.history[-1]["arch_weights"]
    assert resumed.genotype == full.genotype
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    return full, resumed


@pytest.fixture
def full_and_resumed():
    """``full_and_resumed(config dict, stop_after_steps) -> (full, resumed)`` search results whose
    final architecture weights, genotype and losses are already checked equal."""
    return _full_and_resumed


@pytest.fixture(autouse=True)
def _cpu_threads():
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    yield


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False on this machine)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


def assert_fast_equals_reference_steps(tiny, method: dict, space: str, steps: int = 1) -> None:
    """``steps`` whole Searcher steps of ``method`` on ``space`` with the reference and with the
    fast path from the same seed: the weights and architecture parameters agree afterwards."""
    from pcdarts.search.config import build_config
    from pcdarts.search.searcher import Searcher, new_run_dir

    states = []
    for impl in ("reference", "fast"):
        layers = 3 if space == "darts" else 1
        cfg = build_config(tiny(method=method, space={"name": space, "layers": layers, "impl": impl},
                                run={"out": str(tiny()["run"]["out"]) + impl}))
        s = Searcher(cfg, new_run_dir(cfg))
        for _ in range(steps):
            s.search_step(arch_active=True, ctx=s.context())
        states.append([p.detach().clone() for p in s.weight_params]
                      + [p.detach().clone() for p in s.method.arch_parameters()])
    assert type(s.supernet).__name__.startswith("Fast")
    for a, b in zip(*states):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


# the command line on a tiny search / training run (tests that drive ``pcdarts`` through ``main``)
CLI_TINY = ["--space.C", "4", "--space.layers", "3", "--data.max_samples", "48", "--search.epochs", "2",
            "--search.batch_size", "8", "--method.warmup_epochs", "1", "--method.k", "2", "--no-progress",
            "--run.plots", "false"]
CLI_TINY_TRAIN = ["--no-progress", "--train.epochs", "2", "--model.C", "4", "--model.layers", "3",
                  "--train.batch_size", "16", "--data.max_samples", "48", "--data.max_test_samples", "32"]
# the same on one CPU thread (runs that subprocesses or kills repeat exactly)
CLI_TINY_CPU1 = [*CLI_TINY, "--run.threads", "1", "--run.device", "cpu"]
CLI_TINY_TRAIN_CPU1 = ["--no-progress", "--train.epochs", "1", "--model.C", "4", "--model.layers", "3",
                       "--train.batch_size", "16", "--data.max_samples", "32", "--data.max_test_samples", "16",
                       "--run.threads", "1", "--run.device", "cpu"]


def run_cli(args, capsys):
    """``pcdarts ARGS`` in this process: (exit status, stdout, stderr)."""
    from pcdarts.cli import main
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str) -> str:
    """The one ``error:`` line a user-fixable failure prints (warnings aside), without a traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]
