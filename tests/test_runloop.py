"""What a run prints and how it stops, resumes and diverges (issue 20 items 3, 4, 8, 11)."""
from __future__ import annotations

import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from pcdarts import runs
from pcdarts.cli import main, rank_prefix
from pcdarts.errors import ConfigError

search_mod = importlib.import_module("pcdarts.search.searcher")  # the package exports a function of that name
train_mod = importlib.import_module("pcdarts.train.trainer")

TINY = ["--space.C", "4", "--space.layers", "3", "--data.max_samples", "48", "--search.epochs", "2",
        "--search.batch_size", "8", "--method.warmup_epochs", "1", "--method.k", "2", "--no-progress",
        "--run.plots", "false", "--run.threads", "1"]  # 3 steps per epoch
TRAIN_TINY = ["DARTS_V2", "--no-progress", "--train.epochs", "2", "--model.C", "4", "--model.layers", "3",
              "--train.batch_size", "16", "--data.max_samples", "48", "--data.max_test_samples", "32",
              "--run.threads", "1"]  # 3 steps per epoch


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def history(run_dir):
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def after_steps(monkeypatch, cls, name, action):
    """Patch ``cls.name`` (a step method) to call ``action(self, n)`` after its n-th call (1-based)."""
    real, calls = getattr(cls, name), [0]

    def step(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls[0] += 1
        action(self, calls[0])
        return out
    monkeypatch.setattr(cls, name, step)


# ---------------------------------------------------------------- 3. --no-progress drops the bar only

def test_exit_codes_follow_the_signal():
    assert runs.stop_exit_code("SIGINT") == 130 and runs.stop_exit_code("SIGTERM") == 143
    assert runs.stop_exit_code("") == 130  # stop_after_steps, as Ctrl-C


@pytest.mark.slow
def test_no_progress_run_stopped_by_sigterm_says_how_to_resume_and_exits_143(tmp_path):
    """A batch job (no terminal, --no-progress) gets its epoch lines, the stop message with the
    --resume command, and exit code 143 (128 + SIGTERM) when the scheduler sends SIGTERM."""
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "pcdarts", "search", "--out", str(out), *TINY,
                             "--search.epochs", "40"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    try:
        first = proc.stdout.readline()  # blocks until the first epoch's line
        assert first.startswith("epoch 1/40  loss "), first + proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "SIGTERM: stopped " in rest and f"state saved. Continue with: pcdarts search --resume {out}" in rest, rest
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert 1 <= ck["epoch"] < 40 and not (out / "genotype.json").exists()


@pytest.mark.slow
def test_no_progress_training_prints_epochs_stop_and_resume_lines(tmp_path, capsys, monkeypatch):
    def stop(self, n):
        if n == 4:  # epoch 2, step 1
            signal.raise_signal(signal.SIGTERM)
    after_steps(monkeypatch, train_mod.Trainer, "train_step", stop)
    out = tmp_path / "t"
    code, stdout, err = run_cli(["train", *TRAIN_TINY, "--out", out], capsys)
    assert code == 143, err
    assert "epoch 1/2  lr " in stdout
    assert f"SIGTERM: stopped in epoch 2/2 after step 1/3; state saved. Continue with: pcdarts train --resume {out}" \
        in stdout
    monkeypatch.undo()
    code, stdout, err = run_cli(["train", "--resume", out, "--no-progress"], capsys)
    assert code == 0, err
    assert "resuming at epoch 2/2, step 2/3" in stdout and "epoch 2/2  lr " in stdout


# ---------------------------------------------------------------- 4. time across a resume; a stop after the last epoch

@pytest.mark.slow
def test_resumed_epoch_time_adds_the_time_before_the_stop(tmp_path, capsys, monkeypatch):
    """Each step sleeps 0.3 s: epoch 2 was stopped after 2 of its 3 steps and resumed, so its
    time_s holds at least the 3 steps' 0.9 s (before the fix: the last step's only, or -0.0)."""
    after_steps(monkeypatch, search_mod.Searcher, "search_step", lambda self, n: time.sleep(0.3))
    out = tmp_path / "r"
    monkeypatch.setenv("PCDARTS_TEST_STOP_AFTER_STEPS", "5")
    code, stdout, err = run_cli(["search", "--out", out, *TINY], capsys)
    monkeypatch.delenv("PCDARTS_TEST_STOP_AFTER_STEPS")
    assert code == 130 and "stopped in epoch 2/2 after step 2/3" in stdout, err
    assert runs.load_checkpoint(out / "checkpoint.pt", "search", "t")["epoch_time_s"] >= 0.6
    code, stdout, err = run_cli(["search", "--resume", out], capsys)
    assert code == 0 and "resuming at epoch 2/2, step 3/3" in stdout, err
    times = [r["time_s"] for r in history(out)]
    assert times[0] >= 0.9 and times[1] >= 0.9, times
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["search_time_s"] == pytest.approx(sum(times), abs=0.01)


@pytest.mark.slow
def test_a_stop_after_the_last_epoch_finishes_the_run_and_a_resume_says_it_is_complete(tmp_path, capsys,
                                                                                       monkeypatch):
    def stop(self, n):
        if n == 6:  # the last step of the last epoch: the flag is read after the epoch's end
            signal.raise_signal(signal.SIGTERM)
    after_steps(monkeypatch, search_mod.Searcher, "search_step", stop)
    out = tmp_path / "r"
    code, stdout, err = run_cli(["search", "--out", out, *TINY], capsys)
    assert code == 0 and "stopped" not in stdout, stdout + err  # before: "stopped after epoch 2/2", rc 130
    assert (out / "genotype.json").is_file() and "end_time" in json.loads((out / "manifest.json").read_text())
    genotype = (out / "genotype.json").read_text()
    # killed after the last checkpoint, before the final files (before: "resuming at epoch 3/2")
    (out / "genotype.json").unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("end_time", "genotype", "search_time_s"):
        manifest.pop(key)
    (out / "manifest.json").write_text(json.dumps(manifest))
    code, stdout, err = run_cli(["search", "--resume", out], capsys)
    assert code == 0, err
    assert "all 2 epochs were done before the stop: finishing the run" in stdout and "epoch 3/2" not in stdout
    assert (out / "genotype.json").read_text() == genotype and f"run directory: {out}" in stdout
    closed = json.loads((out / "manifest.json").read_text())
    assert closed["search_time_s"] == pytest.approx(sum(r["time_s"] for r in history(out)), abs=0.01)
    # once more: nothing left to do, nothing rewritten
    code, stdout, err = run_cli(["search", "--resume", out], capsys)
    assert code == 0 and f"the search in {out} is already complete (2/2 epochs); nothing to resume" in stdout, err
    assert json.loads((out / "manifest.json").read_text()) == closed and "resuming at" not in stdout


# ---------------------------------------------------------------- 8. divergence the step losses do not show

@pytest.mark.slow
def test_the_issue_example_no_longer_ends_successfully(tmp_path, capsys):
    """lr 1e6 without warm-up: gradient clipping keeps the step losses finite (1e8) but the
    batch-norm running statistics overflow; before, rc 0 and a genotype."""
    out = tmp_path / "r"
    code, stdout, err = run_cli(["search", "--out", out, *TINY, "--method.warmup_epochs", "0", "--search.lr", "1e6"],
                                capsys)
    assert code == 2 and "became non-finite" in err and "search.lr=1e+06" in err, err
    assert "warning: the train loss is" in err and "the loss at chance, log(10)" in err
    assert not (out / "genotype.json").exists()
    assert all(math.isfinite(r.get("valid_loss", 0.0)) for r in history(out))


def _poison_statistics(at):
    """After the ``at``-th step (once), one batch-norm running variance turns inf; the step losses stay finite."""
    def action(self, n):
        if n == at:
            net = getattr(self, "supernet", None) or self.net
            next(b for k, b in net.named_buffers() if k.endswith("running_var")).fill_(float("inf"))
    return action


@pytest.mark.slow
@pytest.mark.parametrize("rollback", [0, 1])
def test_non_finite_batch_norm_statistics_are_divergence(tmp_path, capsys, monkeypatch, rollback):
    after_steps(monkeypatch, search_mod.Searcher, "search_step", _poison_statistics(4))
    out = tmp_path / "r"
    code, stdout, err = run_cli(["search", "--out", out, *TINY, "--search.rollback", rollback], capsys)
    if rollback:  # back to epoch 1's checkpoint with halved learning rates, then the run ends well
        assert code == 0 and "rollback 1/1: the batch-norm running statistics" in stdout, stdout + err
        assert [r["epoch"] for r in history(out)] == [0, 1] and (out / "genotype.json").is_file()
        return
    assert code == 2 and "the batch-norm running statistics (supernet." in err and "running_var)" in err, err
    assert "became non-finite (NaN or inf) by epoch 2/2 step 3/3" in err
    assert f"the last good checkpoint {out / 'checkpoint.pt'} is kept" in err
    ck = runs.load_checkpoint(out / "checkpoint.pt", "search", "t")
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["supernet"].values() if v.is_floating_point())
    assert not (out / "genotype.json").exists() and len(history(out)) == 1


def test_a_non_finite_validation_loss_is_divergence(tmp_path, capsys, monkeypatch):
    real = search_mod.Searcher.evaluate
    monkeypatch.setattr(search_mod.Searcher, "evaluate", lambda self: {**real(self), "valid_loss": float("nan")})
    out = tmp_path / "r"
    code, _, err = run_cli(["search", "--out", out, *TINY], capsys)
    assert code == 2 and "the validation loss became non-finite (NaN or inf) in epoch 2/2" in err, err
    assert "search.lr=" in err and not (out / "genotype.json").exists()
    assert [r["epoch"] for r in history(out)] == [0]  # no NaN line in the history


def test_a_loss_grown_by_orders_of_magnitude_gets_a_warning(tmp_path, capsys, monkeypatch):
    def inflate(self, n):
        if n > 3:  # epoch 2's train loss reads 1e4 higher (the run itself is untouched)
            self.meters["loss"] += 1e4 * 8
    after_steps(monkeypatch, search_mod.Searcher, "search_step", inflate)
    out = tmp_path / "r"
    code, stdout, err = run_cli(["search", "--out", out, *TINY], capsys)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("warning: the train loss")]
    assert len(lines) == 1 and "in epoch 2/2" in lines[0] and "the loss at chance, log(10) (2.3)" in lines[0], err


def test_explosion_threshold():
    ref = math.log(10)
    assert runs.explosion_warning("x", 100 * ref * 0.99, ref, "chance", "here", "hint") is None
    assert runs.explosion_warning("x", 100 * ref * 1.01, ref, "chance", "here", "hint")
    assert runs.explosion_warning("x", float("nan"), ref, "chance", "here", "hint") is None  # that is an error
    assert runs.explosion_warning("x", 1e9, None, "first", "here", "hint") is None  # no reference yet


def test_training_batch_norm_statistics_and_test_loss(tmp_path, capsys, monkeypatch):
    after_steps(monkeypatch, train_mod.Trainer, "train_step", _poison_statistics(2))
    code, _, err = run_cli(["train", *TRAIN_TINY, "--out", tmp_path / "t"], capsys)
    assert code == 2 and "the batch-norm running statistics (network." in err and "train.lr=" in err, err
    monkeypatch.undo()
    real = train_mod.evaluate
    monkeypatch.setattr(train_mod, "evaluate", lambda *a, **k: {**real(*a, **k), "test_loss": float("inf")})
    code, _, err = run_cli(["train", *TRAIN_TINY, "--out", tmp_path / "u", "--train.eval_every", "1"], capsys)
    assert code == 2 and "the test loss became non-finite (NaN or inf) in epoch 1/2" in err, err
    assert not (tmp_path / "u" / "metrics.json").exists()


# ---------------------------------------------------------------- 11. one rank prints

def test_only_rank_zero_prints_errors_warnings_and_the_budget_line(capsys, monkeypatch):
    def fake_search(cfg, stop_after_steps=None):
        warnings.warn("a warning of the run")
        raise ConfigError("search.x is wrong")
    monkeypatch.setattr(search_mod, "search", fake_search)
    args = ["search", "--budget", "2", *TINY]
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        code, stdout, err = run_cli(args, capsys)
        assert code == 2
        if rank == "0":
            assert stdout.startswith("budget: ") and "warning: a warning of the run" in err
            assert "error: search.x is wrong" in err
        else:
            assert stdout == "" and err == ""  # the same exit code, in silence
    monkeypatch.setenv("PCDARTS_ALL_RANKS", "1")
    code, stdout, err = run_cli(args, capsys)
    assert code == 2 and stdout.startswith("[rank 1] budget: ") and "[rank 1] error: search.x is wrong" in err


def test_rank_prefix(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "PCDARTS_ALL_RANKS"):
        monkeypatch.delenv(key, raising=False)
    assert rank_prefix() == ""  # alone
    monkeypatch.setenv("PCDARTS_ALL_RANKS", "1")
    assert rank_prefix() == ""  # alone, nothing to tell apart
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert rank_prefix() == "[rank 3] "
    monkeypatch.setenv("PCDARTS_ALL_RANKS", "0")
    assert rank_prefix() is None
    monkeypatch.setenv("RANK", "0")
    assert rank_prefix() == ""
