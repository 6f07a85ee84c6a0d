"""Tests for pcdarts.runs: run directories (overwrite without loss, run kinds), checkpoints (atomic,
damaged, previous, of another run or version, a full disk, SIGKILL), stops, divergence and rollback,
and checkpoints that load with ``torch.load(weights_only=True)``.

A run directory someone shared must not run code when pcdarts reads it: every checkpoint the
package writes loads weights-only, a checkpoint whose pickle needs more (a crafted payload, or
an older pcdarts's format) is refused in one line naming ``--trust-checkpoint``, and with that
flag a legitimate old-format checkpoint still resumes exactly.
"""
from __future__ import annotations

import errno
import hashlib
import importlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.serialization import get_unsafe_globals_in_checkpoint

import pcdarts
from pcdarts import runs, utils
from pcdarts.cli import main
from pcdarts.search.config import build_config
from pcdarts.errors import CheckpointWriteError
from pcdarts.registry import METHODS, OBJECTIVES
from pcdarts.search.searcher import Searcher, new_run_dir
from pcdarts.train.trainer import train
from tests.conftest import (
    CLI_TINY,
    CLI_TINY_CPU1,
    CLI_TINY_TRAIN,
    one_line_error,
    run_cli,
    tiny_config,
    tiny_method,
)

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


# moved from the issue-8 grab-bag (what a new user hits: nothing on disk lost, nothing misread)

search_mod = importlib.import_module("pcdarts.search.searcher")  # the package exports a function of that name


def top_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def finished_search_run(tmp_path_factory):
    """A finished tiny search run (2 epochs), copied by the tests that change it."""
    out = tmp_path_factory.mktemp("search") / "run"
    assert main(["search", "--out", str(out), *CLI_TINY]) == 0
    return out


@pytest.fixture(scope="module")
def finished_train_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    assert main(["train", "DARTS_V2", "--preset", "short", "--out", str(out), *CLI_TINY_TRAIN]) == 0
    return out


def copy_run(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("bad", [["--data", "cifar10:/nonexistent"], ["--space.C", "0"]])
def test_overwrite_keeps_the_old_search_run_when_the_new_one_is_invalid(finished_search_run, tmp_path, capsys, bad):
    x = copy_run(finished_search_run, tmp_path / "X")
    before = top_digest(x)
    code, _, err = run_cli(["search", "--out", x, "--overwrite", *CLI_TINY, *bad], capsys)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1, err
    assert top_digest(x) == before and not list(x.glob(".replaced-*"))


def test_overwrite_restores_the_old_run_when_the_new_one_fails_before_its_first_checkpoint(
        finished_search_run, tmp_path, capsys):
    x = copy_run(finished_search_run, tmp_path / "X")
    before = top_digest(x)
    code, _, err = run_cli(["search", "--out", x, "--overwrite", *CLI_TINY, "--search.lr", "1e30"], capsys)
    assert code == 2 and "non-finite" in err
    assert top_digest(x) == before and not list(x.glob(".replaced-*"))


def test_overwrite_replaces_the_old_run_once_the_new_one_checkpoints(finished_search_run, tmp_path, capsys):
    x = copy_run(finished_search_run, tmp_path / "X")
    (x / "genotype_normal.png").write_bytes(b"stale picture")
    code, _, err = run_cli(["search", "--out", x, "--overwrite", *CLI_TINY, "--seed", "5"], capsys)
    assert code == 0, err
    assert yaml.safe_load((x / "config.yaml").read_text())["run"]["seed"] == 5
    assert not (x / "genotype_normal.png").exists() and not list(x.glob(".replaced-*"))


def test_overwrite_keeps_the_old_training_run_when_the_new_one_is_invalid(finished_train_run, tmp_path, capsys):
    x = copy_run(finished_train_run, tmp_path / "X")
    before = top_digest(x)
    code, _, err = run_cli(["train", "DARTS_V2", "--out", x, "--overwrite", *CLI_TINY_TRAIN,
                            "--data", "cifar10:/nonexistent"], capsys)
    assert code == 2 and "/nonexistent" in err
    assert top_digest(x) == before


def test_search_divergence_stops_at_once_and_writes_no_genotype(tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = run_cli(["search", "--out", out, *CLI_TINY, "--search.lr", "1e30"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "weight step's loss became non-finite" in err and "search.lr=1e+30" in err
    assert "epoch 1/2 step 2/3" in err  # caught at the first bad step on the CPU (step 1 blew the weights up)
    assert not out.exists()  # nothing good was written: nothing is left


@pytest.mark.parametrize("step", ["weight", "arch"])
def test_divergence_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch, step):
    """The loss turns NaN in epoch 2: epoch 1's checkpoint stays, no genotype.json, exit 2."""
    if step == "weight":
        real = search_mod.weight_step

        def poisoned(method, optimizer, batch, ctx, **kw):
            loss, logits = real(method, optimizer, batch, ctx, **kw)
            return (loss * float("nan") if ctx.epoch >= 1 else loss), logits
        monkeypatch.setattr(search_mod, "weight_step", poisoned)
    else:
        real = METHODS.get("pc-darts").arch_step

        def poisoned(self, ctx, train_batch, arch_batch):
            out = real(self, ctx, train_batch, arch_batch)
            return {**out, "loss": out["loss"] * float("nan")}
        monkeypatch.setattr(METHODS.get("pc-darts"), "arch_step", poisoned)
    out = tmp_path / "r"
    code, _, err = run_cli(["search", "--out", out, *CLI_TINY], capsys)
    assert code == 2, err
    assert ("search.lr" if step == "weight" else "method.arch_lr") in err
    assert f"the last good checkpoint {out / 'checkpoint.pt'} is kept" in err
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (ck["epoch"], ck["step"]) == (1, 0)
    assert all(torch.isfinite(v).all() for v in ck["supernet"].values() if v.is_floating_point())
    assert not (out / "genotype.json").exists()


def test_train_divergence_is_detected(tmp_path, capsys):
    out = tmp_path / "t"
    code, _, err = run_cli(["train", "DARTS_V2", "--out", out, *CLI_TINY_TRAIN, "--train.lr", "1e30"], capsys)
    assert code == 2 and "training loss became non-finite" in err and "train.lr=1e+30" in err, err
    assert not (out / "metrics.json").exists()


def test_watch_reads_the_device_flag_only_every_period():
    from pcdarts.runs import NonFiniteWatch
    w = NonFiniteWatch(("a", "b"), torch.device("meta"), 10)
    assert w.period == 10 and not w.due(3) and w.due(10)
    cpu = NonFiniteWatch(("a", "b"), torch.device("cpu"), 10)
    assert cpu.period == 1
    cpu.observe("b", torch.tensor(float("inf")))
    cpu.observe("a", torch.tensor(1.0))
    assert cpu.first_bad() == "b"


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x80junk" * 10}[how])


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_damaged_search_checkpoint_is_one_line(finished_search_run, tmp_path, capsys, how):
    x = copy_run(finished_search_run, tmp_path / "X")
    _damage(x / "checkpoint.pt", how)
    for cmd in (["search", "--resume", x], ["derive", x]):
        code, _, err = run_cli(cmd, capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert f"{x / 'checkpoint.pt'} is damaged" in err
        assert f"rename {x / 'checkpoint.prev.pt'} to {x / 'checkpoint.pt'}" in err  # the older one is named


def test_previous_checkpoint_resumes(finished_search_run, tmp_path, capsys):
    x = copy_run(finished_search_run, tmp_path / "X")
    assert torch.load(x / "checkpoint.prev.pt", weights_only=True)["epoch"] == 1
    os.replace(x / "checkpoint.prev.pt", x / "checkpoint.pt")
    code, out, err = run_cli(["search", "--resume", x, ], capsys)
    assert code == 0, err


@pytest.mark.parametrize("how", ["truncated", "empty"])
def test_damaged_training_checkpoint_is_one_line(finished_train_run, tmp_path, capsys, how):
    x = copy_run(finished_train_run, tmp_path / "X")
    (x / "metrics.json").unlink()  # unfinished, so resume reads the checkpoint
    _damage(x / "checkpoint.pt", how)
    for cmd in (["train", "--resume", x], ["eval", x]):
        code, _, err = run_cli(cmd, capsys)
        assert code == 2 and err.count("\n") == 1 and f"{x / 'checkpoint.pt'} is damaged" in err, err


@pytest.mark.parametrize("args", [["--data", "cifar10:/nonexistent"], ["--space.C", "0"],
                                  ["--device", "cuda"]])
def test_errors_leave_no_run_directory(tmp_path, capsys, args):
    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, _, err = run_cli(["search", "--out", tmp_path / "r", *CLI_TINY, *args], capsys)
    assert code == 2, err
    assert not (tmp_path / "r").exists()
    code, _, err = run_cli(["train", "DARTS_V2", "--out", tmp_path / "t", *CLI_TINY_TRAIN,
                            *(args if args[0] != "--space.C" else ["--model.C", "0"])], capsys)
    assert code == 2 and not (tmp_path / "t").exists(), err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_mid_epoch_checkpoint_and_says_how_to_resume(tmp_path, capsys, monkeypatch, sig):
    real = search_mod.Searcher.search_step
    calls = []

    def step(self, arch_active, ctx):
        real(self, arch_active, ctx)
        calls.append(1)
        if len(calls) == 5:  # during epoch 2 (3 steps per epoch)
            signal.raise_signal(sig)
    monkeypatch.setattr(search_mod.Searcher, "search_step", step)
    out = tmp_path / "r"
    code, stdout, err = run_cli(["search", "--out", out, *CLI_TINY[:-3], "--run.plots", "false"], capsys)
    assert code == 128 + sig, err  # SIGINT 130, SIGTERM 143
    assert f"{sig.name}: stopped in epoch 2/2 after step 2/3; state saved. " \
           f"Continue with: pcdarts search --resume {out}" in stdout
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (ck["epoch"], ck["step"]) == (1, 2)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.setattr(search_mod.Searcher, "search_step", real)
    code, stdout, err = run_cli(["search", "--resume", out], capsys)
    assert code == 0 and "resuming at epoch 2/2, step 3/3" in stdout, err


def test_sigterm_stops_training_too(tmp_path, capsys, monkeypatch):
    train_mod = importlib.import_module("pcdarts.train.trainer")
    real = train_mod.Trainer.train_step
    calls = []

    def step(self, x, y):
        real(self, x, y)
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGTERM)
    monkeypatch.setattr(train_mod.Trainer, "train_step", step)
    out = tmp_path / "t"
    code, stdout, _ = run_cli(["train", "DARTS_V2", "--out", out, *CLI_TINY_TRAIN[1:]], capsys)
    assert code == 143
    assert f"SIGTERM: stopped in epoch 1/2 after step 2/3; state saved. Continue with: pcdarts train --resume {out}" \
        in stdout


def test_run_kinds_mixed_up_name_the_right_command(finished_search_run, finished_train_run, tmp_path, capsys):
    for cmd in (["search", "--resume", finished_train_run], ["derive", finished_train_run]):
        code, _, err = run_cli(cmd, capsys)
        name = " ".join(str(c) for c in cmd[:-1])
        assert code == 2 and err.startswith(f"error: pcdarts {name} {finished_train_run}: this is a training run"), err
        assert f"pcdarts train --resume {finished_train_run}" in err and f"pcdarts eval {finished_train_run}" in err
    code, _, err = run_cli(["train", "--resume", finished_search_run], capsys)
    assert code == 2
    assert f"this is a search run; continue it with `pcdarts search --resume {finished_search_run}`" in err
    code, _, err = run_cli(["eval", finished_search_run], capsys)
    assert code == 2 and "this is a search run" in err
    (tmp_path / "notes").mkdir()
    code, _, err = run_cli(["derive", tmp_path / "notes"], capsys)
    assert code == 2 and err.startswith(f"error: pcdarts derive {tmp_path / 'notes'}: not a pcdarts search run")


# moved from the issue-12 grab-bag (crash safety, bad input, TensorBoard)

ROOT = Path(__file__).resolve().parents[2]


KILL_ARGS = [*CLI_TINY_CPU1, "--search.batch_size", "4", "--search.checkpoint_every", "1",
             "--run.deterministic", "true"]


def _search_process(args: list[str], pause: str = "") -> subprocess.Popen:
    env = {**os.environ, "PCDARTS_TEST_CHECKPOINT_PAUSE": pause, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pcdarts", "search", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _final_state(run: Path) -> tuple[dict, dict, str]:
    ck = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    return ck["supernet"], ck["method"], (run / "genotype.json").read_text()


def _assert_equal_state(a, b) -> None:
    def flat(x, prefix=""):
        if isinstance(x, dict):
            for k, v in x.items():
                yield from flat(v, f"{prefix}{k}.")
        elif torch.is_tensor(x):
            yield prefix, x
    fa, fb = dict(flat(a)), dict(flat(b))
    assert fa.keys() == fb.keys()
    for k in fa:
        assert torch.equal(fa[k], fb[k]), k


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    """Killed (SIGKILL) again and again at random steps and inside checkpoint writes (the test
    hook sleeps between the write's stages), each time resumed: the end is bit-identical."""
    ref = tmp_path / "ref"
    try:  # the uninterrupted run, in this process (same kernels: CPU, one thread, deterministic)
        assert main(["search", "--out", str(ref), *KILL_ARGS]) == 0
    finally:
        torch.use_deterministic_algorithms(False)
    run, rng, kills = tmp_path / "run", random.Random(12), 0
    args = ["--out", str(run), *KILL_ARGS]
    for attempt in range(12):
        p = _search_process(args, pause="0.03")
        deadline = time.time() + 60
        while not (run / "checkpoint.pt").is_file() and p.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        if p.poll() is None and kills < 3:
            time.sleep(rng.uniform(0.0, 0.6))
            p.send_signal(signal.SIGKILL)
        rc = p.wait(timeout=120)
        if rc == 0:
            break
        assert rc == -signal.SIGKILL, p.stderr.read().decode()
        kills += 1
        runs.load_checkpoint(run / "checkpoint.pt", "search", "test")  # always a complete checkpoint
        args = ["--resume", str(run)]
    assert rc == 0 and kills >= 3
    _assert_equal_state(_final_state(ref)[:2], _final_state(run)[:2])
    assert _final_state(ref)[2] == _final_state(run)[2]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    hist = [strip(json.loads(ln) for ln in (r / "history.jsonl").read_text().splitlines()) for r in (ref, run)]
    assert hist[0] == hist[1]


def _enospc(obj, f, *args, **kwargs):
    f.write(b"half a checkpoint")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    runs.save_checkpoint({"format": "pcdarts-search", "epoch": 1}, path)
    runs.save_checkpoint({"format": "pcdarts-search", "epoch": 2}, path)
    before = digest(tmp_path)
    monkeypatch.setattr(torch, "save", _enospc)
    with pytest.raises(CheckpointWriteError) as e:
        runs.save_checkpoint({"format": "pcdarts-search", "epoch": 3}, path)
    msg = str(e.value)
    assert "\n" not in msg and "disk is full" in msg and str(path) in msg and "is intact" in msg
    assert digest(tmp_path) == before  # no partial file left, neither checkpoint touched
    assert runs.load_checkpoint(path, "search", "t")["epoch"] == 2


@pytest.mark.slow
def test_disk_full_during_a_search_is_one_line_and_resumable(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    real, calls = torch.save, []

    def fails_third(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            return _enospc(obj, f)
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fails_third)
    code, _, err = run_cli(["search", "--out", out, *CLI_TINY_CPU1, "--search.checkpoint_every", "1"], capsys)
    line = one_line_error(err)
    assert code == 2 and "disk is full" in line and str(out / "checkpoint.pt") in line and "--resume" in line
    ck = runs.load_checkpoint(out / "checkpoint.pt", "search", "t")
    assert (ck["epoch"], ck["step"]) == (0, 2)
    monkeypatch.setattr(torch, "save", real)
    code, _, err = run_cli(["search", "--resume", out], capsys)
    assert code == 0, err


def test_write_error_without_a_previous_checkpoint_says_so(tmp_path, monkeypatch):
    def eio(obj, f, *a, **k):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(torch, "save", eio)
    with pytest.raises(CheckpointWriteError, match=r"write failed \(Input/output error\).*no checkpoint"):
        runs.save_checkpoint({}, tmp_path / "checkpoint.pt")
    assert list(tmp_path.iterdir()) == []


def _nan_at(monkeypatch, calls: set[int]):
    """The objective's loss is NaN at the given (1-based) calls, so its gradients poison the weights."""
    cls = OBJECTIVES.get("cross-entropy")
    real, n = cls.forward, [0]

    def forward(self, *args, **kwargs):
        loss, metrics = real(self, *args, **kwargs)
        n[0] += 1
        return (loss * float("nan"), metrics) if n[0] in calls else (loss, metrics)
    monkeypatch.setattr(cls, "forward", forward)


@pytest.mark.slow
def test_rollback_recovers_from_a_nan_with_halved_learning_rates(tmp_path, capsys, monkeypatch):
    _nan_at(monkeypatch, {9})  # epoch 2 (arch active): weight and arch steps both call the objective
    out = tmp_path / "r"
    code, stdout, err = run_cli(["search", "--out", out, *CLI_TINY_CPU1, "--search.checkpoint_every", "2",
                                 "--search.rollback", "1", "--search.lr_min", "0.0"], capsys)
    assert code == 0, err
    line = [ln for ln in stdout.splitlines() if ln.startswith("rollback")]
    assert len(line) == 1 and "rollback 1/1" in line[0] and "halved" in line[0], stdout
    ck = runs.load_checkpoint(out / "checkpoint.pt", "search", "t")
    assert ck["rollbacks"] == 1 and ck["scheduler"]["base_lrs"] == [pytest.approx(0.05)]  # quick preset lr 0.1
    assert ck["method"]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05)  # arch lr 0.1 halved
    hist = [json.loads(ln) for ln in (out / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in hist] == [0, 1] and (out / "genotype.json").is_file()


def test_rollbacks_are_counted_then_the_error_stands(tmp_path, capsys, monkeypatch):
    _nan_at(monkeypatch, {9, 11})  # the second NaN in the replayed step
    out = tmp_path / "r"
    code, _, err = run_cli(["search", "--out", out, *CLI_TINY_CPU1, "--search.checkpoint_every", "2",
                            "--search.rollback", "1"], capsys)
    assert code == 2 and "became non-finite" in one_line_error(err) and not (out / "genotype.json").exists()


@pytest.fixture(scope="module")
def one_epoch_search_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "run"
    assert main(["search", "--out", str(out), *CLI_TINY_CPU1, "--search.epochs", "1",
                 "--method.warmup_epochs", "0"]) == 0
    return out


def test_checkpoint_of_another_space_or_method_is_named(one_epoch_search_run, tmp_path, capsys):
    x = _copy(one_epoch_search_run, tmp_path / "x")
    ck = torch.load(x / "checkpoint.pt", weights_only=True)
    ck["config"]["space"]["C"] = 8  # a checkpoint of a wider supernet copied in
    torch.save(ck, x / "checkpoint.pt")
    before = digest(x)
    code, _, err = run_cli(["search", "--resume", x], capsys)
    line = one_line_error(err)
    assert code == 2 and "belongs to another run" in line and "space.C 8 vs 4" in line and "config.yaml" in line
    assert digest(x) == before


def test_checkpoint_from_a_newer_version_is_named(one_epoch_search_run, tmp_path, capsys):
    x = _copy(one_epoch_search_run, tmp_path / "x")
    ck = torch.load(x / "checkpoint.pt", weights_only=True)
    ck["version"] = 99
    torch.save(ck, x / "checkpoint.pt")
    before = digest(x)
    for cmd in (["search", "--resume", x], ["derive", x]):
        code, _, err = run_cli(cmd, capsys)
        assert code == 2 and "newer pcdarts" in one_line_error(err) and "version 99" in err
    assert digest(x) == before
