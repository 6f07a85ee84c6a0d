"""The one run skeleton: epochs of steps, stop signals, the non-finite watch, mid-epoch
checkpoints, resume at (epoch, step), rollback and the progress bar (docs/STYLE.md §2.4).

The search (:class:`pcdarts.search.searcher.Searcher`), the training of a found cell
(:class:`pcdarts.train.trainer.Trainer`) and the weight-sharing trainer
(:mod:`pcdarts.analysis.ws_train`) all run on :func:`run_epochs`; each is an
:class:`EpochRun` that supplies its step and its epoch end. The position (``epoch``,
``step``) lives on the run, so a run loaded from a checkpoint continues where it stopped.

Also here: the one home of the SGD optimiser and the cosine learning-rate schedule those
three loops use (:func:`sgd`, :func:`cosine_schedule`, :func:`cosine_lr`).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from pcdarts import utils
from pcdarts.distributed import (
    DistInfo,
    agreed_stop,
    dist_info,
    init_distributed,
    resolve_device,
)
from pcdarts.errors import DivergenceError
from pcdarts.runs import NonFiniteWatch, RunDir, StopFlag, stop_message

T = TypeVar("T")


class EpochRun:
    """What a run supplies to :func:`run_epochs`. ``epoch`` and ``step`` are its position:
    the loop advances ``step`` after each :meth:`take_step`; :meth:`end_epoch` moves to the
    next epoch (``epoch += 1``, ``step = 0``) and writes its checkpoint."""

    epoch: int = 0
    step: int = 0
    watch: NonFiniteWatch | None = None  # read every ``watch.period`` steps (None: never)

    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def begin_epoch(self) -> None:
        """Before the epoch's first step, and before the rest of an epoch a resume continues."""

    def take_step(self) -> None:
        """One step at ``self.step`` (0-based within the epoch)."""
        raise NotImplementedError

    def finish_steps(self) -> None:
        """After the epoch's steps, whether they all ran or a stop broke them off."""

    def may_stop_here(self) -> bool:
        """Whether a stop may happen after the step just taken (not inside an accumulation group)."""
        return True

    def check_finite(self, statistics: bool = False) -> None:
        """Raise :class:`~pcdarts.errors.DivergenceError` if the run went non-finite."""

    def end_epoch(self) -> None:
        raise NotImplementedError

    def save_checkpoint(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot stop mid-epoch: it keeps no checkpoint")

    def postfix(self) -> dict[str, str]:
        """The progress bar's figures (may read device meters: called every ``log_every`` steps)."""
        return {}

    def rollback(self, error: DivergenceError) -> bool:
        """After ``error``: go back to a good state and return True to run on, or False (it stands)."""
        return False


@dataclass
class LoopSettings:
    """How :func:`run_epochs` drives a run.

    Attributes:
        epochs: the run's last epoch + 1.
        command: the command named in the stop message (``pcdarts search``).
        run_dir: the run directory named in the stop message.
        device: where the agreed stop across ranks is reduced.
        main: this process prints (rank 0).
        progress: a progress bar per epoch (``--no-progress`` drops it; the epoch lines stay).
        log_every: steps between refreshes of the bar's figures.
        checkpoint_every: a mid-epoch checkpoint every this many steps (0: at epoch ends only).
        stop_after_steps: stop after this many steps of this call, as Ctrl-C would (tests, time boxes).
        signals: Ctrl-C and SIGTERM stop at the next step boundary (False: they raise as usual).
    """

    epochs: int
    command: str = ""
    run_dir: Path = Path(".")
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    main: bool = True
    progress: bool = False
    log_every: int = 50
    checkpoint_every: int = 0
    stop_after_steps: int | None = None
    signals: bool = True


@dataclass
class LoopEnd:
    """How :func:`run_epochs` ended: every epoch done, or stopped early (a checkpoint saved)."""

    interrupted: bool = False
    signal_name: str = ""  # "SIGINT" or "SIGTERM" when a signal stopped it


class _NoSignals:
    requested, signal_name = False, ""

    def __enter__(self) -> _NoSignals:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def run_epochs(run: EpochRun, s: LoopSettings) -> LoopEnd:
    """Run ``run`` from its position to the last epoch.

    A stop (Ctrl-C, SIGTERM, ``stop_after_steps``), agreed by every rank under torchrun, ends
    the loop at the next step boundary the run allows: a mid-epoch checkpoint is saved and the
    stop message printed. A stop after an epoch's end needs no more (its checkpoint is written);
    a stop after the last epoch is ignored, so the run finishes. A non-finite watch reads its
    flags every ``watch.period`` steps (``check_finite``)."""
    done = 0
    end = LoopEnd()
    with (StopFlag() if s.signals else _NoSignals()) as stop:
        while run.epoch < s.epochs:
            steps = run.steps_per_epoch()
            run.begin_epoch()
            bar = utils.epoch_progress(s.main and s.progress, steps, run.step, run.epoch, s.epochs)
            while run.step < steps:
                run.take_step()
                run.step += 1
                done += 1
                due = run.watch is not None and run.watch.due(run.step)
                if due:
                    run.check_finite()
                utils.progress_tick(bar, run.step, steps, s.log_every, run.postfix)
                halt = _stop_agreed(stop, due or run.watch is None, s, done)
                if halt and run.may_stop_here() and run.step < steps:
                    break
                if s.checkpoint_every and run.step % s.checkpoint_every == 0 and run.step < steps:
                    run.save_checkpoint()
            if bar is not None:
                bar.close()
            run.finish_steps()
            if run.step < steps:  # stopped mid-epoch
                run.save_checkpoint()
                end.interrupted = True
                break
            run.end_epoch()
            # a stop after the last epoch finishes the run (its final files take a moment)
            if run.epoch < s.epochs and _stop_agreed(stop, True, s, done):
                end.interrupted = True
                break
        end.signal_name = stop.signal_name
    if end.interrupted and s.main:  # printed with --no-progress too: batch jobs have no terminal
        print(stop_message(s.command, s.run_dir, run.epoch, s.epochs, run.step, run.steps_per_epoch(),
                           end.signal_name), flush=True)
    return end


def _stop_agreed(stop: Any, sync: bool, s: LoopSettings, done: int) -> bool:
    # with signals, the ranks agree under torchrun (a collective on every step, read when ``sync``)
    signalled = s.signals and agreed_stop(stop.requested, sync, s.device)
    return signalled or (s.stop_after_steps is not None and done >= s.stop_after_steps)


def with_rollback(attempt: Callable[[], T], rollback: Callable[[DivergenceError], bool]) -> T:
    """``attempt()``, again after each DivergenceError that ``rollback`` recovers from."""
    while True:
        try:
            return attempt()
        except DivergenceError as e:
            if not rollback(e):
                raise


@contextlib.contextmanager
def claimed_run(rundir: RunDir, closing: Iterable[Any] = ()) -> Iterator[None]:
    """Around a run: the run directory claimed (put back if the run fails before its first
    checkpoint) and ``closing`` (writers; None entries skipped) closed at the end."""
    with rundir.claimed():
        try:
            yield
        finally:
            for c in closing:
                if c is not None:
                    c.close()


def set_up_process(run: Any, rundir: RunDir) -> tuple[DistInfo, torch.device, RunDir]:
    """This process, for a search or a training run: the device (its rank's GPU under torchrun,
    where it joins the process group), CPU arithmetic, the seed (the same on every rank) and
    determinism, from the config's ``run`` section. Returns (dist, device, rundir): ranks other
    than 0 get a resumed view of the run directory, so only rank 0 touches it."""
    dist = dist_info()
    device = resolve_device(run.device, dist)
    init_distributed(dist, device)  # torchrun: join the process group (no-op alone)
    if not dist.is_main:
        rundir = RunDir(rundir.path, resume=True)
    utils.set_cpu_arithmetic(run.threads, run.flush_denormal)
    utils.seed_everything(run.seed)
    if run.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not run.deterministic
    return dist, device, rundir


# ---------------------------------------------------------------- SGD and the cosine schedule

def sgd(params: Iterable[torch.nn.Parameter], *, lr: float, momentum: float, weight_decay: float,
        nesterov: bool = False) -> torch.optim.SGD:
    """The SGD of every loop's weights (search, training, the weight-sharing trainer).

    ``foreach`` (multi-tensor kernels): a DARTS supernet has ~1400 small weight tensors, and
    the default per-tensor loop on CPU cost ~105 ms per step against ~75 ms (C=16, 8 cells).
    Not ``fused``: torch's fused SGD starts every momentum at the same step, and a method that
    trains a sampled subset of the weights per step (RSWS) fails there."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                           foreach=True)


def cosine_schedule(optimizer: torch.optim.Optimizer, epochs: int,
                    lr_min: float) -> torch.optim.lr_scheduler.CosineAnnealingLR:
    """The cosine decay from the optimiser's lr to ``lr_min`` over ``epochs``, stepped once per
    epoch (its lr at epoch e is :func:`cosine_lr`); its state goes into the checkpoint."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=lr_min)


def cosine_lr(lr: float, lr_min: float, epoch: int, epochs: int) -> float:
    """The cosine schedule's lr at ``epoch`` (0-based) as a pure function of the epoch."""
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


__all__ = ["EpochRun", "LoopEnd", "LoopSettings", "claimed_run", "cosine_lr", "cosine_schedule", "run_epochs",
           "set_up_process", "sgd", "with_rollback"]
