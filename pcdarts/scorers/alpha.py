"""The ``alpha`` scorer: softmax(alpha) (times the normalised beta) as the [E, O] scores
``space.derive`` reads. A registered scorer is called as ``scorer(method, ctx)``: it may
read the method's state, the supernet (``ctx.supernet``) and data (``ctx.sample_batches``);
``ctx`` is None when no search is running (``pcdarts derive``)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from pcdarts.nn.edges import normalise_edges
from pcdarts.registry import SCORERS


@SCORERS.register("alpha", description="softmax(alpha), times the normalised beta when present")
def alpha_scorer(method: Any, ctx: Any = None) -> dict[str, torch.Tensor]:
    """The registered form: reads ``method.alphas`` (the live ones, removed ops at -inf, when the
    method has ``live_alphas``: a space pruned before the search), ``method.betas`` and ``method.node_edges``."""
    alphas = method.live_alphas() if hasattr(method, "live_alphas") else method.alphas
    return alpha_beta_scores(alphas, method.betas, method.node_edges)


def alpha_beta_scores(alpha: dict[str, torch.Tensor], beta: Optional[dict[str, torch.Tensor]],
                      node_edges: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """W[e, o] = softmax_o(alpha[e]) * softmax_{edges into node}(beta)[e] (docs/methods.md, "PC-DARTS")."""
    scores = {}
    for ct, a in alpha.items():
        w = torch.softmax(a.detach().float(), dim=-1)
        if beta is not None and ct in beta:
            w = w * normalise_edges(beta[ct].detach().float(), node_edges).unsqueeze(-1)
        scores[ct] = w.cpu()
    return scores
