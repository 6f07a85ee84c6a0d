"""LBT, learning by teaching (Sheth, Jiang & Xie, 2021; docs/methods.md, "LBT"), on the multi-level engine.

Three levels: the teacher (architecture A, supernet weights W) learns, ``W*(A) = argmin_W
L(A, W; D_tr)``; it teaches: it pseudo-labels the train stream's images (their labels unused)
and a student V trains on them, ``V*(W*(A)) = argmin_V L(V; D_pl(W*(A))) + lambda L(V; D_tr)``;
the teacher re-learns: ``min_A L(V*; D_val) + gamma L(A, W*; D_val)``. Each argmin is one
unrolled SGD step (:mod:`pcdarts.methods.multilevel`): about 2x a DARTS second-order step.

The formulation is from the abstract and recollection ([mem]); every detail the paper was
not checked for is a field: the student is a fixed small CNN (``student_channels``,
``student_layers``), the pseudo-labels are the teacher's softened class probabilities
(``pseudo_labels: soft``; ``hard`` = argmax, which carries no gradient to the teacher, so
the architecture then learns from ``gamma`` alone), ``teacher_weight`` = gamma,
``student_label_weight`` = lambda (default 0: the student sees no true labels).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pcdarts.errors import ConfigError
from pcdarts.methods.base import SearchContext
from pcdarts.methods.multilevel import (Batch, Level, MultiLevelConfig, MultiLevelMethod, cross_entropy,
                                        maybe_no_grad, small_cnn)
from pcdarts.nn.edges import Mixing
from pcdarts.ranges import Count, Positive, Rate
from pcdarts.registry import METHODS
from pcdarts.utils import at_least_float32

PSEUDO_LABELS = ("soft", "hard")


@dataclass(frozen=True)
class LBTConfig(MultiLevelConfig):
    """LBT (docs/methods.md, "LBT"). Architecture optimiser and unrolling: DARTS second order's
    (:class:`~pcdarts.methods.multilevel.MultiLevelConfig`).

    Attributes:
        teacher_weight: gamma, the weight of the teacher's own validation loss in the upper
            objective [UNVERIFIED: 1].
        student_label_weight: lambda, the weight of the student's loss on the true labels of
            the train stream (0 = pseudo-labels only) [mem: optional in the paper].
        pseudo_labels: ``soft`` (the teacher's class probabilities at ``temperature``: the
            student's loss is differentiable in the teacher, so the student's validation loss
            reaches the architecture) or ``hard`` (argmax labels: no gradient through them)
            [UNVERIFIED].
        temperature: T of soft pseudo-labels (the loss is ``T^2 * CE(softmax(t/T), s/T)``).
        student_channels, student_layers: the fixed small student CNN
            (:func:`~pcdarts.methods.multilevel.small_cnn`) [UNVERIFIED: the paper's student].
    """

    teacher_weight: Rate = 1.0
    student_label_weight: Rate = 0.0
    pseudo_labels: str = "soft"
    temperature: Positive = 1.0
    student_channels: Count = 16
    student_layers: Count = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pseudo_labels not in PSEUDO_LABELS:
            raise ConfigError(f"method.pseudo_labels must be one of {', '.join(PSEUDO_LABELS)}, "
                              f"got {self.pseudo_labels!r}")


@METHODS.register("lbt", description="LBT: learning by teaching (teacher supernet, pseudo-labelled student)")
class LBT(MultiLevelMethod):
    """Teacher = the supernet (A, W); student = a small CNN trained on its pseudo-labels."""

    Config = LBTConfig

    def build_models(self, supernet: nn.Module, input_shape: tuple[int, int, int],
                     num_classes: int) -> dict[str, Callable[[], nn.Module]]:
        c = self.cfg
        return {"student": lambda: small_cnn(input_shape[0], num_classes, c.student_channels, c.student_layers)}

    def student_loss(self, ctx: SearchContext, batch: Batch, mixing: Mixing,
                     outer: bool) -> tuple[torch.Tensor, dict[str, Any]]:
        """The student's loss on the teacher's pseudo-labels of the batch's images (+ lambda
        times its loss on the true labels)."""
        x, y = batch
        c = self.cfg
        # the teacher's graph is needed only for the gradients of A and W (soft labels)
        with maybe_no_grad(not outer or c.pseudo_labels == "hard"), ctx.autocast():
            teacher = ctx.supernet(x, mixing)
        student = self.forward_model(ctx, "student", x)
        if c.pseudo_labels == "hard":
            loss = F.cross_entropy(at_least_float32(student), teacher.argmax(1))
        else:
            T = c.temperature
            target = torch.softmax(at_least_float32(teacher) / T, 1)
            loss = -(target * torch.log_softmax(at_least_float32(student) / T, 1)).sum(1).mean() * T * T
        if c.student_label_weight:
            loss = loss + c.student_label_weight * cross_entropy(student, y)[0]
        # hits against the true labels: the student's accuracy in the history (student_acc)
        return loss, {"n": y.numel(), "correct": (student.detach().argmax(1) == y).sum()}

    def levels(self, ctx: SearchContext) -> list[Level]:
        return [self.supernet_level("teacher"), self.model_level("student", self.student_loss)]

    def upper(self, ctx: SearchContext, batches: dict[str, Batch], mixing: Mixing) -> tuple[torch.Tensor, dict]:
        """``L(V'; D_val) + gamma L(A, W'; D_val)``; metrics: the teacher's."""
        return self.model_then_supernet(ctx, batches, mixing, "student", self.cfg.teacher_weight)


__all__ = ["LBT", "LBTConfig"]
