"""The second-order (unrolled) architecture gradient of DARTS, reusable by any method.

    g = d/da L_val(w', a) - xi * H v,   w' = w - xi * (mu * m + dL_tr/dw + lambda * w)

with the Hessian-vector product ``H v = d^2 L_tr / (da dw) . v`` taken as the central
difference ``[dL_tr/da(w + eps v) - dL_tr/da(w - eps v)] / (2 eps)``, ``eps = hvp_eps / ||v||``
and ``v = dL_val/dw'`` (ALGORITHMS §1.4). The virtual step is the real SGD step (momentum
and weight decay included). Weights are changed in place under ``no_grad`` and restored
exactly from a copy.

Batch-norm running statistics: the published code evaluates the virtual weights on a
copy of the network, so the validation batch never enters the live statistics (3 updates
per arch step: the training forward of the virtual step and the two finite-difference
forwards). Here the virtual weights live in the supernet itself, so its running
statistics are saved before that forward and put back after it: the same 3 updates.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from pcdarts.methods.base import WeightStepInfo
from pcdarts.utils import at_least_float32

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[Batch], tuple[torch.Tensor, dict]]


def running_stats(module: Optional[nn.Module]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) of every batch-norm running statistic of ``module``."""
    if module is None:
        return []
    out = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                buf = getattr(m, name, None)
                if buf is not None:
                    out.append((buf, buf.detach().clone()))
    return out


@torch.no_grad()
def restore(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for buf, copy in saved:
        buf.copy_(copy)


def _zeros_for_none(grads: tuple[Optional[torch.Tensor], ...], like: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if g is None else g for p, g in zip(like, grads)]


def second_order_grads(loss_fn: LossFn, arch_params: list[torch.Tensor], weights: list[torch.Tensor],
                       info: WeightStepInfo, train_batch: Batch, arch_batch: Batch, *, hvp_eps: float = 0.01,
                       supernet: Optional[nn.Module] = None) -> tuple[list[torch.Tensor], torch.Tensor, dict]:
    """The unrolled hypergradient of ``arch_params``.

    Args:
        loss_fn: ``batch -> (loss, metrics)`` at the current weights, with a graph to ``arch_params``.
        arch_params: the architecture tensors to differentiate.
        weights: the supernet weights, in the weight optimiser's order.
        info: the weight optimiser's lr, momentum, weight decay and momentum buffers.
        train_batch, arch_batch: the weight and architecture batches.
        hvp_eps: the finite-difference radius is ``hvp_eps / ||v||``.
        supernet: the module whose batch-norm running statistics the validation forward at
            the virtual weights must not change (None: not protected).

    Returns:
        (gradients of ``arch_params``, the validation loss at the virtual weights, its metrics).
    """
    xi = info.lr
    backup = [p.detach().clone() for p in weights]
    loss_tr, _ = loss_fn(train_batch)
    g_tr = torch.autograd.grad(loss_tr, weights, allow_unused=True)
    with torch.no_grad():
        for p, g, m in zip(weights, g_tr, info.momentum_buffers):
            step = info.weight_decay * p
            if g is not None:
                step = step + g
            if m is not None:
                step = step + info.momentum * m
            p.sub_(xi * step)
    saved = running_stats(supernet)
    loss_val, metrics = loss_fn(arch_batch)
    grads = torch.autograd.grad(loss_val, arch_params + weights, allow_unused=True)
    restore(saved)  # after the backward: the graph may hold the buffers it read
    g_arch = _zeros_for_none(grads[: len(arch_params)], arch_params)
    v = _zeros_for_none(grads[len(arch_params):], weights)
    with torch.no_grad():
        for p, b in zip(weights, backup):
            p.copy_(b)
    norm = torch.sqrt(sum((at_least_float32(t) ** 2).sum() for t in v))
    eps = hvp_eps / (norm + 1e-12)

    def grad_arch_at(sign: float) -> list[torch.Tensor]:
        with torch.no_grad():
            for p, b, d in zip(weights, backup, v):
                p.copy_(b + sign * eps * d)
        loss, _ = loss_fn(train_batch)
        return _zeros_for_none(torch.autograd.grad(loss, arch_params, allow_unused=True), arch_params)

    g_plus = grad_arch_at(+1.0)
    g_minus = grad_arch_at(-1.0)
    with torch.no_grad():
        for p, b in zip(weights, backup):
            p.copy_(b)
    # (g+ - g-) / (2 eps): parenthesised on purpose (the /2.*eps precedence bug, §1.9)
    hyper = [ga - xi * ((gp - gm) / (2 * eps)) for ga, gp, gm in zip(g_arch, g_plus, g_minus)]
    return hyper, loss_val, metrics


__all__ = ["running_stats", "restore", "second_order_grads"]
