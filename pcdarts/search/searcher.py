"""The Searcher: the one search loop (docs/methods.md, "DARTS", STYLE §2.4).

Per step: a weight batch, and (while the architecture is being trained) an
architecture batch from a persistent cycling iterator; the arch step and the weight
step in the configured order. Per epoch: hooks, one line of ``history.jsonl`` with
the architecture weights, the genotype of that epoch and its parameter count, and a
checkpoint that holds everything needed to resume exactly (weights, architecture
state, both optimisers, scheduler, RNG states, data positions). Ctrl-C stops at the
next step boundary and saves a mid-epoch checkpoint first.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn as nn

from pcdarts import runs, utils
from pcdarts.config import Config, SearchConfig, build_config, has_labels, load_config_file, merge_onto_preset
from pcdarts.analysis import tensorboard
from pcdarts.analysis.stats import collapse_stats, collapse_warning
from pcdarts.data.sources import default_augment, labels_fingerprint, load_dataset, split_indices
from pcdarts.distributed import (agreed_stop, all_reduce_max, all_reduce_mean, all_reduce_sum, average_buffers,
                                  check_identical, dist_info, init_distributed, per_process_batch, resolve_device,
                                  wrap_ddp)
from pcdarts.errors import ConfigError, DivergenceError
from pcdarts.genotype import Genotype, save_genotype
from pcdarts.data.device_loader import Augment, DeviceLoader
from pcdarts.methods import Method, SearchContext, WeightStepInfo
from pcdarts.objectives.base import EpochEnd, SupernetCall, epoch_end
from pcdarts.registry import METHODS
from pcdarts.nn.edges import widen_edges, widen_tensor
from pcdarts.search.build import build_components

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
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay, nesterov=s.nesterov)


def weight_schedule(optimizer: torch.optim.Optimizer, s: SearchConfig) -> torch.optim.lr_scheduler.CosineAnnealingLR:
    """The cosine schedule of the weight learning rate over the search, stepped per epoch."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=s.epochs, eta_min=s.lr_min)


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
        nn.utils.clip_grad_norm_(ctx.weight_params, grad_clip)
    optimizer.step()
    return loss, metrics


class Searcher:
    """Builds data, supernet, method and optimisers from a Config and runs the search.

    Args:
        cfg: the run's configuration.
        run_dir: where files go: a :class:`~pcdarts.runs.RunDir` (see :func:`new_run_dir`) or a
            path. Nothing is written there before :meth:`run` starts.
        resume: load ``run_dir/checkpoint.pt`` and continue from it.
        trust_checkpoint: the checkpoint may be unpickled in full when it needs that (an older
            pcdarts's format); only for a source the user trusts (``--trust-checkpoint``).
    """

    # the current epoch's clock: seconds spent in it before the last resume (kept in the
    # checkpoint), and when this process started on it (perf_counter; None between epochs)
    _epoch_time_before: float = 0.0
    _epoch_t0: Optional[float] = None

    def __init__(self, cfg: Config, run_dir: Union[Path, str, runs.RunDir], *, resume: bool = False,
                 trust_checkpoint: bool = False) -> None:
        self.rundir = run_dir if isinstance(run_dir, runs.RunDir) else runs.RunDir(
            run_dir, overwrite=True, resume=resume)
        self.cfg, self.run_dir = cfg, self.rundir.path
        self.trust_checkpoint = trust_checkpoint
        self.dist = dist_info()
        self.device = resolve_device(cfg.run.device, self.dist)
        init_distributed(self.dist, self.device)  # torchrun: join the process group (no-op alone)
        if not self.dist.is_main:  # only rank 0 touches the run directory
            self.rundir = runs.RunDir(self.run_dir, resume=True)
        if self.dist.is_distributed and (cfg.search.compile or cfg.search.cudagraphs):
            raise ConfigError("search.compile is not supported under torchrun yet; drop --search.compile")
        if cfg.search.cudagraphs and self.device.type != "cuda":
            raise ConfigError(f"search.cudagraphs needs a CUDA device (run.device is {self.device.type}); "
                              "drop --search.cudagraphs")
        utils.set_cpu_arithmetic(cfg.run.threads, cfg.run.flush_denormal)
        # the same seed on every rank: identical architecture initialisation and identical draws
        # from the global generator (random channel masks); ranks differ only in their data shard
        utils.seed_everything(cfg.run.seed)
        if cfg.run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.run.deterministic

        self._build_data()
        checkpoint = runs.load_checkpoint(self.run_dir / CHECKPOINT, "search", "pcdarts search --resume",
                                          config=cfg.to_dict(), sections=("method", "space"),
                                          trust=trust_checkpoint) if resume else None
        # the one assembly (pcdarts.search.build): space -> supernet with the method's options -> method ->
        # prepare_supernet -> masks (the checkpoint's, or zero-shot pruning of a new run) -> objective -> weights
        parts = build_components(cfg, input_shape=(self.in_channels, self.input_size, self.input_size),
                                 num_classes=self.num_classes, device=self.device, checkpoint=checkpoint,
                                 sample_batches=self._fixed_batches)
        self.space, self.supernet, self.method = parts.space, parts.supernet, parts.method
        self.objective = parts.objective
        self.k, self.impl, self.prune_report = parts.k, parts.impl, parts.prune_report
        # every architecture random draw (Dirichlet samples, random masks) comes from here
        self.arch_generator = parts.generator
        self.model = self.supernet  # what the step calls; a compiled wrapper shares the parameters
        self._eager_next = False  # the next search step runs eagerly (compiled search: new structure)
        self._eager_now = False
        if cfg.search.compile or cfg.search.cudagraphs:
            self.model = compile_supernet(self.supernet, cfg.search.cudagraphs)
            self._eager_next = True
        unknown = sorted(set(self.method.data_streams) - {"train", "arch"}) if self.method.owns_step else []
        if unknown:
            raise ConfigError(f"method {cfg.method_name!r} asks for data streams {unknown}; the search provides "
                              "'train' (the weight split) and 'arch' (the architecture split)")
        self.objective_has_accuracy = True  # until a step's metrics say otherwise
        s = cfg.search
        self.weight_params = parts.weight_params
        self.weight_model = self._data_parallel()
        self.optimizer = weight_optimizer(self.weight_params, s)
        self.scheduler = weight_schedule(self.optimizer, s)
        self.epoch, self.step = 0, 0
        self._rollbacks = 0  # search.rollback used so far (kept in the checkpoint)
        self.meters = self._zero_meters()
        self.watch = runs.NonFiniteWatch(("weight", "arch"), self.device, s.log_every)
        self.history: list[dict[str, Any]] = []
        self.tb = tensorboard.writer(self.run_dir, cfg.run.tensorboard and self.dist.is_main)
        if checkpoint is not None:
            self._load_checkpoint(checkpoint)

    # ------------------------------------------------------------------ setup
    def _build_data(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        ds = load_dataset(d.spec, "train", input_size=d.input_size, channels=d.channels,
                          bad_images=None if d.bad_images == "fail" else d.bad_images)
        images, labels = ds.images, ds.labels
        split_seed = cfg.run.seed if d.split_seed is None else d.split_seed
        if d.max_samples is not None and d.max_samples < len(labels):
            g = torch.Generator().manual_seed(split_seed)
            keep = torch.randperm(len(labels), generator=g)[: d.max_samples]
            images, labels = images[keep], labels[keep]
        self.num_classes, self.in_channels = ds.num_classes, images.shape[1]
        self.input_size = images.shape[-1]
        pad, flip = default_augment(d.dataset, self.input_size)
        aug = Augment(crop_padding=pad if d.crop_padding is None else d.crop_padding,
                      flip=flip if d.flip is None else d.flip, cutout=d.cutout)
        common = dict(mean=ds.mean, std=ds.std, device=self.device, rank=self.dist.rank,
                      world_size=self.dist.world_size, channels_last=self.device.type == "cuda")
        # one device copy per split: the loaders that read the same split share it
        if METHODS.get(cfg.method_name).needs_arch_split:
            w_idx, a_idx = split_indices(len(labels), d.train_portion, split_seed)
            weight_split = images[w_idx].to(self.device), labels[w_idx].to(self.device)
            arch_split = images[a_idx].to(self.device), labels[a_idx].to(self.device)
        else:
            w_idx = a_idx = torch.arange(len(labels))
            weight_split = arch_split = images.to(self.device), labels.to(self.device)
        s = cfg.search
        # search.batch_size is the global batch: each of the torchrun processes reads its share
        batch = per_process_batch(s.batch_size, self.dist.world_size, "search.batch_size")
        arch_field = "search.arch_batch_size" if s.arch_batch_size else "search.batch_size"
        arch_batch = per_process_batch(s.arch_batch_size or s.batch_size, self.dist.world_size, arch_field)
        self.train_loader = DeviceLoader(*weight_split, batch, augment=aug, seed=cfg.run.seed,
                                         batch_field="search.batch_size", **common)
        self.arch_loader = DeviceLoader(*arch_split, arch_batch, augment=aug, seed=cfg.run.seed + 1,
                                        batch_field=arch_field, **common)
        self.eval_loader = DeviceLoader(*arch_split, max(batch, 256), augment=None, shuffle=False,
                                        drop_last=False, **common)
        self._splits = {"train": weight_split, "arch": arch_split}
        self._loader_common = common
        self.data_info = {"dataset": d.spec, "fingerprint": labels_fingerprint(labels), "n_weight": len(w_idx),
                          "n_arch": len(a_idx), "augment": dataclasses.asdict(aug)}

    def _zero_meters(self) -> dict[str, torch.Tensor]:
        return {k: torch.zeros((), device=self.device, dtype=torch.float64)
                for k in ("loss", "correct", "n", "arch_loss", "arch_correct", "arch_n")}

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda" and self.cfg.search.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _weight_step_info(self) -> WeightStepInfo:
        return weight_step_info(self.optimizer, self.weight_params)

    def _force_eager(self, on: bool) -> None:
        """Compiled search: run the compiled supernet eagerly (``on``) until the step ends.

        The first step of a structure (at the start, after a prune or widen) runs eagerly: it
        builds the fast path's cached plans, Python state a trace would read, guard on and
        rebuild, so that each structure is traced once per step kind instead of twice."""
        set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6; older: one extra trace
        if self.model is self.supernet or set_stance is None or on == self._eager_now:
            return
        set_stance("force_eager" if on else "default")
        self._eager_now = on

    def prune(self, masks: dict[str, torch.Tensor]) -> None:
        """Remove ops from the supernet mid-search (the structure seam; see ``SearchContext.prune``)."""
        self._force_eager(True)
        self.supernet.prune(masks)
        self._rebuild_optimizer()

    def widen(self, k: int) -> None:
        """Lower the partial-channel factor to ``k`` mid-search (see ``SearchContext.widen``)."""
        self._force_eager(True)
        moved = widen_edges(self.supernet, k, self.arch_generator)
        if self.device.type == "cuda":
            self.supernet.to(memory_format=torch.channels_last)
        self.k = k
        self._rebuild_optimizer(moved)

    def _data_parallel(self) -> nn.Module:
        """The module the weight step calls: under torchrun the supernet wrapped in PyTorch's
        DistributedDataParallel (its weight gradients averaged across ranks in the backward
        pass; unused ops allowed, since pruned and inactive ops take no part), else the
        supernet (or its compiled wrapper) itself. Architecture steps, evaluation and scorers
        call the bare supernet; their gradients are averaged by ``ctx.all_reduce_grads``."""
        if not self.dist.is_distributed:
            return self.model
        # channels_last conv weights: DDP's contiguous buckets cost a copy, not correctness
        warnings.filterwarnings("ignore", message=r"(?s).*Grad strides do not match bucket view strides")
        # SupernetCall: an objective reading stage outputs (MAE) also goes through DDP's forward;
        # batch-norm statistics are averaged wherever they are read (self._agree_buffers)
        return wrap_ddp(SupernetCall(self.supernet), self.device, find_unused=True)

    def _agree_buffers(self) -> None:
        """Under torchrun: the ranks' batch-norm running statistics (supernet and objective)
        averaged, before evaluation, scorers and the epoch end read them; no-op alone."""
        if self.dist.is_distributed:
            average_buffers(self.supernet)
            average_buffers(self.objective)

    def _average_objective_grads(self) -> None:
        """Average the gradients of the objective's own parameters (outside DDP) across ranks."""
        grads = [p.grad for p in self.objective.parameters() if p.grad is not None]
        if grads:
            all_reduce_mean(grads)

    def _rebuild_optimizer(self, moved: Sequence[tuple[Any, Any, list]] = ()) -> None:
        """A new weight optimiser over the live weights: momentum carried for survivors
        (widened like the weights for widened ones), the schedule kept on the global epoch;
        under torchrun DDP is rebuilt over the new parameters (every rank changes alike)."""
        s = self.cfg.search
        old = self.optimizer
        self.weight_params[:] = self._live_weights()  # the context shares the list
        self.weight_model = self._data_parallel()
        self.optimizer = weight_optimizer(self.weight_params, s)
        for p in self.weight_params:
            if p in old.state:
                self.optimizer.state[p] = old.state[p]
        for p_old, p_new, plan in moved:
            buf = old.state.get(p_old, {}).get("momentum_buffer")
            if buf is not None:
                self.optimizer.state[p_new] = {"momentum_buffer": widen_tensor(buf, plan)}
        schedule = self.scheduler.state_dict()
        self.scheduler = weight_schedule(self.optimizer, s)
        self.scheduler.load_state_dict(schedule)  # the global epoch, not a restart
        for group, old_group in zip(self.optimizer.param_groups, old.param_groups):
            group["lr"] = old_group["lr"]

    def context(self) -> SearchContext:
        return SearchContext(supernet=self.model, objective=self.objective, weight_params=self.weight_params,
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
                                    model=self.weight_model if self.weight_model is not self.model else None)
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

    def _live_weights(self) -> list[nn.Parameter]:
        """The weights the weight optimiser trains: the supernet's and the objective's (a decoder)."""
        return [p for m in (self.supernet, self.objective) for p in m.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ loop
    def run(self, stop_after_steps: Optional[int] = None) -> SearchResult:
        """Run (or continue) the search to the last epoch.

        The run directory is claimed here (an old run in it is moved aside and deleted
        once this run's first checkpoint exists); a failure before that puts it back.

        Args:
            stop_after_steps: stop after this many steps of this call, saving a mid-epoch
                checkpoint (what Ctrl-C does; used by tests to simulate an interruption).
        """
        with self.rundir.claimed():
            try:
                while True:
                    try:
                        return self._run(stop_after_steps)
                    except DivergenceError as e:
                        if not self._rollback(e):
                            raise
            finally:
                self._force_eager(False)  # a structure change at the last epoch's end left it on
                if self.tb is not None:
                    self.tb.close()

    def _rollback(self, error: DivergenceError) -> bool:
        """``search.rollback``: after a non-finite loss, reload the last good checkpoint, halve
        every learning rate (each param group of the weight optimiser with its cosine schedule,
        and the method's through :meth:`Method.scale_lr`) and continue; False (the error
        stands) when no rollback is left, no checkpoint exists or the structure changed since."""
        used = self._rollbacks
        path = self.run_dir / CHECKPOINT
        if used >= self.cfg.search.rollback or not path.is_file():
            return False
        ck = runs.load_checkpoint(path, "search", "pcdarts search (rollback)", trust=self.trust_checkpoint)
        if int(ck.get("structure", {}).get("k", self.k)) != self.k or any(
                not torch.equal(v.cpu(), ck.get("masks", {}).get(n, v).cpu())
                for n, v in getattr(self.supernet, "masks", {}).items()):
            return False  # ops were pruned or widened after it: the state no longer fits
        self._load_checkpoint(ck)
        self._rollbacks = used + 1
        self.watch.flags.zero_()
        for group in self.optimizer.param_groups:
            group["lr"] *= 0.5
        self.scheduler.base_lrs = [lr * 0.5 for lr in self.scheduler.base_lrs]
        self.scheduler.eta_min *= 0.5
        self.method.scale_lr(0.5)
        if self.dist.is_main:
            print(f"rollback {used + 1}/{self.cfg.search.rollback}: {str(error).split(':')[0]}; back to the "
                  f"checkpoint at epoch {self.epoch + 1} step {self.step} with the learning rates halved "
                  f"(weight lr now {self.optimizer.param_groups[0]['lr']:.3g})", flush=True)
        return True

    def _run(self, stop_after_steps: Optional[int]) -> SearchResult:
        cfg, s = self.cfg, self.cfg.search
        main = self.dist.is_main
        if self.rundir.resume and self.epoch >= s.epochs and self._finished():
            if main:
                print(f"the search in {self.run_dir} is already complete ({s.epochs}/{s.epochs} epochs); "
                      "nothing to resume", flush=True)
            return SearchResult(self.derive(), self.history, self.run_dir, cfg)
        if main and self.rundir.resume:  # printed with --no-progress too: batch jobs have no terminal
            print(runs.resume_message(self.epoch, s.epochs, self.step, self.train_loader.steps_per_epoch), flush=True)
        if main and self.epoch == 0 and self.step == 0:
            (self.run_dir / "config.yaml").write_text(cfg.to_yaml())
            utils.write_json(self.run_dir / "manifest.json",
                             utils.manifest(cfg.run.seed, str(self.device),
                                            {"kind": "search", "impl": self.impl, "world_size": self.dist.world_size,
                                             "data": self.data_info, "network": self._shape_info(),
                                             **({"pruning": self.prune_report.to_dict()}
                                                if self.prune_report is not None else {})}))
        steps = self.train_loader.steps_per_epoch
        ctx = self.context()
        self.supernet.train()
        if self.epoch == 0 and self.step == 0:
            self.method.on_search_start(ctx)
        done_steps = 0
        interrupted = False
        with runs.StopFlag() as stop:
            while self.epoch < s.epochs:
                ctx.epoch = self.epoch
                if self.step == 0:
                    self.method.on_epoch_start(self.epoch, ctx)
                    self._epoch_time_before = 0.0
                self._epoch_t0 = time.perf_counter()  # a resumed epoch adds to the time spent before the stop
                arch_active = self.method.is_arch_active(self.epoch)
                bar = utils.epoch_progress(main and cfg.run.progress, steps, self.step, self.epoch, s.epochs)
                while self.step < steps:
                    self.search_step(arch_active, ctx)
                    self.step += 1
                    done_steps += 1
                    if self.watch.due(self.step):
                        self._check_finite()
                    utils.progress_tick(bar, self.step, steps, s.log_every, self._postfix)
                    halt = agreed_stop(stop.requested, self.watch.due(self.step), self.device) or (
                        stop_after_steps is not None and done_steps >= stop_after_steps)
                    if halt and self.step < steps:
                        break
                    if s.checkpoint_every and self.step % s.checkpoint_every == 0 and self.step < steps:
                        self.save_checkpoint()
                if bar is not None:
                    bar.close()
                if self.step < steps:  # stopped mid-epoch
                    self.save_checkpoint()
                    interrupted = True
                    break
                self._end_epoch(ctx)
                # a stop after the last epoch finishes the run (its final files take a moment)
                if self.epoch < s.epochs and (agreed_stop(stop.requested, True, self.device) or (
                        stop_after_steps is not None and done_steps >= stop_after_steps)):
                    interrupted = True
                    break
        if interrupted:
            if main:  # printed with --no-progress too: batch jobs have no terminal
                print(runs.stop_message("pcdarts search", self.run_dir, self.epoch, s.epochs, self.step, steps,
                                        stop.signal_name), flush=True)
            return SearchResult(self.derive(), self.history, self.run_dir, cfg, interrupted=True,
                                stop_signal=stop.signal_name)
        return self._finish()

    def _finished(self) -> bool:
        """Whether the run's final files exist (genotype.json, the manifest's end time): a run
        resumed after them has nothing left to do."""
        try:
            closed = "end_time" in json.loads((self.run_dir / "manifest.json").read_text())
        except (OSError, ValueError):
            closed = False
        return closed and (self.run_dir / "genotype.json").is_file()

    def _postfix(self) -> dict[str, str]:
        m = self.meters
        n = max(float(m["n"]), 1.0)
        out = {"loss": f"{float(m['loss']) / n:.3f}"}
        if self.objective_has_accuracy:
            out["acc"] = f"{100 * float(m['correct']) / n:.1f}"
        if float(m["arch_n"]) > 0 and self.objective_has_accuracy:
            out["arch_acc"] = f"{100 * float(m['arch_correct']) / float(m['arch_n']):.1f}"
        return out

    def _check_finite(self, statistics: bool = False) -> None:
        """Stop with a one-line DivergenceError if a loss or an architecture weight went non-finite,
        or (``statistics``: at epoch ends and before checkpoints) a batch-norm running statistic;
        under torchrun on every rank together: the verdicts are combined."""
        bad = self.watch.first_bad()
        buffer = None
        if statistics and bad is None:
            buffer = runs.nonfinite_buffer({"supernet": self.supernet, "objective": self.objective})
        if buffer is not None:
            bad = "statistics"
        if self.dist.is_distributed:
            code = all_reduce_max({None: 0, "weight": 1, "arch": 2, "statistics": 3}[bad], self.device)
            bad = {0: None, 1: "weight", 2: "arch", 3: "statistics"}[int(code)]
        arch_bad = bad is None and not all(bool(torch.isfinite(p).all()) for p in self.method.arch_parameters())
        if bad is None and not arch_bad:
            return
        steps = self.train_loader.steps_per_epoch
        where = f"by epoch {self.epoch + 1}/{self.cfg.search.epochs} step {self.step}/{steps}"
        if bad in ("weight", "statistics"):
            what = ("the weight step's loss" if bad == "weight" else
                    f"the batch-norm running statistics ({buffer or 'on another rank'})")
            hint = self._weight_lr_hint()
        else:
            what = "the architecture step's loss" if bad == "arch" else "the architecture weights"
            hint = self.method.divergence_hint()
        raise DivergenceError(runs.divergence_message(what, where, hint, self.run_dir / CHECKPOINT))

    def _weight_lr_hint(self) -> str:
        return (f"the weight learning rate is probably too high (search.lr={self.cfg.search.lr:g}); "
                "lower it and start again")

    def _check_epoch_losses(self, rec: dict[str, Any]) -> None:
        """The epoch's record: a non-finite validation loss is divergence (a DivergenceError, so
        ``search.rollback`` applies); a finite train or architecture loss more than
        ``runs.EXPLOSION_FACTOR`` times its reference gets a warning line. The reference is the
        loss at chance, log(num_classes), for a classifying objective, else the first epoch's."""
        s = self.cfg.search
        where = f"in epoch {self.epoch + 1}/{s.epochs}"
        if "valid_loss" in rec and not math.isfinite(rec["valid_loss"]):
            raise DivergenceError(runs.divergence_message("the validation loss", where, self._weight_lr_hint(),
                                                          self.run_dir / CHECKPOINT))
        if not self.dist.is_main:
            return
        for key, what, hint in (("train_loss", "the train loss", self._weight_lr_hint()),
                                ("arch_loss", "the architecture loss", self.method.divergence_hint())):
            if self.objective_has_accuracy and self.num_classes > 1:
                reference, name = math.log(self.num_classes), f"the loss at chance, log({self.num_classes})"
            else:
                first = self.history[0].get(key) if self.history else None
                reference, name = first, "the first epoch's"
            message = runs.explosion_warning(what, rec.get(key, math.nan), reference, name, where, hint)
            if message:
                warnings.warn(message)
                return  # one line per epoch is enough

    def _shape_info(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "in_channels": self.in_channels, "input_size": self.input_size,
                "labelled": has_labels(self.cfg.data.dataset)}

    def _end_epoch(self, ctx: SearchContext) -> None:
        s = self.cfg.search
        self._agree_buffers()
        self._check_finite(statistics=True)
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
        m = {k: float(v) for k, v in self.meters.items()}
        rec: dict[str, Any] = {
            "epoch": self.epoch, "lr": lr,
            "train_loss": m["loss"] / max(m["n"], 1),
            "arch_active": self.method.is_arch_active(self.epoch),
        }
        if self.objective_has_accuracy:
            rec["train_acc"] = 100 * m["correct"] / max(m["n"], 1)
        if m["arch_n"] > 0:
            rec["arch_loss"] = m["arch_loss"] / m["arch_n"]
            if self.objective_has_accuracy:
                rec["arch_acc"] = 100 * m["arch_correct"] / m["arch_n"]
        last = self.epoch == s.epochs - 1
        if last or (s.eval_every and (self.epoch + 1) % s.eval_every == 0):
            rec.update(self.evaluate())
        genotype = self.derive()
        rec["genotype"] = str(genotype)
        rec.update(self._genotype_stats(genotype))
        if s.nb201_lookup and self.space.name == "nb201":
            rec["nb201"] = self._nb201_lookup(genotype)
        rec["primitives"] = list(self.space.primitives)
        rec.update(self.method.arch_weights())
        masks = getattr(self.supernet, "masks", None) or {}
        if any(not bool(m.all()) for m in masks.values()):  # ops were removed: the live ones, for the entropy
            rec["op_masks"] = {ct: m.int().cpu().tolist() for ct, m in masks.items()}
        rec.update(collapse_stats(genotype, rec.get("arch_weights") if self.method.op_weights_move else None,
                                  rec.get("op_masks")))
        extra = self.method.epoch_record(ctx)  # the method's own per-epoch fields (e.g. a student's loss)
        if set(extra) & set(rec):
            raise ValueError(f"{type(self.method).__name__}.epoch_record returns fields the search already "
                             f"logs: {sorted(set(extra) & set(rec))}; name them otherwise")
        rec.update(extra)
        rec["time_s"] = round(self._epoch_seconds(), 3)
        self._epoch_time_before, self._epoch_t0 = 0.0, None
        self._check_epoch_losses(rec)
        self.history.append(rec)
        if self.dist.is_main:
            utils.append_jsonl(self.run_dir / "history.jsonl", rec)
            if self.tb is not None:
                self.tb.epoch(rec)
            print(epoch_line(rec, s.epochs), flush=True)  # with --no-progress too: batch jobs have no terminal
            # the objective's epoch-end hook (MAE's reconstruction picture); random states put back after it
            epoch_end(self.objective, EpochEnd(self.epoch, s.epochs, self.run_dir, self.cfg.run.plots, self.supernet,
                                               lambda: self._fixed_batches(1, "arch")[0], self.method.mixing),
                      [self.arch_generator])
        self.epoch += 1
        self.step = 0
        self.meters = self._zero_meters()
        self.save_checkpoint()

    def _genotype_stats(self, genotype: Genotype) -> dict[str, Any]:
        st = self.space.genotype_stats(genotype, num_classes=self.num_classes, in_channels=self.in_channels,
                                       input_size=self.input_size, labelled=has_labels(self.cfg.data.dataset))
        return {"genotype_params_m": st["params"], "genotype_macs_m": st["macs"], "genotype_network": st["network"]}

    def _nb201_lookup(self, genotype: Genotype) -> dict[str, Any]:
        """Benchmark accuracies of this epoch's cell (the AutoDL code's most useful diagnostic)."""
        from pcdarts.nb201 import DATASETS, BenchmarkError, query
        out: dict[str, Any] = {}
        try:
            for ds in DATASETS:
                r = query(genotype, ds, table=self.cfg.search.nb201_table)
                out[ds] = {"valid": r.valid_acc_mean, "test": r.test_acc_mean}
        except BenchmarkError as e:
            warnings.warn(f"NAS-Bench-201 lookup disabled: {e}")
            self.cfg = dataclasses.replace(self.cfg, search=dataclasses.replace(self.cfg.search, nb201_lookup=False))
        return out

    def derive(self) -> Genotype:
        return self.space.derive(self.method.scores(self.context()), getattr(self.supernet, "masks", None),
                                 self.method.derive_rule())

    def sample_batches(self, n: int, split: str = "arch") -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``n`` batches of a fixed, un-augmented view of a split (for scorers). Not
        sharded under torchrun: every rank scores the same images, so that decisions taken from
        the scores (IS-DARTS's shrinking, zero-shot pruning) are identical on every rank."""
        if split not in self._splits:
            raise ValueError(f"sample_batches: split must be one of {', '.join(self._splits)}, got {split!r}")
        self._agree_buffers()  # the scorer about to run reads the batch-norm statistics
        return self._fixed_batches(n, split)

    def _fixed_batches(self, n: int, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self._splits[split]  # a fresh view each time: no loader position moves
        whole = {**self._loader_common, "rank": 0, "world_size": 1}
        view = DeviceLoader(images, labels, self.eval_loader.batch_size, augment=None, shuffle=False,
                            drop_last=False, **whole)
        out = []
        for batch in view:
            if len(out) == n:
                break
            out.append(batch)
        return out

    def _finish(self) -> SearchResult:
        genotype = self.derive()
        if self.dist.is_main:
            warning = collapse_warning(genotype, self.history[-1].get("arch_entropy") if self.history else None)
            if warning:
                warnings.warn(warning)
            save_genotype(genotype, self.run_dir / "genotype.json")
            if self.tb is not None:
                self.tb.cell(genotype, self.epoch)
            utils.close_manifest(self.run_dir, genotype=str(genotype),
                                 search_time_s=round(sum(r.get("time_s", 0.0) for r in self.history), 3),
                                 peak_memory_mib=round(utils.peak_memory_mib(self.device), 1),
                                 peak_memory_kind="CUDA allocated" if self.device.type == "cuda" else "process RSS")
            if self.cfg.run.plots:
                self._plots(genotype)
        return SearchResult(genotype, self.history, self.run_dir, self.cfg)

    def _plots(self, genotype: Genotype) -> None:
        try:
            from pcdarts.analysis.plot import plot_arch_weights, plot_genotype
            plot_genotype(genotype, self.run_dir / "genotype")
            if self.history:
                plot_arch_weights(self.history, self.run_dir / "arch_weights.png")
        except Exception as e:  # pictures are a convenience; never lose a finished search over them
            warnings.warn(f"could not draw the run's pictures: {e}")

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "pcdarts-search", "version": runs.CHECKPOINT_VERSION,
            "epoch": self.epoch, "step": self.step,
            "supernet": self.supernet.state_dict(),
            "masks": {k: v.clone() for k, v in getattr(self.supernet, "masks", {}).items()},
            "structure": {"k": self.k},
            "method": self.method.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loaders": {"train": self.train_loader.state_dict(), "arch": self.arch_loader.state_dict()},
            "meters": {k: v.detach().cpu() for k, v in self.meters.items()},
            "world_size": self.dist.world_size,
            "rng": utils.rng_state(),
            "arch_rng": self.arch_generator.get_state(),
            "config": self.cfg.to_dict(),
            "rollbacks": self._rollbacks,
            "epoch_time_s": self._epoch_seconds(),  # a resumed epoch's time_s adds what was spent before the stop
        }

    def _epoch_seconds(self) -> float:
        """Seconds spent in the current epoch so far, the time before a stop and resume included."""
        t0 = self._epoch_t0
        return self._epoch_time_before + (time.perf_counter() - t0 if t0 is not None else 0.0)

    def save_checkpoint(self) -> None:
        self._check_finite(statistics=True)  # never overwrite the last good checkpoint with a diverged state
        self._agree_buffers()  # one set of batch-norm statistics goes into the checkpoint
        runs.save_rank_checkpoint(self.state_dict, self.meters, self.run_dir / CHECKPOINT, self.rundir)

    def _load_checkpoint(self, ck: dict[str, Any]) -> None:
        self.supernet.load_state_dict(ck["supernet"])
        self.method.load_state_dict(ck["method"])
        self.objective.load_state_dict(ck.get("objective", {}))
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.train_loader.load_state_dict(ck["loaders"]["train"])
        self.arch_loader.load_state_dict(ck["loaders"]["arch"])
        self.meters = runs.rank_meters(ck["meters"], self.device)
        self.epoch, self.step = int(ck["epoch"]), int(ck["step"])
        # another process count may have one step fewer per epoch (the shards are N // ranks)
        self.step = min(self.step, self.train_loader.steps_per_epoch)
        utils.set_rng_state(ck["rng"])
        if "arch_rng" in ck:
            self.arch_generator.set_state(ck["arch_rng"])
        self.history = utils.history_until(self.run_dir / "history.jsonl", self.epoch, rewrite=self.dist.is_main)
        self._rollbacks = int(ck.get("rollbacks", 0))
        self._epoch_time_before, self._epoch_t0 = float(ck.get("epoch_time_s", 0.0)), None


def epoch_line(rec: dict[str, Any], epochs: int) -> str:
    """The one line printed after each search epoch: losses and accuracies, then the collapse
    diagnostics (parameter-free ops in the epoch's cell, entropy of the op weights per cell
    type, the NB201 lookup accuracy when on)."""
    parts = [f"epoch {rec['epoch'] + 1}/{epochs}", f"loss {rec['train_loss']:.3f}"]
    for key, name in (("train_acc", "acc"), ("arch_acc", "arch acc"), ("valid_acc", "valid acc")):
        if rec.get(key) is not None:
            parts.append(f"{name} {rec[key]:.1f}")
    line = "  ".join(parts) + f" | cell: {rec['param_free_ops']}/{rec['cell_ops']} parameter-free"
    if rec.get("arch_entropy"):
        line += " | entropy " + " ".join(f"{ct} {v:.2f}" for ct, v in rec["arch_entropy"].items())
    for ds, acc in (rec.get("nb201") or {}).items():
        value = acc.get("test") if acc.get("test") is not None else acc.get("valid")
        kind = "test" if acc.get("test") is not None else "valid"
        line += f" | NB201 {ds} {kind} {value:.2f}"
        break  # the first dataset (cifar10) on the line; all of them are in history.jsonl
    return line + f" ({rec['time_s']:.1f} s)"


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
