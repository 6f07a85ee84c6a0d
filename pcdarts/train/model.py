"""The evaluation network of a training run and its test pass (shared by ``train`` and ``eval``).

:func:`build_model` applies the ``model`` config section (as the genotype's registered network
reads it, :func:`pcdarts.nn.networks.network_options`) to
:func:`pcdarts.nn.networks.build_network`; :func:`evaluate` computes plain cross-entropy, top-1 and
top-5 in eval mode (no auxiliary head, no drop-path).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Optional

import torch
import torch.nn as nn

from pcdarts.distributed import all_reduce_max, all_reduce_sum, group_rank_world
from pcdarts.genotype import Genotype
from pcdarts.nn.networks import build_network, network_options
from pcdarts.train.config import TrainConfig
from pcdarts.data.stream import Batch


def build_model(genotype: Genotype, cfg: TrainConfig, *, num_classes: int, in_channels: int) -> nn.Module:
    """The evaluation network of ``genotype`` as configured by ``cfg.model``."""
    return build_network(genotype, num_classes=num_classes, in_channels=in_channels,
                         **network_options(genotype, cfg.model))


def topk_correct(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """How many rows have the label among their ``k`` largest logits (a 0-d tensor, no host sync)."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == y.unsqueeze(1)).any(dim=1).sum()


@torch.no_grad()
def evaluate(net: nn.Module, batches: Iterable[Batch], device: torch.device, amp: bool = True
             ) -> dict[str, Optional[float]]:
    """Plain cross-entropy, top-1 and top-5 (None below 5 classes) in eval mode.

    Eval mode switches off the auxiliary head and drop-path; the train/eval flag is restored.
    """
    was_training = net.training
    net.eval()
    tot = torch.zeros(4, dtype=torch.float64, device=device)
    ce = nn.CrossEntropyLoss(reduction="sum")
    num_classes = 0
    rank, world = group_rank_world()
    for i, (x, y) in enumerate(batches):
        if i % world != rank:  # under torchrun each rank evaluates every W-th batch
            continue
        with autocast(device, amp):
            logits, _ = net(x)
        logits = logits.float()
        num_classes = logits.shape[1]
        tot += torch.stack([ce(logits, y).double(), topk_correct(logits, y, 1).double(),
                            topk_correct(logits, y, 5).double(), torch.tensor(float(y.numel()), device=device,
                                                                              dtype=torch.float64)])
    net.train(was_training)
    all_reduce_sum([tot])
    loss, c1, c5, n = tot.tolist()
    num_classes = int(all_reduce_max(float(num_classes), device))  # a rank may have had no batch
    n = max(n, 1.0)
    return {"test_loss": loss / n, "test_top1": 100.0 * c1 / n,
            "test_top5": 100.0 * c5 / n if num_classes >= 5 else None}


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
