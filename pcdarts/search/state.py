"""The Searcher's state: the check that it is still finite, its checkpoint (everything needed to resume
exactly: weights, architecture state, both optimisers, scheduler, RNG states, data positions, the epoch's
running sums and clock), loading it back, and ``search.rollback``.

:class:`SearchState` is a mixin of :class:`pcdarts.search.searcher.Searcher`: it reads the
Searcher's components and writes only its position, meters, clock and rollback count.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from pcdarts import runs, utils
from pcdarts.distributed import all_reduce_max
from pcdarts.errors import DivergenceError

CHECKPOINT = runs.CHECKPOINT


class SearchState:
    """Divergence check, checkpoint, resume and rollback of a search (mixed into the Searcher)."""

    # the current epoch's clock: seconds spent in it before the last resume (kept in the
    # checkpoint), and when this process started on it (perf_counter; None between epochs)
    _epoch_time_before: float = 0.0
    _epoch_t0: float | None = None
    _rollbacks: int = 0  # search.rollback used so far (kept in the checkpoint)

    def state_dict(self: Any) -> dict[str, Any]:
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

    def save_checkpoint(self: Any) -> None:
        self.check_finite(statistics=True)  # never overwrite the last good checkpoint with a diverged state
        self._agree_buffers()  # one set of batch-norm statistics goes into the checkpoint
        runs.save_rank_checkpoint(self.state_dict, self.meters, self.run_dir / CHECKPOINT, self.rundir)
        if self.dist.is_main:
            self._record_reference_passes()

    def _record_reference_passes(self: Any) -> None:
        """The passes a fast supernet ran on its reference path so far (``supernet.reference(why)``:
        why -> count) into the manifest's ``reference_passes``: no silent fallback."""
        passes = dict(getattr(self.supernet, "reference_passes", None) or {})
        if passes and passes != getattr(self, "_recorded_passes", None):
            utils.update_manifest(self.run_dir, reference_passes=passes)
            self._recorded_passes = passes

    def _load_checkpoint(self: Any, ck: dict[str, Any]) -> None:
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
        self.report.history = utils.history_until(self.run_dir / "history.jsonl", self.epoch,
                                                  rewrite=self.dist.is_main)
        self._rollbacks = int(ck.get("rollbacks", 0))
        self._epoch_time_before, self._epoch_t0 = float(ck.get("epoch_time_s", 0.0)), None

    def rollback(self: Any, error: DivergenceError) -> bool:
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

    def check_finite(self: Any, statistics: bool = False) -> None:
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

    def _weight_lr_hint(self: Any) -> str:
        return (f"the weight learning rate is probably too high (search.lr={self.cfg.search.lr:g}); "
                "lower it and start again")


__all__ = ["SearchState"]
