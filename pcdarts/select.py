"""Scorers: pure functions from architecture state to [E, O] scores that ``space.derive`` reads.

Used for the final derivation (and, later, for pruning during search). No data or
search-loop imports here.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .registry import SELECTORS


def normalise_edges(beta: torch.Tensor, node_edges: Sequence[Sequence[int]]) -> torch.Tensor:
    """Softmax of the edge logits over the edges entering each node (PC-DARTS, §2.2). [E] -> [E]."""
    flat = [e for group in node_edges for e in group]
    if flat == list(range(beta.shape[0])):  # both spaces: consecutive blocks, sliced without index tensors
        bounds = [0]
        for group in node_edges:
            bounds.append(bounds[-1] + len(group))
        return torch.cat([torch.softmax(beta[a:b], dim=0) for a, b in zip(bounds[:-1], bounds[1:])])
    out = torch.empty_like(beta)  # any other grouping (an index tensor per group: a host-to-device copy)
    for group in node_edges:
        idx = torch.as_tensor(list(group), device=beta.device)
        out = out.index_copy(0, idx, torch.softmax(beta.index_select(0, idx), dim=0))
    return out


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
