"""The Searcher (:mod:`pcdarts.search.searcher`) end to end: the main job's summary and pictures, its
architecture weights moving, what it refuses before a run directory exists, no host sync on CUDA."""
from __future__ import annotations

import importlib

import pytest
import torch

from pcdarts.cli import main
from pcdarts.config import build_config
from pcdarts.search.searcher import search
from tests.conftest import CLI_TINY, run_cli

search_mod = importlib.import_module("pcdarts.search.searcher")  # the package exports a function of that name


def test_search_with_pictures_runs_clean_and_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "r"
    code, stdout, err = run_cli(["search", "--out", out, *CLI_TINY[:-2]], capsys)
    assert code == 0 and "could not draw" not in err and "warning" not in err, err
    assert (out / "arch_weights.png").is_file() and (out / "genotype_normal.png").is_file()
    assert "arch weights:  mean entropy" in stdout and "of uniform (1.00 = not moved)" in stdout
    assert f"next:          pcdarts train {out / 'genotype.json'} --preset short" in stdout
    assert "cell size:" in stdout and "M parameters" in stdout


@pytest.mark.slow
def test_default_search_moves_the_architecture_weights(tmp_path):
    """The main job (the quick preset) must end clearly away from uniform weights, with a
    convolution-heavy normal cell (the old preset's pool-dominated one read as collapse)."""
    from pcdarts.analysis.stats import arch_weight_summary
    res = search({"run": {"out": str(tmp_path / "q"), "progress": False, "plots": False, "threads": 1}})
    moved = arch_weight_summary(res.history[-1]["arch_weights"])
    assert moved["entropy"] < 0.95 and moved["max"] > 2 * moved["uniform"], moved  # 1.00 and 0.127 before
    convs = [op for op, _ in res.genotype.normal if "conv" in op]
    assert len(convs) >= 5, res.genotype  # 6-7 of 8 for seeds 0-2


@pytest.mark.gpu
def test_search_steps_make_no_host_sync_on_cuda(tmp_path):
    """The divergence watch (and the whole step) must not sync the host with the GPU per step:
    CUDA's sync debug mode turns any synchronising call inside the steps into an error."""
    from tests.conftest import tiny_config
    cfg = build_config(tiny_config(tmp_path, run={"device": "cuda"}, method={"name": "pc-darts",
                                                                               "warmup_epochs": 0, "k": 2},
                                   search={"log_every": 1000}))
    s = search_mod.Searcher(cfg, tmp_path / "r")
    ctx = s.context()
    s.search_step(True, ctx)  # warm-up: first-call allocations and lazy initialisation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(2, 5):
            s.search_step(True, ctx)
            assert not s.watch.due(step)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert s.watch.first_bad() is None


# moved from the issue-12 grab-bag (crash safety, bad input, TensorBoard)

@pytest.mark.parametrize("args,named", [
    (["--space.layers", "2"], "space.layers=2 builds a DARTS supernet without a normal cell"),
    (["--space.layers", "3", "--data.max_samples", "40"], "search.batch_size=64 is larger than the 20 images"),
    (["--space.layers", "3", "--data.max_samples", "200", "--search.arch_batch_size", "128"],
     "search.arch_batch_size=128 is larger than the 100 images"),
])
def test_a_supernet_or_batch_that_cannot_train_is_refused_before_the_run_directory(tmp_path, capsys, args, named):
    """Too few cells for a normal cell (its weights got no gradient: a traceback before), or a
    batch larger than its split (the loader's internal message before): one line, no folder."""
    code = main(["search", "--space.C", "4", "--search.epochs", "1", "--method.warmup_epochs", "0",
                 "--no-progress", "--out", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert code == 2 and named in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()
