"""The Trainer: train a searched cell from scratch and evaluate it (docs/methods.md, "Training a found cell").

It sees a :data:`~pcdarts.genotype.Genotype` and nothing from the search: the network
comes from :func:`pcdarts.nn.networks.build_network` (DARTS cells -> NetworkCIFAR or
NetworkImageNet by ``model.stem``; NAS-Bench-201 cells -> NB201Network). Per step:
SGD on the cross-entropy (label smoothing optional) plus 0.4 x the auxiliary-head loss
(training only), gradient clipping, bf16 autocast on CUDA and optional gradient
accumulation. Per epoch: the lr and the drop-path probability ``p * epoch / epochs``
are set, the test split is evaluated in eval mode (top-1, top-5), one line goes to
``history.jsonl`` and ``checkpoint.pt`` is rewritten with everything needed to resume
exactly. Ctrl-C and SIGTERM stop at the next optimiser-step boundary after checkpointing;
a non-finite loss stops the run (the last good checkpoint kept).

Public API here: :func:`train`, :class:`Trainer`, :class:`TrainResult`. Beside it in
:mod:`pcdarts.train`: ``config`` (dataclasses, presets, overrides, lr schedule), ``data``
(in-memory data; streamed folders come from :mod:`pcdarts.data.stream`), ``model``
(network + test pass), ``seeds`` (several seeds and their summary), ``evaluate`` (a trained
checkpoint); the subcommands are in :mod:`pcdarts.cli.train`.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from pcdarts import runs, utils
from pcdarts.distributed import all_reduce_max, all_reduce_sum, average_buffers, per_process_batch, wrap_ddp
from pcdarts.genotype import Genotype, load_genotype, save_genotype
from pcdarts.nn.counting import count_params, genotype_stats
from pcdarts.nn.networks import network_options
from pcdarts.train.config import (TrainConfig, TrainError, build_train_config, load_train_config_file, lr_at)
from pcdarts.train.data import TrainData, build_train_data
from pcdarts.train.model import autocast, build_model, evaluate, topk_correct
from pcdarts.errors import DivergenceError
from pcdarts.runs.loop import EpochRun, LoopSettings, claimed_run, run_epochs, set_up_process, sgd, with_rollback

CHECKPOINT = runs.CHECKPOINT
FORMAT = runs.FORMATS["train"]




def new_run_dir(cfg: TrainConfig) -> runs.RunDir:
    """The run directory of a new training run (or ``--seeds`` folder): checked now, claimed
    when the run starts, after its data and network are built."""
    return runs.RunDir(Path(cfg.run.out) if cfg.run.out else default_out(cfg), overwrite=cfg.run.overwrite,
                       command="pcdarts train")


def default_out(cfg: TrainConfig) -> Path:
    return Path("runs") / f"train-{cfg.data.dataset}-s{cfg.run.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_resumable(run_dir: Union[str, Path], command: str = "pcdarts train --resume") -> Path:
    """A training run directory that can be resumed (one-line RunDirError otherwise)."""
    return runs.check_resumable(run_dir, "train", command, required=("config.yaml", "genotype.json", CHECKPOINT))


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        metrics: the content of ``metrics.json`` (empty when interrupted).
        run_dir: the run directory.
        history: one dict per finished epoch.
        interrupted: the run stopped early (Ctrl-C or ``stop_after_steps``) and can be resumed.
        stop_signal: ``"SIGINT"`` or ``"SIGTERM"`` when a signal stopped it (the CLI's exit code follows it).
    """

    metrics: dict[str, Any]
    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    stop_signal: str = ""


class Trainer(EpochRun):
    """Builds data, network and optimiser from a config and trains the genotype.

    Args:
        genotype: the cell to train.
        cfg: the run's configuration.
        run_dir: where the run's files go: a :class:`~pcdarts.runs.RunDir` or a path; nothing is
            written there before :meth:`run` starts.
        resume: continue from ``run_dir/checkpoint.pt``.
        trust_checkpoint: the checkpoint may be unpickled in full when it needs that (an older
            pcdarts's format); only for a source the user trusts (``--trust-checkpoint``).
    """

    def __init__(self, genotype: Genotype, cfg: TrainConfig, run_dir: Union[Path, str, runs.RunDir], *,
                 resume: bool = False, trust_checkpoint: bool = False) -> None:
        self.rundir = run_dir if isinstance(run_dir, runs.RunDir) else runs.RunDir(
            run_dir, overwrite=True, resume=resume)
        self.genotype, self.cfg, self.run_dir = genotype, cfg, self.rundir.path
        self.dist, self.device, self.rundir = set_up_process(cfg.run, self.rundir)
        t, d = cfg.train, cfg.data
        # train.batch_size is the global batch: under torchrun each process takes its share
        share = per_process_batch(t.batch_size, self.dist.world_size, "train.batch_size")
        if share % t.grad_accum:
            raise TrainError(f"train.batch_size={t.batch_size} over {self.dist.world_size} processes is {share} "
                             f"images each, which train.grad_accum={t.grad_accum} does not divide; change either")
        self.micro_batch = share // t.grad_accum
        self.data: TrainData = build_train_data(
            d, batch_size=self.micro_batch, eval_batch_size=d.eval_batch_size or max(256, t.batch_size),
            seed=cfg.run.seed, cutout=t.cutout, drop_last=t.drop_last, device=self.device,
            rank=self.dist.rank, world_size=self.dist.world_size)
        self.net = build_model(genotype, cfg, num_classes=self.data.num_classes,
                               in_channels=self.data.in_channels).to(self.device)
        if self.device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.model = self._ddp(self.net)  # what the training step calls: DDP under torchrun
        self.criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
        self.optimizer = sgd(self.net.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                             nesterov=t.nesterov)
        self.steps = self.data.train.steps_per_epoch  # micro-batches per epoch
        self.epoch, self.step = 0, 0
        self.meters = self._zero_meters()
        self.history: list[dict[str, Any]] = []
        self.tb = utils.tb_writer(self.run_dir, cfg.run.tensorboard and self.dist.is_main)
        self.best: dict[str, Any] = {}
        self.train_time = 0.0  # seconds spent in training steps (evaluation excluded), across resumes
        self.watch = runs.NonFiniteWatch(("train",), self.device, t.log_every)
        if resume:
            self._load_checkpoint(runs.load_checkpoint(self.run_dir / CHECKPOINT, "train", "pcdarts train --resume",
                                                       config=cfg.to_dict(), sections=("model",),
                                                       trust=trust_checkpoint))

    def _ddp(self, net: nn.Module) -> nn.Module:
        """Under torchrun: DistributedDataParallel (gradients averaged in the backward; the
        initial weights broadcast from rank 0); alone: the network itself."""
        if not self.dist.is_distributed:
            return net
        # an auxiliary head whose loss has weight 0 gets no gradient: DDP must then look for unused ones
        m = self.cfg.model
        unused = bool(getattr(m, "auxiliary", False)) and m.auxiliary_weight <= 0
        return wrap_ddp(net, self.device, find_unused=unused)  # BN statistics: averaged where read

    # ------------------------------------------------------------------ steps
    def _zero_meters(self) -> dict[str, torch.Tensor]:
        return {k: torch.zeros((), dtype=torch.float64, device=self.device) for k in ("loss", "correct", "n")}

    def loss(self, logits: torch.Tensor, aux: Optional[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Training loss: criterion on the logits plus ``auxiliary_weight`` x criterion on the aux logits.

        The networks only return auxiliary logits in training mode, so this term never
        reaches evaluation.
        """
        loss = self.criterion(logits.float(), y)
        if aux is not None and self.cfg.model.auxiliary_weight > 0:
            loss = loss + self.cfg.model.auxiliary_weight * self.criterion(aux.float(), y)
        return loss

    def _micro_weight(self, step: int, n: int) -> float:
        """This micro-batch's share of its accumulation group (its images / the group's images).

        Weighting by image counts keeps the summed gradient equal to that of the mean loss
        over the whole effective batch, also for a short last batch.
        """
        k, mb = self.cfg.train.grad_accum, self.micro_batch
        if k == 1:
            return 1.0
        total = getattr(self.data.train, "num_samples", None)
        start = (step // k) * k
        stop = min(start + k, self.steps)
        if total is None:
            return 1.0 / (stop - start)
        sizes = [min(mb, total - i * mb) for i in range(start, stop)]
        return n / max(sum(sizes), 1)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Forward/backward of one micro-batch; the optimiser steps at the end of its group."""
        k = self.cfg.train.grad_accum
        if self.step % k == 0:
            self.optimizer.zero_grad(set_to_none=True)
        last_micro = (self.step + 1) % k == 0 or self.step + 1 == self.steps
        # under DDP the gradients are averaged once per accumulation group, at its last micro-batch
        sync = self.model.no_sync() if self.model is not self.net and not last_micro else contextlib.nullcontext()
        with sync:
            with autocast(self.device, self.cfg.train.amp):
                logits, aux = self.model(x)
            loss = self.loss(logits, aux, y)
            self.watch.observe("train", loss)
            (loss * self._micro_weight(self.step, y.numel())).backward()
        if last_micro:
            if self.cfg.train.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.train.grad_clip)
            self.optimizer.step()
        m = self.meters
        m["loss"] += loss.detach().double() * y.numel()
        m["correct"] += topk_correct(logits.detach(), y, 1)
        m["n"] += y.numel()

    # ------------------------------------------------------------------ the run
    def run(self, stop_after_steps: Optional[int] = None) -> TrainResult:
        """Train (or continue) to the last epoch on the shared loop (:func:`pcdarts.runs.loop.run_epochs`).

        The run directory is claimed here (an old run in it is moved aside and deleted
        once this run's first checkpoint exists); a failure before that puts it back.

        Args:
            stop_after_steps: stop after this many micro-batches of this call, at a step
                boundary, checkpointing first (what Ctrl-C does; used by tests).
        """
        with claimed_run(self.rundir, [self.tb]):
            return with_rollback(lambda: self._run(stop_after_steps), self.rollback)

    def _run(self, stop_after_steps: Optional[int]) -> TrainResult:
        cfg, t = self.cfg, self.cfg.train
        main = self.dist.is_main
        if self.rundir.resume and main:  # printed with --no-progress too: batch jobs have no terminal
            print(runs.resume_message(self.epoch, t.epochs, self.step, self.steps), flush=True)
        if self.epoch == 0 and self.step == 0 and not self.history and main:
            self._write_run_files()
        self.net.train()
        end = run_epochs(self, LoopSettings(
            epochs=t.epochs, command="pcdarts train", run_dir=self.run_dir, device=self.device, main=main,
            progress=cfg.run.progress, log_every=t.log_every, stop_after_steps=stop_after_steps))
        if end.interrupted:
            return TrainResult({}, self.run_dir, self.history, interrupted=True, stop_signal=end.signal_name)
        return TrainResult(self._finish(), self.run_dir, self.history)

    # ------------------------------------------------------------------ the loop's hooks (EpochRun)
    def steps_per_epoch(self) -> int:
        return self.steps

    def begin_epoch(self) -> None:
        """Set this epoch's lr and drop-path probability (pure functions of the epoch)."""
        lr = lr_at(self.cfg.train, self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.net.drop_path_prob = self.cfg.model.drop_path_prob * self.epoch / self.cfg.train.epochs
        self._t0 = time.perf_counter()

    def take_step(self) -> None:
        x, y = self.data.train.next()
        self.train_step(x, y)

    def may_stop_here(self) -> bool:
        return self.step % self.cfg.train.grad_accum == 0  # never stop inside an accumulation group

    def finish_steps(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.train_time += time.perf_counter() - self._t0

    def postfix(self) -> dict[str, str]:
        n = max(float(self.meters["n"]), 1.0)
        loss, acc = float(self.meters["loss"]) / n, 100 * float(self.meters["correct"]) / n
        return {"loss": f"{loss:.3f}", "acc": f"{acc:.1f}"}

    def check_finite(self, statistics: bool = False) -> None:
        """Stop with a one-line DivergenceError if the training loss went non-finite, or
        (``statistics``: at epoch ends and before checkpoints) a batch-norm running statistic
        (under torchrun on every rank together)."""
        bad = 1.0 if self.watch.first_bad() is not None else 0.0
        buffer = runs.nonfinite_buffer({"network": self.net}) if statistics and not bad else None
        if buffer is not None:
            bad = 2.0
        if self.dist.is_distributed:
            bad = all_reduce_max(bad, self.device)
        if not bad:
            return
        where = f"by epoch {self.epoch + 1}/{self.cfg.train.epochs} step {self.step}/{self.steps}"
        what = ("the training loss" if bad == 1.0 else
                f"the batch-norm running statistics ({buffer or 'on another rank'})")
        raise DivergenceError(runs.divergence_message(what, where, self._lr_hint(), self.run_dir / CHECKPOINT))

    def _lr_hint(self) -> str:
        return (f"the learning rate is probably too high (train.lr={self.cfg.train.lr:g}); lower it "
                "(or raise train.warmup_epochs) and start again")

    def _check_epoch_losses(self, rec: dict[str, Any]) -> None:
        """A non-finite test loss is divergence (DivergenceError); a finite train loss more than
        ``runs.EXPLOSION_FACTOR`` times the loss at chance, log(num_classes), gets a warning line."""
        where = f"in epoch {self.epoch + 1}/{self.cfg.train.epochs}"
        if "test_loss" in rec and not math.isfinite(rec["test_loss"]):
            raise DivergenceError(runs.divergence_message("the test loss", where, self._lr_hint(),
                                                          self.run_dir / CHECKPOINT))
        k = self.data.num_classes
        message = runs.explosion_warning("the train loss", rec["train_loss"], math.log(k) if k > 1 else None,
                                         f"the loss at chance, log({k})", where, self._lr_hint())
        if message and self.dist.is_main:
            warnings.warn(message)

    def end_epoch(self) -> None:
        t = self.cfg.train
        average_buffers(self.net)  # under torchrun: one set of batch-norm statistics for the test pass
        self.check_finite(statistics=True)
        if self.dist.is_distributed:
            all_reduce_sum(list(self.meters.values()))  # the epoch's sums over every rank's shard
        m = {k: float(v) for k, v in self.meters.items()}
        n = max(m["n"], 1.0)
        rec: dict[str, Any] = {"epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"],
                               "drop_path_prob": float(self.net.drop_path_prob),
                               "train_loss": m["loss"] / n, "train_acc": 100 * m["correct"] / n}
        last = self.epoch == t.epochs - 1
        if self.data.test is not None and (last or (self.epoch + 1) % t.eval_every == 0):
            rec.update(evaluate(self.net, self.data.test, self.device, t.amp))
            if not self.best or rec["test_top1"] > self.best["test_top1"]:
                self.best = {"test_top1": rec["test_top1"], "epoch": self.epoch}
            if rec.get("test_top5") is not None:
                self.best["test_top5"] = max(self.best.get("test_top5", 0.0), rec["test_top5"])
        rec["train_time_s"] = round(self.train_time, 3)
        self._check_epoch_losses(rec)
        self.history.append(rec)
        if self.dist.is_main:
            utils.append_jsonl(self.run_dir / "history.jsonl", rec)
            _print_epoch(rec, t.epochs)  # with --no-progress too: batch jobs have no terminal
        if self.tb is not None:
            self.tb.epoch(rec)
        self.epoch += 1
        self.step = 0
        self.meters = self._zero_meters()
        self.save_checkpoint()

    # ------------------------------------------------------------------ files
    def _write_run_files(self) -> None:
        (self.run_dir / "config.yaml").write_text(self.cfg.to_yaml())
        save_genotype(self.genotype, self.run_dir / "genotype.json")
        (self.run_dir / "history.jsonl").write_text("")
        extra = {"kind": "train", "genotype": str(self.genotype), "data": self.data.info,
                 "network": self._shape_info()}
        utils.write_json(self.run_dir / "manifest.json", utils.manifest(self.cfg.run.seed, str(self.device), extra))

    def _shape_info(self) -> dict[str, int]:
        return {"num_classes": self.data.num_classes, "in_channels": self.data.in_channels,
                "input_size": self.data.input_size}

    def _finish(self) -> dict[str, Any]:
        g, m = self.genotype, self.cfg.model
        o = network_options(g, m)  # the model section as this genotype's network reads it
        stats = genotype_stats(g, num_classes=self.data.num_classes, in_channels=self.data.in_channels,
                               input_size=self.data.input_size, C=o["C"], layers=o["layers"],
                               stem=o.get("stem", "cifar"))
        final = self.history[-1] if self.history else {}
        metrics: dict[str, Any] = {
            "genotype": str(g), "seed": self.cfg.run.seed, "epochs": self.cfg.train.epochs,
            "final_test_top1": final.get("test_top1"), "final_test_top5": final.get("test_top5"),
            "final_test_loss": final.get("test_loss"),
            "best_test_top1": self.best.get("test_top1"), "best_epoch": self.best.get("epoch"),
            "best_test_top5": self.best.get("test_top5"),
            "params_m": count_params(self.net) / 1e6, "macs_m": stats["macs"],
            "params_note": "auxiliary head excluded", "macs_note": "Conv2d + Linear multiply-adds, one image",
            "train_time_s": round(self.train_time, 3), "dataset": self.cfg.data.spec, **self._shape_info(),
            "device": str(self.device), "world_size": self.dist.world_size,
        }
        if self.dist.is_main:
            utils.write_json(self.run_dir / "metrics.json", metrics)
            utils.close_manifest(self.run_dir, final_test_top1=metrics["final_test_top1"])
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": runs.CHECKPOINT_VERSION, "epoch": self.epoch, "step": self.step,
            "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": {"name": self.cfg.train.lr_schedule, "lr": self.optimizer.param_groups[0]["lr"]},
            "loader": self.data.train.state_dict(),
            "meters": {k: v.detach().cpu() for k, v in self.meters.items()}, "world_size": self.dist.world_size,
            "rng": utils.rng_state(), "best": dict(self.best), "train_time": self.train_time,
            "config": self.cfg.to_dict(), "genotype": str(self.genotype), "network": self._shape_info(),
            "data_info": {k: v for k, v in self.data.info.items() if k in ("mean", "std", "dataset")},
        }

    def save_checkpoint(self) -> None:
        self.check_finite(statistics=True)  # never overwrite the last good checkpoint with a diverged state
        average_buffers(self.net)  # under torchrun: one set of batch-norm statistics in the checkpoint
        runs.save_rank_checkpoint(self.state_dict, self.meters, self.run_dir / CHECKPOINT, self.rundir)

    def _load_checkpoint(self, ck: dict[str, Any]) -> None:
        self.net.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.data.train.load_state_dict(ck["loader"])
        self.meters = runs.rank_meters(ck["meters"], self.device)
        self.epoch, self.step = int(ck["epoch"]), int(ck["step"])
        self.step = min(self.step, self.steps)  # another process count may have a step fewer per epoch
        self.best, self.train_time = dict(ck.get("best") or {}), float(ck.get("train_time", 0.0))
        utils.set_rng_state(ck["rng"])
        self.history = utils.history_until(self.run_dir / "history.jsonl", self.epoch, rewrite=self.dist.is_main)


def _print_epoch(rec: dict[str, Any], epochs: int) -> None:
    parts = [f"epoch {rec['epoch'] + 1}/{epochs}", f"lr {rec['lr']:.4g}", f"train loss {rec['train_loss']:.3f}",
             f"train acc {rec['train_acc']:.2f}%"]
    if "test_top1" in rec:
        parts.append(f"test top-1 {rec['test_top1']:.2f}%")
        if rec.get("test_top5") is not None:
            parts.append(f"top-5 {rec['test_top5']:.2f}%")
    print("  ".join(parts), flush=True)


def train(genotype: Union[Genotype, str, None] = None, config: Union[TrainConfig, dict[str, Any], None] = None, *,
          resume: Union[str, Path, None] = None, stop_after_steps: Optional[int] = None,
          trust_checkpoint: bool = False, **run_overrides: Any) -> TrainResult:
    """Train a genotype from scratch (the Python twin of ``pcdarts train``).

    Args:
        genotype: a Genotype, or anything :func:`load_genotype` reads (name, file, string).
        config: a :class:`TrainConfig`, a nested dict as in a preset YAML, or None (defaults).
        resume: a run directory to continue exactly (its saved config and genotype are used).
        stop_after_steps: stop after this many micro-batches, checkpointing (tests, time boxes).
        trust_checkpoint: with ``resume``, unpickle a checkpoint in full when it needs that (one
            written by an older pcdarts); only for a source you trust (``--trust-checkpoint``).
        **run_overrides: fields of the ``run`` section allowed to change on resume
            (``device``, ``progress``).

    Returns:
        TrainResult with ``.metrics`` (the content of metrics.json) and ``.run_dir``.
    """
    if resume is not None:
        run_dir = check_resumable(resume, "pcdarts train --resume")
        cfg = load_train_config_file(run_dir / "config.yaml")
        if run_overrides:
            cfg = cfg.replace(run=run_overrides)
        if (run_dir / "metrics.json").is_file():
            metrics = json.loads((run_dir / "metrics.json").read_text())
            return TrainResult(metrics, run_dir, utils.read_jsonl(run_dir / "history.jsonl"))
        g = load_genotype(run_dir)
        return Trainer(g, cfg, runs.RunDir(run_dir, resume=True), resume=True,
                       trust_checkpoint=trust_checkpoint).run(stop_after_steps)
    if genotype is None:
        raise TrainError("train() needs a genotype (a published name like DARTS_V2, a genotype file or string)")
    g = genotype if not isinstance(genotype, str) else load_genotype(genotype)
    cfg = config if isinstance(config, TrainConfig) else build_train_config(config or {})
    if run_overrides:
        cfg = cfg.replace(run=run_overrides)
    return Trainer(g, cfg, new_run_dir(cfg)).run(stop_after_steps)  # built before the directory is touched


__all__ = ["TrainError", "TrainConfig", "TrainResult", "Trainer", "train", "CHECKPOINT", "FORMAT",
           "check_resumable", "new_run_dir", "default_out"]
