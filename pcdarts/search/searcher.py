"""The Searcher: the search on the shared loop (docs/methods.md, "DARTS", STYLE §2.4).

Per step: a weight batch, and (while the architecture is being trained) an
architecture batch from a persistent cycling iterator; the arch step and the weight
step in the configured order. Per epoch: hooks, one line of ``history.jsonl`` with
the architecture weights, the genotype of that epoch and its parameter count, and a
checkpoint that holds everything needed to resume exactly (weights, architecture
state, both optimisers, scheduler, RNG states, data positions). Ctrl-C stops at the
next step boundary and saves a mid-epoch checkpoint first.

The pieces: the loop (epochs, steps, stops, non-finite watch, checkpoints, rollback) is
:mod:`pcdarts.runs.loop`'s; the data :mod:`pcdarts.search.splits`, the per-epoch reporting
:mod:`pcdarts.search.report`, the checkpoint :mod:`pcdarts.search.state`; this module
holds the step, the epoch end and the assembly of the run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import torch.nn as nn

from pcdarts import runs
from pcdarts.analysis import tensorboard
from pcdarts.search.config import (Config, SearchConfig, build_config, current_section, load_config_file,
                                   merge_onto_preset)
from pcdarts.distributed import all_reduce_mean, all_reduce_sum, check_identical
from pcdarts.errors import ConfigError
from pcdarts.genotype import Genotype
from pcdarts.methods import Method, SearchContext, WeightStepInfo
from pcdarts.objectives.base import EpochEnd, epoch_end
from pcdarts.runs.loop import (EpochRun, LoopSettings, claimed_run, cosine_schedule, run_epochs, set_up_process,
                               sgd, with_rollback)
from pcdarts.search.build import build_components
from pcdarts.search.report import SearchReport, closed_run, epoch_losses
from pcdarts.search.splits import SearchData
from pcdarts.search.state import SearchState
from pcdarts.search.structure import SupernetStructure

CHECKPOINT = runs.CHECKPOINT



@dataclass
class SearchResult:
    """What a search returns: the final genotype, the per-epoch history and where it all is."""

    genotype: Genotype
    history: list[dict[str, Any]]
    run_dir: Path
    config: Config
    interrupted: bool = False
    extras: dict[str, Any] = field(default_factory=dict)
    stop_signal: str = ""  # "SIGINT" or "SIGTERM" when a signal stopped it (the CLI's exit code follows it)


def default_run_dir(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.space.name}-{cfg.method_name}-{cfg.data.dataset}-s{cfg.run.seed}-{stamp}"


def new_run_dir(cfg: Config) -> runs.RunDir:
    """The run directory of a new search: checked now (an existing run needs ``run.overwrite``),
    claimed only when the run starts, after its data, supernet and method are built."""
    return runs.RunDir(Path(cfg.run.out) if cfg.run.out else default_run_dir(cfg), overwrite=cfg.run.overwrite,
                       command="pcdarts search")


def check_resumable(run_dir: Union[str, Path], command: str = "pcdarts search --resume") -> Path:
    """A search run directory that can be resumed or derived from (one-line RunDirError otherwise)."""
    return runs.check_resumable(run_dir, "search", command)


def weight_optimizer(params: list[nn.Parameter], s: SearchConfig) -> torch.optim.SGD:
    """The SGD of the supernet weights, as the search config sets it."""
    return sgd(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay, nesterov=s.nesterov)


def weight_schedule(optimizer: torch.optim.Optimizer, s: SearchConfig) -> torch.optim.lr_scheduler.CosineAnnealingLR:
    """The cosine schedule of the weight learning rate over the search, stepped per epoch."""
    return cosine_schedule(optimizer, s.epochs, s.lr_min)


# the torch.compile backend of search.compile (tests use "aot_eager": seconds instead of minutes)
COMPILE_BACKEND = "inductor"


def compile_supernet(supernet: nn.Module, cudagraphs: bool = False) -> nn.Module:
    """``torch.compile`` of the supernet (``search.compile``; ``cudagraphs``: mode
    ``reduce-overhead``, which captures the compiled forward and backward in CUDA graphs).

    The fast path traces with zero graph breaks: dynamo traces its autograd functions'
    forward and backward (``tests/test_compile.py`` checks it)."""
    if cudagraphs:
        return torch.compile(supernet, backend=COMPILE_BACKEND, mode="reduce-overhead")
    return torch.compile(supernet, backend=COMPILE_BACKEND)


def weight_step_info(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> WeightStepInfo:
    """The weight optimiser's current settings and momenta (for the 2nd-order virtual step)."""
    group = optimizer.param_groups[0]
    bufs = [optimizer.state.get(p, {}).get("momentum_buffer") for p in params]
    return WeightStepInfo(lr=group["lr"], momentum=group["momentum"], weight_decay=group["weight_decay"],
                          momentum_buffers=bufs)


def weight_step(method: Method, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, torch.Tensor],
                ctx: SearchContext, *, grad_clip: float, after_backward: Optional[Callable[[], None]] = None,
                model: Optional[nn.Module] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step of the supernet weights (``ctx.weight_params``) at the mixing the method
    gives for this batch (:meth:`Method.weight_mixing`: its current mixing weights unless it
    perturbs them).

    The one weight step of every search: the Searcher (hence the benchmark) and the
    memory planner call it. Returns (loss, the objective's metrics), still on the device.
    ``after_backward`` runs between the backward pass and the clip (the Searcher averages the
    gradients DDP does not own there: an objective's own parameters). ``model``: the module
    the loss runs through when it is not ``ctx.supernet`` (the DDP wrapper under torchrun);
    ``weight_mixing`` always sees the bare supernet.
    """
    mixing = method.weight_mixing(ctx, batch)  # no graph through the architecture
    if model is not None:
        ctx = dataclasses.replace(ctx, supernet=model)
    optimizer.zero_grad(set_to_none=True)
    loss, metrics = method.loss(ctx, batch, mixing, "weight")
    loss.backward()
    if after_backward is not None:
        after_backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(ctx.weight_params, grad_clip, foreach=True)  # one norm kernel, not ~1400
    optimizer.step()
    return loss, metrics


class Searcher(SupernetStructure, SearchState, EpochRun):
    """Builds data, supernet, method and optimisers from a Config and runs the search on the
    shared loop (:func:`pcdarts.runs.loop.run_epochs`): this class supplies the step and the
    epoch end; the epoch's reporting is :class:`~pcdarts.search.report.SearchReport`'s, the
    checkpoint :class:`~pcdarts.search.state.SearchState`'s, the data
    :class:`~pcdarts.search.splits.SearchData`'s.

    Args:
        cfg: the run's configuration.
        run_dir: where files go: a :class:`~pcdarts.runs.RunDir` (see :func:`new_run_dir`) or a
            path. Nothing is written there before :meth:`run` starts.
        resume: load ``run_dir/checkpoint.pt`` and continue from it.
        trust_checkpoint: the checkpoint may be unpickled in full when it needs that (an older
            pcdarts's format); only for a source the user trusts (``--trust-checkpoint``).
    """

    _eager_next = False  # compiled search: the next search step runs eagerly (a new structure)
    _eager_now = False  # compiled search: torch.compiler's "force_eager" stance is on

    def __init__(self, cfg: Config, run_dir: Union[Path, str, runs.RunDir], *, resume: bool = False,
                 trust_checkpoint: bool = False) -> None:
        self.rundir = run_dir if isinstance(run_dir, runs.RunDir) else runs.RunDir(
            run_dir, overwrite=True, resume=resume)
        self.cfg, self.run_dir = cfg, self.rundir.path
        self.trust_checkpoint = trust_checkpoint
        # the same seed on every rank: identical architecture initialisation and identical draws
        # from the global generator (random channel masks); ranks differ only in their data shard
        self.dist, self.device, self.rundir = set_up_process(cfg.run, self.rundir)
        if self.dist.is_distributed and (cfg.search.compile or cfg.search.cudagraphs):
            raise ConfigError("search.compile is not supported under torchrun yet; drop --search.compile")
        if cfg.search.cudagraphs and self.device.type != "cuda":
            raise ConfigError(f"search.cudagraphs needs a CUDA device (run.device is {self.device.type}); "
                              "drop --search.cudagraphs")
        self.data = SearchData(cfg, self.device, self.dist)
        self.train_loader, self.arch_loader = self.data.train_loader, self.data.arch_loader
        self.eval_loader, self.data_info = self.data.eval_loader, self.data.info
        self.num_classes, self.in_channels = self.data.num_classes, self.data.in_channels
        self.input_size = self.data.input_size
        checkpoint = runs.load_checkpoint(self.run_dir / CHECKPOINT, "search", "pcdarts search --resume",
                                          config=cfg.to_dict(), sections=("method", "space"),
                                          trust=trust_checkpoint, normalise=current_section) if resume else None
        # the one assembly (pcdarts.search.build): space -> supernet with the method's options -> method ->
        # prepare_supernet -> masks (the checkpoint's, or zero-shot pruning of a new run) -> objective -> weights
        parts = build_components(cfg, input_shape=(self.in_channels, self.input_size, self.input_size),
                                 num_classes=self.num_classes, device=self.device, checkpoint=checkpoint,
                                 sample_batches=self.data.fixed_batches)
        self.space, self.supernet, self.method = parts.space, parts.supernet, parts.method
        self.objective = parts.objective
        self.k, self.impl, self.prune_report = parts.k, parts.impl, parts.prune_report
        # every architecture random draw (Dirichlet samples, random masks) comes from here
        self.arch_generator = parts.generator
        # One network, three roles: ``supernet`` the module (architecture steps, evaluation, scorers,
        # checkpoints); ``step_supernet`` what a search step calls (the supernet or its compiled wrapper,
        # which shares the parameters); ``weight_supernet`` what the weight step calls (the DDP wrapper
        # under torchrun, else ``step_supernet``).
        self.step_supernet = self.supernet
        if cfg.search.compile or cfg.search.cudagraphs:
            self.step_supernet = compile_supernet(self.supernet, cfg.search.cudagraphs)
            self._eager_next = True
        unknown = sorted(set(self.method.data_streams) - {"train", "arch"}) if self.method.owns_step else []
        if unknown:
            raise ConfigError(f"method {cfg.method_name!r} asks for data streams {unknown}; the search provides "
                              "'train' (the weight split) and 'arch' (the architecture split)")
        self.objective_has_accuracy = True  # until a step's metrics say otherwise
        s = cfg.search
        self.weight_params = parts.weight_params
        self.weight_supernet = self._data_parallel()
        self.optimizer = self._new_optimizer()
        self.scheduler = self._new_schedule()
        self.epoch, self.step = 0, 0
        self.meters = self._zero_meters()
        self.watch = runs.NonFiniteWatch(("weight", "arch"), self.device, s.log_every)
        shape = {"num_classes": self.num_classes, "in_channels": self.in_channels, "input_size": self.input_size}
        self.tb = tensorboard.writer(self.run_dir, cfg.run.tensorboard and self.dist.is_main)
        self.report = SearchReport(cfg, self.space, self.run_dir, shape, self.dist.is_main, self.tb)
        if checkpoint is not None:
            self._load_checkpoint(checkpoint)

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per finished epoch (what ``history.jsonl`` holds)."""
        return self.report.history

    # ------------------------------------------------------------------ setup
    def _zero_meters(self) -> dict[str, torch.Tensor]:
        return {k: torch.zeros((), device=self.device, dtype=torch.float64)
                for k in ("loss", "correct", "n", "arch_loss", "arch_correct", "arch_n")}

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda" and self.cfg.search.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _new_optimizer(self) -> torch.optim.SGD:
        return weight_optimizer(self.weight_params, self.cfg.search)

    def _new_schedule(self) -> torch.optim.lr_scheduler.CosineAnnealingLR:
        return weight_schedule(self.optimizer, self.cfg.search)

    def _weight_step_info(self) -> WeightStepInfo:
        return weight_step_info(self.optimizer, self.weight_params)

    def _structure_changed(self) -> None:
        """Compiled search: the rest of this step and the next step run eagerly (see :meth:`_force_eager`)."""
        self._eager_next = True
        self._force_eager(True)

    def _force_eager(self, on: bool) -> None:
        """Compiled search: run the compiled supernet eagerly (``on``) until the step ends.

        The first step of a structure (at the start, after a prune or widen) runs eagerly: it
        builds the fast path's cached plans, Python state a trace would read, guard on and
        rebuild, so that each structure is traced once per step kind instead of twice."""
        set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6; older: one extra trace
        if getattr(self, "step_supernet", None) is getattr(self, "supernet", None) or set_stance is None \
                or on == self._eager_now:
            return
        set_stance("force_eager" if on else "default")
        self._eager_now = on

    def context(self) -> SearchContext:
        return SearchContext(supernet=self.step_supernet, objective=self.objective, weight_params=self.weight_params,
                             weight_step_info=self._weight_step_info, autocast=self._autocast, epoch=self.epoch,
                             epochs=self.cfg.search.epochs, steps_per_epoch=self.train_loader.steps_per_epoch,
                             generator=self.arch_generator, prune=self.prune, widen=self.widen,
                             sample_batches=self.sample_batches, all_reduce_grads=all_reduce_mean)

    # ------------------------------------------------------------------ steps
    def weight_step(self, batch: tuple[torch.Tensor, torch.Tensor], ctx: SearchContext) -> dict[str, Any]:
        x, y = batch
        loss, metrics = weight_step(self.method, self.optimizer, batch, ctx, grad_clip=self.cfg.search.grad_clip,
                                    after_backward=self._average_objective_grads if self.dist.is_distributed
                                    else None,
                                    # under torchrun: the step goes through DDP
                                    model=(self.weight_supernet if self.weight_supernet is not self.step_supernet
                                           else None))
        self.watch.observe("weight", loss)
        m = self.meters
        m["loss"] += loss.detach() * y.numel()
        self.objective_has_accuracy = "correct" in metrics  # a Python check: no sync
        m["correct"] += metrics.get("correct", 0)
        m["n"] += y.numel()
        return metrics

    def search_step(self, arch_active: bool, ctx: SearchContext) -> None:
        if self._eager_next:
            self._eager_next = False
            self._force_eager(True)
        try:
            self._search_step(arch_active, ctx)
        finally:
            self._force_eager(False)

    def _search_step(self, arch_active: bool, ctx: SearchContext) -> None:
        if self.method.owns_step:
            streams = {"train": self.train_loader, "arch": self.arch_loader}
            batches = {name: streams[name].next() for name in self.method.data_streams}
            self._record_arch(self.method.step(ctx, batches, lambda b: self.weight_step(b, ctx)))
            return
        batch = self.train_loader.next()
        arch_batch = self.arch_loader.next() if arch_active else None  # no arch data during warm-up
        order = ["arch", "weight"] if self.cfg.search.step_order == "arch-first" else ["weight", "arch"]
        for what in order:
            if what == "weight":
                self.weight_step(batch, ctx)
            elif arch_batch is not None:
                self._record_arch(self.method.arch_step(ctx, batch, arch_batch))

    def _record_arch(self, out: dict[str, Any]) -> None:
        if out:
            self.watch.observe("arch", out["loss"])
            m = self.meters
            m["arch_loss"] += out["loss"].double() * out["n"]
            m["arch_correct"] += out.get("correct", 0)
            m["arch_n"] += out["n"]

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss and accuracy of the current supernet on the whole architecture split (eval mode)."""
        self.supernet.eval()
        self.objective.eval()
        mixing = self.method.mixing()
        tot = torch.zeros(3, device=self.device, dtype=torch.float64)
        has_acc = True
        for x, y in self.eval_loader:
            with self._autocast():
                loss, metrics = self.objective(self.supernet, (x, y), mixing)
            has_acc = has_acc and "correct" in metrics
            tot[0] += loss.double() * y.numel()
            tot[1] += metrics.get("correct", 0)
            tot[2] += y.numel()
        self.supernet.train()
        self.objective.train()
        all_reduce_sum([tot])  # every rank evaluated its shard of the split
        loss, correct, n = tot.tolist()
        out = {"valid_loss": loss / max(n, 1)}
        if has_acc:
            out["valid_acc"] = 100.0 * correct / max(n, 1)
        return out

    def derive(self) -> Genotype:
        return self.space.derive(self.method.scores(self.context()), getattr(self.supernet, "masks", None),
                                 self.method.derive_rule())

    def sample_batches(self, n: int, split: str = "arch") -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``n`` batches of a fixed, un-augmented view of a split (for scorers). Not
        sharded under torchrun: every rank scores the same images, so that decisions taken from
        the scores (IS-DARTS's shrinking, zero-shot pruning) are identical on every rank."""
        if split not in self.data.splits:
            raise ValueError(f"sample_batches: split must be one of {', '.join(self.data.splits)}, got {split!r}")
        self._agree_buffers()  # the scorer about to run reads the batch-norm statistics
        return self.data.fixed_batches(n, split)

    # ------------------------------------------------------------------ the run
    def run(self, stop_after_steps: Optional[int] = None) -> SearchResult:
        """Run (or continue) the search to the last epoch.

        The run directory is claimed here (an old run in it is moved aside and deleted
        once this run's first checkpoint exists); a failure before that puts it back.
        A non-finite loss is rolled back from (``search.rollback``) or stops the run.

        Args:
            stop_after_steps: stop after this many steps of this call, saving a mid-epoch
                checkpoint (what Ctrl-C does; used by tests to simulate an interruption).
        """
        try:
            with claimed_run(self.rundir, [self.tb]):
                return with_rollback(lambda: self._run(stop_after_steps), self.rollback)
        finally:
            self._force_eager(False)  # a structure change at the last epoch's end left it on

    def _run(self, stop_after_steps: Optional[int]) -> SearchResult:
        cfg, s = self.cfg, self.cfg.search
        main = self.dist.is_main
        if self.rundir.resume and self.epoch >= s.epochs and closed_run(self.run_dir):
            if main:
                print(f"the search in {self.run_dir} is already complete ({s.epochs}/{s.epochs} epochs); "
                      "nothing to resume", flush=True)
            return SearchResult(self.derive(), self.history, self.run_dir, cfg)
        if main and self.rundir.resume:  # printed with --no-progress too: batch jobs have no terminal
            print(runs.resume_message(self.epoch, s.epochs, self.step, self.train_loader.steps_per_epoch), flush=True)
        if main and self.epoch == 0 and self.step == 0:
            self.report.write_start(self.device, {
                "impl": self.impl, "world_size": self.dist.world_size, "data": self.data_info,
                **({"pruning": self.prune_report.to_dict()} if self.prune_report is not None else {})})
            self._record_reference_passes()
        self._ctx = self.context()
        self.supernet.train()
        if self.epoch == 0 and self.step == 0:
            self.method.on_search_start(self._ctx)
        end = run_epochs(self, LoopSettings(
            epochs=s.epochs, command="pcdarts search", run_dir=self.run_dir, device=self.device, main=main,
            progress=cfg.run.progress, log_every=s.log_every, checkpoint_every=s.checkpoint_every,
            stop_after_steps=stop_after_steps))
        if end.interrupted:
            return SearchResult(self.derive(), self.history, self.run_dir, cfg, interrupted=True,
                                stop_signal=end.signal_name)
        genotype = self.derive()
        self.report.finish(genotype, self.epoch, self.device)
        return SearchResult(genotype, self.history, self.run_dir, cfg)

    # ------------------------------------------------------------------ the loop's hooks (EpochRun)
    def steps_per_epoch(self) -> int:
        return self.train_loader.steps_per_epoch

    def begin_epoch(self) -> None:
        self._ctx.epoch = self.epoch
        if self.step == 0:
            self.method.on_epoch_start(self.epoch, self._ctx)
            self._epoch_time_before = 0.0
        self._epoch_t0 = time.perf_counter()  # a resumed epoch adds to the time spent before the stop
        self._arch_active = self.method.is_arch_active(self.epoch)

    def take_step(self) -> None:
        self.search_step(self._arch_active, self._ctx)

    def postfix(self) -> dict[str, str]:
        m = self.meters
        n = max(float(m["n"]), 1.0)
        out = {"loss": f"{float(m['loss']) / n:.3f}"}
        if self.objective_has_accuracy:
            out["acc"] = f"{100 * float(m['correct']) / n:.1f}"
        if float(m["arch_n"]) > 0 and self.objective_has_accuracy:
            out["arch_acc"] = f"{100 * float(m['arch_correct']) / float(m['arch_n']):.1f}"
        return out

    def end_epoch(self) -> None:
        """The epoch's end: the method's hook, the schedule, one history record (with the
        validation pass when due), the objective's epoch-end hook, then the checkpoint."""
        s, ctx = self.cfg.search, self._ctx
        self._agree_buffers()
        self.check_finite(statistics=True)
        lr = self.optimizer.param_groups[0]["lr"]
        self.method.on_epoch_end(self.epoch, ctx)
        with warnings.catch_warnings():
            # a prune at this epoch's end rebuilt the optimiser, which has not stepped yet:
            # stepping the (global-epoch) schedule now is right, not the mistake torch warns about
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()
        if self.dist.is_distributed:
            all_reduce_sum(list(self.meters.values()))  # the epoch's sums over every rank's shard
            check_identical(self.method.arch_parameters() + list(self.method.arch.buffers()),
                            "the architecture parameters")
        rec = epoch_losses({k: float(v) for k, v in self.meters.items()}, epoch=self.epoch, lr=lr,
                           arch_active=self.method.is_arch_active(self.epoch),
                           has_accuracy=self.objective_has_accuracy)
        if self.epoch == s.epochs - 1 or (s.eval_every and (self.epoch + 1) % s.eval_every == 0):
            rec.update(self.evaluate())
        rec = self.report.epoch_record(rec, self.derive(), self.method, getattr(self.supernet, "masks", None) or {},
                                       ctx)
        rec["time_s"] = round(self._epoch_seconds(), 3)
        self._epoch_time_before, self._epoch_t0 = 0.0, None
        self.report.check_losses(rec, classifying=self.objective_has_accuracy, weight_hint=self._weight_lr_hint(),
                                 arch_hint=self.method.divergence_hint())
        self.report.publish(rec)
        if self.dist.is_main:
            # the objective's epoch-end hook (MAE's reconstruction picture); random states put back after it
            epoch_end(self.objective, EpochEnd(self.epoch, s.epochs, self.run_dir, self.cfg.run.plots, self.supernet,
                                               lambda: self.data.fixed_batches(1, "arch")[0], self.method.mixing),
                      [self.arch_generator])
        self.epoch += 1
        self.step = 0
        self.meters = self._zero_meters()
        self.save_checkpoint()


def search(config: Union[Config, dict[str, Any], None] = None, *, preset: str = "quick",
           resume: Union[str, Path, None] = None, stop_after_steps: Optional[int] = None,
           trust_checkpoint: bool = False) -> SearchResult:
    """Run an architecture search (the Python twin of ``pcdarts search``).

    Args:
        config: a :class:`Config` (used as is), or a nested dict of sections (as in a preset
            YAML) laid over ``preset``; None runs the preset.
        preset: preset name or YAML path the dict is laid over (default ``quick``, like the CLI).
        resume: a run directory to continue; its saved config is used.
        stop_after_steps: stop after this many steps, checkpointing (for tests and time-boxed runs).
        trust_checkpoint: with ``resume``, unpickle a checkpoint in full when it needs that (one
            written by an older pcdarts); only for a source you trust (``--trust-checkpoint``).

    Returns:
        SearchResult with ``.genotype``, ``.history`` and ``.run_dir``.
    """
    if resume is not None:
        run_dir = check_resumable(resume)
        cfg = load_config_file(run_dir / "config.yaml")
        searcher = Searcher(cfg, runs.RunDir(run_dir, resume=True), resume=True, trust_checkpoint=trust_checkpoint)
    else:
        cfg = config if isinstance(config, Config) else build_config(merge_onto_preset(preset, config or {}))
        searcher = Searcher(cfg, new_run_dir(cfg))  # builds everything before the directory is touched
    return searcher.run(stop_after_steps=stop_after_steps)
