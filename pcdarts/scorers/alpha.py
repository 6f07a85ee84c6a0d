"""Scorers: pure functions from architecture state to [E, O] scores that ``space.derive`` reads.

Used for the final derivation (and, later, for pruning during search). No data or
search-loop imports here.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from pcdarts.nn.edges import normalise_edges
from pcdarts.registry import SELECTORS


@SELECTORS.register("alpha", description="softmax(alpha), times the normalised beta when present")
def alpha_beta_scores(alpha: dict[str, torch.Tensor], beta: Optional[dict[str, torch.Tensor]],
                      node_edges: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """W[e, o] = softmax_o(alpha[e]) * softmax_{edges into node}(beta)[e] (ALGORITHMS §2.3)."""
    scores = {}
    for ct, a in alpha.items():
        w = torch.softmax(a.detach().float(), dim=-1)
        if beta is not None and ct in beta:
            w = w * normalise_edges(beta[ct].detach().float(), node_edges).unsqueeze(-1)
        scores[ct] = w.cpu()
    return scores
