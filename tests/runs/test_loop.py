"""What a run prints and how it stops, resumes and diverges (issue 20 items 3, 4, 8, 11), and the one
loop (pcdarts.runs.loop) that search, training and the weight-sharing trainer run on (issue 19 item 2)."""
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
from pcdarts.search.config import build_config, merge_onto_preset
from pcdarts.errors import ConfigError, DivergenceError
from pcdarts.runs.loop import EpochRun, LoopSettings, cosine_lr, cosine_schedule, run_epochs, sgd, with_rollback
from tests.conftest import tiny_config

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


# ---------------------------------------------------------------- the one loop (runs/loop.py), for search and training
# Written once against the shared loop; ``KINDS`` runs each test for a search and for a training run.



def _search_kind(tmp_path, name, stop_after_steps=None, resume=False):
    if resume:
        return search_mod.search(resume=tmp_path / name, stop_after_steps=stop_after_steps)
    cfg = tiny_config(tmp_path, run={"out": str(tmp_path / name), "threads": 1})
    return search_mod.search(build_config(merge_onto_preset("quick", cfg)), stop_after_steps=stop_after_steps)


def _train_kind(tmp_path, name, stop_after_steps=None, resume=False):
    if resume:
        return train_mod.train(resume=tmp_path / name, stop_after_steps=stop_after_steps)
    cfg = {"data": {"dataset": "digits", "max_samples": 48, "max_test_samples": 32},
           "model": {"C": 4, "layers": 3, "drop_path_prob": 0.2},
           "train": {"epochs": 2, "batch_size": 16, "lr": 0.05},
           "run": {"seed": 0, "out": str(tmp_path / name), "progress": False, "device": "cpu", "threads": 1}}
    return train_mod.train("DARTS_V2", cfg, stop_after_steps=stop_after_steps)


# kind -> (run(tmp_path, name, ...), the class whose step the loop calls, the weights in its checkpoint,
#          the file only a finished run writes)
KINDS = {"search": (_search_kind, search_mod.Searcher, "supernet", "genotype.json"),
         "train": (_train_kind, train_mod.Trainer, "model", "metrics.json")}


def _weights(run_dir, kind, key):
    return runs.load_checkpoint(run_dir / "checkpoint.pt", kind, "t")[key]


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_sigint_mid_epoch_checkpoints_and_the_resume_equals_the_uninterrupted_run(tmp_path, monkeypatch, capsys,
                                                                                  kind):
    run, cls, key, final = KINDS[kind]
    full = run(tmp_path, "full")

    def interrupt(self, n):
        if n == 2:  # epoch 1, step 2 of 3: mid-epoch
            signal.raise_signal(signal.SIGINT)
    after_steps(monkeypatch, cls, "take_step", interrupt)
    part = run(tmp_path, "part")
    monkeypatch.undo()
    assert part.interrupted and part.stop_signal == "SIGINT" and runs.stop_exit_code(part.stop_signal) == 130
    out = capsys.readouterr().out
    assert f"SIGINT: stopped in epoch 1/2 after step 2/3; state saved. Continue with: pcdarts {kind} --resume" in out
    assert not (tmp_path / "part" / final).exists()
    ck = runs.load_checkpoint(tmp_path / "part" / "checkpoint.pt", kind, "t")
    assert (ck["epoch"], ck["step"]) == (0, 2)
    resumed = run(tmp_path, "part", resume=True)
    assert not resumed.interrupted and (tmp_path / "part" / final).is_file()
    a, b = _weights(tmp_path / "full", kind, key), _weights(tmp_path / "part", kind, key)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise within one process
    losses = [[r["train_loss"] for r in history(tmp_path / d)] for d in ("full", "part")]
    assert losses[0] == losses[1] and len(losses[0]) == 2 and not full.interrupted


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_non_finite_loss_is_a_named_error_and_nothing_final_is_written(tmp_path, monkeypatch, kind):
    run, cls, _, final = KINDS[kind]

    def poison(self, n):
        if n == 4:  # epoch 2, step 1: after epoch 1's checkpoint
            self.watch.observe(self.watch.names[0], torch.tensor(float("nan")))
    after_steps(monkeypatch, cls, "take_step", poison)
    with pytest.raises(DivergenceError, match=r"became non-finite \(NaN or inf\) by epoch 2/2 step 1/3") as e:
        run(tmp_path, "r")
    assert f"the last good checkpoint {tmp_path / 'r' / 'checkpoint.pt'} is kept" in str(e.value)
    assert "\n" not in str(e.value) and not (tmp_path / "r" / final).exists()
    assert runs.load_checkpoint(tmp_path / "r" / "checkpoint.pt", kind, "t")["epoch"] == 1
    assert [r["epoch"] for r in history(tmp_path / "r")] == [0]


# a pure-Python run: the loop's rules without a network

class Counter(EpochRun):
    """Counts steps; records what the loop asked of it."""

    def __init__(self, steps=4, accumulate=1, nan_at=None):
        self.steps, self.accumulate, self.nan_at = steps, accumulate, nan_at
        self.epoch = self.step = 0
        self.log, self.done, self.saved = [], 0, []
        self.watch = runs.NonFiniteWatch(("x",), torch.device("cpu"), 1)

    def steps_per_epoch(self):
        return self.steps

    def take_step(self):
        self.done += 1
        self.log.append((self.epoch, self.step))
        if self.done == self.nan_at:
            self.watch.observe("x", torch.tensor(float("inf")))

    def may_stop_here(self):
        return self.step % self.accumulate == 0

    def check_finite(self, statistics=False):
        if self.watch.first_bad():
            raise DivergenceError(f"x became non-finite at {self.epoch}/{self.step}")

    def end_epoch(self):
        self.epoch, self.step = self.epoch + 1, 0
        self.save_checkpoint()

    def save_checkpoint(self):
        self.saved.append((self.epoch, self.step))

    def rollback(self, error):
        if not self.saved or self.nan_at is None:
            return False
        self.nan_at = None  # the replay is clean
        self.watch.flags.zero_()
        self.epoch, self.step = self.saved[-1]
        return True


def test_the_loop_stops_at_an_allowed_boundary_checkpoints_and_resumes_at_that_step(capsys):
    c = Counter(steps=4, accumulate=2)
    end = run_epochs(c, LoopSettings(epochs=2, command="pcdarts x", stop_after_steps=3))
    # the stop came after step 3, inside an accumulation group of 2: the loop waits for step 4 ... the epoch's end
    assert end.interrupted and c.saved == [(1, 0)] and (c.epoch, c.step) == (1, 0)
    assert "stopped after epoch 1/2" in capsys.readouterr().out
    c2 = Counter(steps=5, accumulate=2)
    end = run_epochs(c2, LoopSettings(epochs=2, stop_after_steps=1))
    assert end.interrupted and c2.saved == [(0, 2)]  # mid-epoch, at the group boundary
    run_epochs(c2, LoopSettings(epochs=2))  # the resume continues at (0, 2)
    assert c2.log[2:4] == [(0, 2), (0, 3)] and (c2.epoch, c2.step) == (2, 0) and len(c2.log) == 10


def test_the_loop_checkpoints_every_n_steps_and_a_stop_after_the_last_epoch_finishes():
    c = Counter(steps=5)
    end = run_epochs(c, LoopSettings(epochs=1, checkpoint_every=2, stop_after_steps=5))
    assert not end.interrupted and c.saved == [(0, 2), (0, 4), (1, 0)]


def test_the_loop_reads_the_watch_and_rollback_replays_from_the_last_checkpoint():
    c = Counter(steps=3, nan_at=5)
    with pytest.raises(DivergenceError, match="non-finite at 1/2"):
        run_epochs(c, LoopSettings(epochs=2))  # the bad step is caught at once (period 1)
    c = Counter(steps=3, nan_at=5)
    with_rollback(lambda: run_epochs(c, LoopSettings(epochs=2)), c.rollback)
    assert (c.epoch, c.step) == (2, 0) and c.log[3:5] == [(1, 0), (1, 1)] and c.log[5:] == [(1, 0), (1, 1), (1, 2)]
    c = Counter(steps=3, nan_at=2)  # before any checkpoint: the error stands
    with pytest.raises(DivergenceError):
        with_rollback(lambda: run_epochs(c, LoopSettings(epochs=2)), c.rollback)


def test_one_sgd_and_one_cosine_schedule():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = sgd([p], lr=0.1, momentum=0.9, weight_decay=3e-4, nesterov=True)
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["weight_decay"] == 3e-4
    sched = cosine_schedule(opt, 5, 0.001)
    for epoch in range(5):
        assert opt.param_groups[0]["lr"] == pytest.approx(cosine_lr(0.1, 0.001, epoch, 5))
        opt.step()
        sched.step()
