"""Tests for pcdarts.runs: checkpoints that load with ``torch.load(weights_only=True)``.

A run directory someone shared must not run code when pcdarts reads it: every checkpoint the
package writes loads weights-only, a checkpoint whose pickle needs more (a crafted payload, or
an older pcdarts's format) is refused in one line naming ``--trust-checkpoint``, and with that
flag a legitimate old-format checkpoint still resumes exactly.
"""
from __future__ import annotations

import hashlib
import io
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.serialization import get_unsafe_globals_in_checkpoint

import pcdarts
from pcdarts import runs, utils
from pcdarts.cli import main
from pcdarts.config import build_config
from pcdarts.registry import METHODS
from pcdarts.search.searcher import Searcher, new_run_dir
from pcdarts.train.trainer import train

from tests.conftest import tiny_config, tiny_method

TRAIN_TINY = {
    "data": {"dataset": "digits", "max_samples": 32, "max_test_samples": 16},
    "model": {"C": 4, "layers": 3},
    "train": {"epochs": 1, "batch_size": 16, "lr": 0.05},
    "run": {"seed": 0, "progress": False, "device": "cpu"},
}


class Payload:
    """Unpickling this creates ``marker`` (stands for any code an attacker would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def weights_only(path: Path) -> dict:
    assert get_unsafe_globals_in_checkpoint(path) == []
    return torch.load(path, map_location="cpu", weights_only=True)


def old_format(path: Path, kind: str) -> None:
    """Rewrite a checkpoint as pcdarts wrote it before version 2: numpy's RNG state pickled raw."""
    ck = runs.load_checkpoint(path, kind, "test")
    assert isinstance(ck["rng"]["numpy"][1], np.ndarray)
    torch.save(dict(ck, version=1), path)
    assert "numpy.ndarray" in get_unsafe_globals_in_checkpoint(path)


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    """A tiny search stopped in its second (last) epoch: checkpoint.pt and checkpoint.prev.pt."""
    res = pcdarts.search(tiny_config(tmp_path_factory.mktemp("search")), stop_after_steps=4)
    assert res.interrupted
    return res.run_dir


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    """A tiny training run stopped after 1 of its 2 steps."""
    cfg = dict(TRAIN_TINY, run=dict(TRAIN_TINY["run"], out=str(tmp_path_factory.mktemp("train") / "run")))
    res = train("DARTS_V2", cfg, stop_after_steps=1)
    assert res.interrupted
    return res.run_dir


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- encoding

def test_rng_state_survives_a_weights_only_round_trip():
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    state = utils.rng_state()
    expected = (random.random(), np.random.rand(3), torch.rand(3))
    buf = io.BytesIO()
    torch.save(runs.encode_state(state), buf)
    buf.seek(0)
    utils.set_rng_state(runs.decode_state(torch.load(buf, weights_only=True)))
    got = (random.random(), np.random.rand(3), torch.rand(3))
    assert got[0] == expected[0] and np.array_equal(got[1], expected[1]) and torch.equal(got[2], expected[2])


def test_encoding_keeps_plain_state_as_it_is_and_refuses_the_unknown(tmp_path):
    sd = torch.nn.BatchNorm2d(2).state_dict()
    assert runs.encode_state(sd) is sd  # untouched, with its _metadata (module versions)
    mixed = {"a": sd, "n": np.int64(3), "x": np.arange(3, dtype=np.uint32)}
    enc = runs.encode_state(mixed)
    assert enc["a"] is sd and enc["n"] == 3 and type(enc["n"]) is int
    dec = runs.decode_state(enc)
    assert dec["x"].dtype == np.uint32 and np.array_equal(dec["x"], mixed["x"])

    class Opaque:
        pass
    with pytest.raises(TypeError, match=r"checkpoint\['method'\]\['thing'\] holds a .*Opaque"):
        runs.save_checkpoint({"method": {"thing": Opaque()}}, tmp_path / runs.CHECKPOINT)
    assert not list(tmp_path.iterdir())  # nothing written


# ---------------------------------------------------------------- what the package writes

def test_search_and_training_checkpoints_load_weights_only(search_run, train_run):
    for run, kind in ((search_run, "search"), (train_run, "train")):
        for name in (runs.CHECKPOINT, runs.PREVIOUS):
            if (run / name).is_file():
                ck = weights_only(run / name)
                assert ck["version"] == runs.CHECKPOINT_VERSION and ck["format"] == runs.FORMATS[kind]
    assert (search_run / runs.PREVIOUS).is_file()


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_state_loads_weights_only(tmp_path, method):
    cfg = build_config(tiny_config(tmp_path, method=tiny_method(method), space={"name": "nb201", "layers": 1}))
    s = Searcher(cfg, new_run_dir(cfg))
    s.search_step(arch_active=s.method.is_arch_active(0), ctx=s.context())
    path = s.rundir.open() / runs.CHECKPOINT
    runs.save_checkpoint(s.state_dict(), path)
    weights_only(path)
    s._load_checkpoint(runs.load_checkpoint(path, "search", "test"))  # and it restores


# ---------------------------------------------------------------- a crafted checkpoint runs nothing

@pytest.mark.parametrize("command", [
    ["search", "--resume", "{run}"],
    ["derive", "{run}"],
    ["ws-analysis", "--edge-check", "{run}", "--no-progress", "--out", "{tmp}/ws"],
    ["train", "--resume", "{run}"],
    ["eval", "{run}"],
])
def test_a_malicious_checkpoint_is_refused_and_runs_nothing(search_run, train_run, tmp_path, capsys, command):
    src, fmt = (train_run, "pcdarts-train") if command[0] in ("train", "eval") else (search_run, "pcdarts-search")
    run = _copy(src, tmp_path / "run")
    marker = tmp_path / "pwned"
    torch.save({"format": fmt, "version": 2, "config": {}, "payload": Payload(marker)}, run / runs.CHECKPOINT)
    assert "io.open" in get_unsafe_globals_in_checkpoint(run / runs.CHECKPOINT)
    before = digest(run)
    code = main([a.format(run=run, tmp=tmp_path) for a in command])
    line = one_line_error(capsys.readouterr().err)
    assert code == 2 and "--trust-checkpoint" in line and "io.open" in line and str(run / runs.CHECKPOINT) in line
    assert not marker.exists()
    assert digest(run) == before and not (tmp_path / "ws").exists()


def test_trust_checkpoint_needs_resume(capsys):
    assert main(["search", "--trust-checkpoint"]) == 2
    assert "--trust-checkpoint only applies to --resume" in one_line_error(capsys.readouterr().err)


# ---------------------------------------------------------------- an older pcdarts's checkpoint

@pytest.mark.slow
def test_an_old_format_search_checkpoint_resumes_exactly_with_trust(search_run, tmp_path, capsys):
    new = _copy(search_run, tmp_path / "new")
    old = _copy(search_run, tmp_path / "old")
    old_format(old / runs.CHECKPOINT, "search")
    before = digest(old)
    for command in (["search", "--resume", old], ["derive", old]):
        assert main([str(a) for a in command]) == 2
        line = one_line_error(capsys.readouterr().err)
        assert "--trust-checkpoint" in line and "numpy" in line and "older pcdarts" in line
    assert digest(old) == before
    assert main(["derive", str(old), "--trust-checkpoint"]) == 0
    a = pcdarts.search(resume=new)
    b = pcdarts.search(resume=old, trust_checkpoint=True)
    assert a.genotype == b.genotype and a.history[-1]["arch_weights"] == b.history[-1]["arch_weights"]
    ka, kb = weights_only(new / runs.CHECKPOINT), weights_only(old / runs.CHECKPOINT)  # rewritten safe
    for k, v in ka["supernet"].items():
        assert torch.equal(v, kb["supernet"][k]), k


def test_an_old_format_training_checkpoint_evaluates_with_trust(train_run, tmp_path, capsys):
    old = _copy(train_run, tmp_path / "old")
    old_format(old / runs.CHECKPOINT, "train")
    for command in (["eval", old], ["train", "--resume", old]):
        assert main([str(a) for a in command]) == 2
        assert "--trust-checkpoint" in one_line_error(capsys.readouterr().err)
    assert main(["eval", str(old), "--trust-checkpoint"]) == 0
    assert "top-1" in capsys.readouterr().out
    assert main(["train", "--resume", str(old), "--trust-checkpoint", "--no-progress"]) == 0
    weights_only(old / runs.CHECKPOINT)
