"""IL, interleaving learning (Ban & Xie, 2021; docs/methods.md, "IL"), on the multi-level engine.

K models share one data encoder E, the supernet's feature part (architecture A, weights W:
everything up to the classifier's input); each model k has its own head and its own task.
The encoder is trained by model 1, then model 2, ..., model K, then model 1 again, for R
rounds: R*K lower levels, each one unrolled SGD step of (W, head k) on task k's loss,
starting where the previous stage left the encoder (``coupling: init``, "by
initialisation"). The outer objective is the sum of the K validation losses at the end of
the chain, minimised over A. The real updates interleave the same way: R*K weight steps per
search step, one per stage.

Model 1's head is the supernet's own classifier (so the search's validation accuracy is
model 1's); models 2..K get linear heads on the same pooled features. Tasks (``task_split``):
``batch`` = the same labels on different data (model k reads the k-th of K equal slices of
every minibatch), ``classes`` = label subsets (model k reads the examples whose label is
k mod K). ``coupling: prox`` conditions each stage on the previous one through
``prox * ||E - E_prev||^2`` instead: the stage's virtual step starts from the live encoder
and is pulled towards the previous stage's result (with one-step unrolling, a proximity
term around the stage's own starting point would have zero gradient). The real updates
are the same in both couplings (each stage starts where the previous one ended, so the
proximity term is zero there).

[mem] formulation; K, R, the tasks and the coupling are [UNVERIFIED] fields.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from pcdarts.distributed import dist_info
from pcdarts.errors import ConfigError
from pcdarts.methods.base import SearchContext
from pcdarts.methods.multilevel import Batch, Level, MultiLevelConfig, MultiLevelMethod, cross_entropy, unwrap
from pcdarts.nn.edges import Mixing
from pcdarts.ranges import Count, Rate
from pcdarts.registry import METHODS

TASK_SPLITS = ("batch", "classes")
COUPLINGS = ("init", "prox")


@dataclass(frozen=True)
class ILConfig(MultiLevelConfig):
    """IL (docs/methods.md, "IL"). Architecture optimiser and unrolling: DARTS second order's.

    Attributes:
        tasks: K, the number of models sharing the encoder [UNVERIFIED: 2].
        rounds: R, how many times the encoder passes through all K models per step [UNVERIFIED: 2].
        task_split: ``batch`` (model k: the k-th slice of each minibatch, all labels) or
            ``classes`` (model k: the examples with label = k mod K) [UNVERIFIED].
        coupling: ``init`` (each stage starts from the previous stage's encoder) or ``prox``
            (from the live encoder, pulled towards the previous stage's by ``prox``) [mem].
        prox: the proximity weight of ``coupling: prox`` [UNVERIFIED: 1].
    """

    tasks: Count = 2
    rounds: Count = 2
    task_split: str = "batch"
    coupling: str = "init"
    prox: Rate = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task_split not in TASK_SPLITS:
            raise ConfigError(f"method.task_split must be one of {', '.join(TASK_SPLITS)}, got {self.task_split!r}")
        if self.coupling not in COUPLINGS:
            raise ConfigError(f"method.coupling must be one of {', '.join(COUPLINGS)}, got {self.coupling!r}")


def pooled_features(supernet: nn.Module, x: torch.Tensor, mixing: Mixing) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, the classifier's input) of one forward: the encoder output every head reads."""
    store: list[torch.Tensor] = []
    handle = unwrap(supernet).classifier.register_forward_pre_hook(lambda module, args: store.append(args[0]))
    try:
        logits = supernet(x, mixing)
    finally:
        handle.remove()
    return logits, store[0]


@METHODS.register("il", description="IL: interleaving learning (K heads train a shared supernet encoder in turn)")
class IL(MultiLevelMethod):
    """Encoder = the supernet's features; head 1 = its classifier, heads 2..K linear."""

    Config = ILConfig

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        super().check_config(cfg)
        K, s = cfg.method.tasks, cfg.search
        if cfg.method.task_split == "classes" and dist_info().is_distributed:
            # a rank whose minibatch has no example of a task would skip an update the others make
            raise ConfigError("method.task_split classes is not supported under torchrun (a rank's share of a "
                              "minibatch may hold no example of a task); use method.task_split batch")
        if cfg.method.task_split == "batch" and min(s.batch_size, s.arch_batch_size or s.batch_size) < K:
            raise ConfigError(f"method.tasks={K} slices of a minibatch need search.batch_size (and "
                              f"search.arch_batch_size) >= {K}; lower method.tasks or raise the batch size")

    def build_models(self, supernet: nn.Module, input_shape: tuple[int, int, int],
                     num_classes: int) -> dict[str, Callable[[], nn.Module]]:
        features = int(supernet.classifier.in_features)
        return {f"head{k}": (lambda: nn.Linear(features, num_classes)) for k in range(1, self.cfg.tasks)}

    def task_batch(self, batch: Batch, k: int) -> Batch:
        """Model k's part of a minibatch."""
        x, y = batch
        K = self.cfg.tasks
        if self.cfg.task_split == "batch":
            return x.tensor_split(K)[k], y.tensor_split(K)[k]
        keep = (y % K) == k
        return x[keep], y[keep]

    def task_loss(self, k: int) -> Callable[[SearchContext, Batch, Mixing, bool], tuple[torch.Tensor, dict]]:
        """Model k's loss on (its part of) a minibatch: the supernet's objective for k = 0,
        head k on the pooled encoder features otherwise."""
        def loss(ctx: SearchContext, batch: Batch, mixing: Mixing, outer: bool) -> tuple[torch.Tensor, dict]:
            x, y = batch
            if y.numel() == 0:
                return x.new_zeros(()), {"n": 0}
            if k == 0:
                return self.supernet_loss(ctx, batch, mixing)
            with ctx.autocast():
                logits, feats = pooled_features(ctx.supernet, x, mixing)
                out, metrics = cross_entropy(self.model(f"head{k}")(feats), y)
            if isinstance(ctx.supernet, nn.parallel.DistributedDataParallel):
                out = out + 0.0 * logits.sum()  # DDP waits for a gradient of every parameter it saw used
            return out, metrics
        return loss

    def levels(self, ctx: SearchContext) -> list[Level]:
        c = self.cfg
        return [Level(f"round {r + 1} model {k + 1}", self.task_loss(k), stream="train", trains_supernet=True,
                      params=list(self.model(f"head{k}").parameters()) if k else [],
                      select=lambda batch, k=k: self.task_batch(batch, k),
                      restart=c.coupling == "prox", prox=c.prox if c.coupling == "prox" else 0.0,
                      log_as=f"task{k + 1}")
                for r in range(c.rounds) for k in range(c.tasks)]

    def upper(self, ctx: SearchContext, batches: dict[str, Batch], mixing: Mixing) -> tuple[torch.Tensor, dict]:
        """The sum of the K validation losses; metrics: model 1's."""
        total, metrics = None, {}
        for k in range(self.cfg.tasks):
            loss, m = self.task_loss(k)(ctx, self.task_batch(batches["arch"], k), mixing, True)
            total = loss if total is None else total + loss
            if k == 0:
                metrics = m
        assert total is not None
        return total, metrics


__all__ = ["IL", "ILConfig", "pooled_features"]
