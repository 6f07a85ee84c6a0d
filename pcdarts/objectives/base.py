"""The objective interface: supernet + batch + mixing -> (loss, metrics).

An objective owns its forward, so it can read more than logits (a reconstruction
objective reads the supernet's stage outputs through ``supernet.forward_features``).
It is an ``nn.Module``: its parameters (a decoder, say) join the weight optimiser and
its state goes into the checkpoint. Metrics are detached device tensors with at least
``n`` (samples); ``correct`` (top-1 hits) when accuracy means something.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

Batch = tuple[torch.Tensor, torch.Tensor]


class Objective(nn.Module):
    """Base class of search objectives (register subclasses in ``OBJECTIVES``)."""

    def forward(self, supernet: nn.Module, batch: Batch, mixing: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError


__all__ = ["Objective", "Batch"]
