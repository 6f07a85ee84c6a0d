"""Search objectives: supernet output + batch -> loss. Methods never know which one is active."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pcdarts.registry import OBJECTIVES
from pcdarts.utils import at_least_float32


@OBJECTIVES.register("cross-entropy", description="classification cross-entropy (the DARTS objective)")
class CrossEntropy(nn.Module):
    """Mean cross-entropy of logits against integer labels."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(at_least_float32(logits), target)  # never down from float64
