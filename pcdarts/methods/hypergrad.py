"""Unrolled hypergradients: DARTS's second-order architecture gradient and its multi-level
generalisation (a chain of one-step approximations), reusable by any method.

DARTS (docs/methods.md, "DARTS"), one lower level:

    g = d/da L_val(w', a) - xi * H v,   w' = w - xi * (mu * m + dL_tr/dw + lambda * w)

with the Hessian-vector product ``H v = d^2 L_tr / (da dw) . v`` taken as the central
difference ``[dL_tr/da(w + eps v) - dL_tr/da(w - eps v)] / (2 eps)``, ``eps = hvp_eps / ||v||``
and ``v = dL_val/dw'``. The virtual step is the real SGD step (momentum and weight decay
included). Weights are changed in place under ``no_grad`` and restored exactly from a copy.

Multi-level (docs/methods.md, "Learning-by-X engine", the learning-by-X methods): a chain of :class:`UnrolledStep`s,
each one virtual SGD step of some tensors ``P_l`` on a loss ``L_l`` evaluated at the state
the earlier steps left (``P_l' = P_l - xi_l * (mu m + dL_l/dP_l + lambda P_l)``), then an
upper loss ``F`` of the architecture and the final state. The hypergradient ``dF/da`` is the
reverse-mode chain rule through the steps, last to first: with ``u`` the adjoint of the state
(``dF/dstate``, starting at ``dF/dstate_final``), step ``l`` adds ``-xi_l * d/da (u_P . dL_l/dP)``
to the architecture gradient and ``-xi_l * d/dt (u_P . dL_l/dP)`` to the adjoint of every tensor
``t`` an earlier step changed; each such mixed derivative is one central difference of
``dL_l`` at ``P_l +- eps u_P`` (the DARTS trick). A step whose tensors an earlier step already
moved (the same encoder trained by several levels in turn) also carries its own adjoint back:
``u_P <- u_P (1 - xi lambda) - xi H_PP u_P``. One lower level is exactly DARTS: the same
operations in the same order, so :func:`second_order_grads` is that case.

Batch-norm running statistics: the published DARTS code evaluates the virtual weights on a
copy of the network, so the validation batch never enters the live statistics (3 updates
per arch step: the training forward of the virtual step and the two finite-difference
forwards). Here the virtual weights live in the networks themselves, so their running
statistics are saved before the upper-level forward and put back after it: the same 3
updates per level.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

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


def _zeros_for_none(grads: Sequence[Optional[torch.Tensor]], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if g is None else g for p, g in zip(like, grads)]


def _grad(loss: torch.Tensor, inputs: Sequence[torch.Tensor]) -> list[Optional[torch.Tensor]]:
    """``d loss / d inputs`` (None where unused); all None for a loss without a graph (a
    level whose minibatch held none of its examples)."""
    if not inputs:
        return []
    if not loss.requires_grad:
        return [None] * len(inputs)
    return list(torch.autograd.grad(loss, list(inputs), allow_unused=True))


@dataclass
class UnrolledStep:
    """One lower level of the chain: one virtual SGD step of ``params`` on ``loss``.

    Attributes:
        params: the tensors this level trains (changed in place, restored afterwards).
        loss: ``loss(outer) -> scalar`` at the current values of every tensor. ``outer`` is
            False where only ``d loss / d params`` is needed (the virtual step) and True where
            the gradients of the architecture and of the earlier levels' tensors are needed
            too (the finite differences): a loss may skip building a graph it does not need.
        lr: the step size xi per tensor (a float: the same for all).
        momentum, weight_decay: mu and lambda per tensor (floats: the same for all).
        momentum_buffers: the real optimiser's momentum per tensor (None = none yet).
        restart: start from the values ``params`` had when the chain began (the live
            weights) instead of where the earlier levels left them, with ``prox *
            ||P - P_prev||^2`` pulling towards the latter (IL's proximity coupling); the
            adjoint reaching ``P_prev`` is then ``2 xi prox u``.
        prox: the proximity weight of ``restart``.
    """

    params: list[torch.Tensor]
    loss: Callable[[bool], torch.Tensor]
    lr: float | list[float] = 0.0
    momentum: float | list[float] = 0.0
    weight_decay: float | list[float] = 0.0
    momentum_buffers: Optional[list[Optional[torch.Tensor]]] = None
    restart: bool = False
    prox: float = 0.0
    # filled by the forward sweep
    _pre: list[torch.Tensor] = field(default_factory=list, repr=False)
    _start: list[torch.Tensor] = field(default_factory=list, repr=False)

    def per_tensor(self, value: float | list[float]) -> list[float]:
        return list(value) if isinstance(value, (list, tuple)) else [float(value)] * len(self.params)

    @classmethod
    def from_info(cls, params: list[torch.Tensor], loss: Callable[[bool], torch.Tensor],
                  info: WeightStepInfo, **kw: object) -> "UnrolledStep":
        """A step with an SGD optimiser's settings (:class:`WeightStepInfo`)."""
        return cls(params, loss, lr=info.lr, momentum=info.momentum, weight_decay=info.weight_decay,
                   momentum_buffers=list(info.momentum_buffers), **kw)  # type: ignore[arg-type]


def _grads_at(step: UnrolledStep, d: list[torch.Tensor], eps: torch.Tensor, sign: float,
              wrt: list[torch.Tensor]) -> list[Optional[torch.Tensor]]:
    """Gradients of the step's loss at ``start + sign * eps * d`` (one finite-difference point)."""
    with torch.no_grad():
        for p, b, x in zip(step.params, step._start, d):
            p.copy_(b + sign * eps * x)
    return _grad(step.loss(True), wrt)


def unrolled_grads(steps: Sequence[UnrolledStep], upper: Callable[[], tuple[torch.Tensor, dict]],
                   arch_params: list[torch.Tensor], *, hvp_eps: float = 0.01,
                   protect: Sequence[Optional[nn.Module]] = ()) -> tuple[list[torch.Tensor], torch.Tensor, dict]:
    """``dF/da`` through a chain of one-step unrolled lower levels (module docstring).

    Args:
        steps: the lower levels, in the order they train (level 1 first).
        upper: ``() -> (F, metrics)`` at the current values (after every virtual step).
        arch_params: the architecture tensors ``a``.
        hvp_eps: each finite-difference radius is ``hvp_eps / ||u_P||``.
        protect: modules whose batch-norm running statistics the upper forward must not change.

    Returns:
        (gradients of ``arch_params``, F at the virtual state, its metrics). Every tensor of
        every step holds its value from before the call again.
    """
    origin: dict[int, torch.Tensor] = {}
    moved: set[int] = set()  # ids of tensors an earlier step changed
    for step in steps:
        step._pre, step._start = [], []
        for p in step.params:
            if id(p) not in origin:
                origin[id(p)] = p.detach().clone()
        # the values this step starts from (the state the earlier steps left)
        step._pre = [origin[id(p)] if id(p) not in moved else p.detach().clone() for p in step.params]
        step._start = [origin[id(p)] for p in step.params] if step.restart else step._pre
        if step.restart:
            with torch.no_grad():
                for p, s in zip(step.params, step._start):
                    p.copy_(s)
        g = _grad(step.loss(False), step.params)
        bufs = step.momentum_buffers or [None] * len(step.params)
        with torch.no_grad():
            for p, gi, m, lr, mu, wd, prev in zip(step.params, g, bufs, step.per_tensor(step.lr),
                                                  step.per_tensor(step.momentum), step.per_tensor(step.weight_decay),
                                                  step._pre):
                upd = wd * p
                if gi is not None:
                    upd = upd + gi
                if m is not None:
                    upd = upd + mu * m
                if step.restart and step.prox:
                    upd = upd + 2 * step.prox * (p - prev)
                p.sub_(lr * upd)
        moved.update(id(p) for p in step.params)

    live = [t for s in steps for t in s.params]
    live = list({id(t): t for t in live}.values())  # each tensor once, in first-seen order
    saved = [st for m in protect for st in running_stats(m)]
    loss_val, metrics = upper()
    grads = _grad(loss_val, arch_params + live)
    restore(saved)  # after the backward: the graph may hold the buffers it read
    g_arch = _zeros_for_none(grads[: len(arch_params)], arch_params)
    adjoint: dict[int, Optional[torch.Tensor]] = {id(t): g for t, g in zip(live, grads[len(arch_params):])}

    for index in range(len(steps) - 1, -1, -1):
        step = steps[index]
        params = step.params
        lrs = step.per_tensor(step.lr)
        # back to the state before this step (the later steps are undone already)
        with torch.no_grad():
            for p, b in zip(params, step._pre):
                p.copy_(b)
        u = [adjoint.get(id(p)) for p in params]
        earlier = {id(t): t for s in steps[:index] for t in s.params}  # tensors whose adjoint still matters
        if all(x is None for x in u):
            for p in params:
                if id(p) not in earlier:
                    adjoint.pop(id(p), None)
            continue
        u = _zeros_for_none(u, params)
        own = {id(p): (x, lr, wd) for p, x, lr, wd in zip(params, u, lrs, step.per_tensor(step.weight_decay))}
        xi = max(lrs)
        if xi == 0:  # no step at all (xi = 0): nothing flows through this level
            for i, (x, _, _) in own.items():
                if i in earlier and not step.restart:
                    adjoint[i] = x
                else:
                    adjoint.pop(i, None)
            continue
        # the direction: u scaled by each tensor's step size relative to the largest
        # (all equal in DARTS: u itself, bit for bit)
        d = u if all(lr == xi for lr in lrs) else [x * (lr / xi) for x, lr in zip(u, lrs)]
        norm = torch.sqrt(sum((at_least_float32(t) ** 2).sum() for t in d))
        eps = hvp_eps / (norm + 1e-12)
        # the Hessian of the step's own tensors is needed only where an earlier step moved them
        # (restart: the step starts from the constant origin, so never)
        others = [t for i, t in earlier.items() if not (step.restart and any(i == id(p) for p in params))]
        wrt = arch_params + others

        g_plus = _grads_at(step, d, eps, +1.0, wrt)
        g_minus = _grads_at(step, d, eps, -1.0, wrt)
        with torch.no_grad():
            for p, b in zip(params, step._pre):
                p.copy_(b)
        n_arch = len(arch_params)
        g_plus_arch = _zeros_for_none(g_plus[:n_arch], arch_params)
        g_minus_arch = _zeros_for_none(g_minus[:n_arch], arch_params)
        # (g+ - g-) / (2 eps): parenthesised on purpose (the /2.*eps precedence bug of some re-implementations)
        g_arch = [ga - xi * ((gp - gm) / (2 * eps)) for ga, gp, gm in zip(g_arch, g_plus_arch, g_minus_arch)]
        for t, gp, gm in zip(others, g_plus[n_arch:], g_minus[n_arch:]):
            h = None if gp is None and gm is None else (
                (torch.zeros_like(t) if gp is None else gp) - (torch.zeros_like(t) if gm is None else gm)) / (2 * eps)
            if id(t) in own:  # this step's own tensor, moved by an earlier step: u (1 - xi lambda) - xi H u
                x, lr, wd = own.pop(id(t))
                new = x - lr * wd * x
                adjoint[id(t)] = new if h is None else new - xi * h
            elif h is not None:
                prev = adjoint.get(id(t))
                adjoint[id(t)] = -xi * h if prev is None else prev - xi * h
        for i, (x, lr, _) in own.items():  # the step's tensors not differentiated above
            if i in earlier and step.restart and step.prox:  # only the proximity term reaches P_prev
                adjoint[i] = 2 * lr * step.prox * x
            else:  # a constant start (no earlier step moved it, or restarted without prox)
                adjoint.pop(i, None)
    for step in steps:
        step._pre, step._start = [], []
    return g_arch, loss_val, metrics


def second_order_grads(loss_fn: LossFn, arch_params: list[torch.Tensor], weights: list[torch.Tensor],
                       info: WeightStepInfo, train_batch: Batch, arch_batch: Batch, *, hvp_eps: float = 0.01,
                       supernet: Optional[nn.Module] = None) -> tuple[list[torch.Tensor], torch.Tensor, dict]:
    """The unrolled hypergradient of ``arch_params`` (DARTS second order: one lower level).

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
    step = UnrolledStep.from_info(weights, lambda outer: loss_fn(train_batch)[0], info)
    return unrolled_grads([step], lambda: loss_fn(arch_batch), arch_params, hvp_eps=hvp_eps, protect=[supernet])


__all__ = ["running_stats", "restore", "second_order_grads", "unrolled_grads", "UnrolledStep"]
