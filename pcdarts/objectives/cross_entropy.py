"""Cross-entropy of the supernet's logits against integer labels (the DARTS objective)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from pcdarts.objectives.base import Batch, Objective
from pcdarts.registry import OBJECTIVES
from pcdarts.utils import at_least_float32


@OBJECTIVES.register("cross-entropy", description="classification cross-entropy (the DARTS objective)")
class CrossEntropy(Objective):
    """Mean cross-entropy (computed in at least float32, float64 kept) and top-1 hits."""

    def forward(self, supernet: nn.Module, batch: Batch, mixing: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = batch
        logits = supernet(x, mixing)
        loss = F.cross_entropy(at_least_float32(logits), y)
        return loss, {"correct": (logits.detach().argmax(1) == y).sum(), "n": y.numel()}
