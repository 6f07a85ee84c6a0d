"""Methods: the architecture state, its optimiser, and the Mixing it emits each step.

A method owns its architecture parameters (registered ``nn.Parameter``s kept out of
the weight optimiser, weight decay and gradient clipping), implements ``arch_step``
and a small closed set of hooks. Each method registers with its own frozen config
dataclass whose defaults are the authors' values. No data loading or search-loop
logic here.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, ContextManager, Optional, Sequence

import torch
import torch.nn as nn

from .edges import Mixing
from .errors import ConfigError
from .ranges import Count, NonNegInt, Positive, Range, Rate
from .registry import METHODS
from .select import normalise_edges


@dataclass
class WeightStepInfo:
    """Read-only view of the weight optimiser that second-order DARTS needs for its virtual step."""

    lr: float
    momentum: float
    weight_decay: float
    momentum_buffers: list[Optional[torch.Tensor]]


@dataclass
class SearchContext:
    """What hooks and arch steps may use; built by the Searcher.

    Attributes:
        supernet: the (possibly DDP-wrapped) supernet; call as ``supernet(x, mixing)``.
        objective: ``objective(logits, y) -> loss``.
        weight_params: the supernet weights, in optimiser order.
        weight_step_info: returns the current :class:`WeightStepInfo`.
        autocast: context-manager factory for mixed precision (a no-op on CPU).
        epoch: the current epoch.
        all_reduce_grads: averages architecture gradients across processes (no-op on one).
    """

    supernet: nn.Module
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    weight_params: list[nn.Parameter]
    weight_step_info: Callable[[], WeightStepInfo]
    autocast: Callable[[], ContextManager[Any]] = contextlib.nullcontext
    epoch: int = 0
    all_reduce_grads: Callable[[Sequence[torch.Tensor]], None] = lambda grads: None


class Method:
    """Base class. Subclasses set ``Config`` and override what differs."""

    Config: type = object
    has_arch = True          # has architecture parameters updated by arch_step
    needs_arch_split = True  # needs a held-out split to train them

    def __init__(self, cfg: Any, space: Any, space_cfg: Any, device: torch.device | str = "cpu") -> None:
        self.cfg, self.space, self.space_cfg = cfg, space, space_cfg
        self.node_edges = space.node_edges(space_cfg)
        self.arch = nn.Module()  # a Module, so the arch state has a state_dict and a device
        self.arch.to(device)

    # ---- architecture state ------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.arch.parameters())

    def mixing(self) -> Mixing:
        raise NotImplementedError

    def is_arch_active(self, epoch: int) -> bool:
        return self.has_arch and epoch >= getattr(self.cfg, "warmup_epochs", 0)

    def scores(self) -> dict[str, torch.Tensor]:
        """Final [E, O] scores per cell type for ``space.derive``."""
        raise NotImplementedError

    def arch_weights(self) -> dict[str, Any]:
        """JSON-friendly architecture weights for history.jsonl: ``{"arch_weights": {cell type: [E][O]},
        "edge_weights": {cell type: [E]}}`` (the latter only with edge normalisation)."""
        return {}

    # ---- hooks (the closed set) ----------------------------------------------
    def on_search_start(self, ctx: SearchContext) -> None:
        pass

    def on_epoch_start(self, epoch: int, ctx: SearchContext) -> None:
        pass

    def on_epoch_end(self, epoch: int, ctx: SearchContext) -> None:
        pass

    def extra_loss(self, ctx: SearchContext) -> Optional[torch.Tensor]:
        return None

    def loss(self, ctx: SearchContext, batch: tuple[torch.Tensor, torch.Tensor],
             mixing: Mixing) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of the supernet at ``mixing`` on ``batch``: the objective plus
        :meth:`extra_loss`. The one loss of both steps: the weight step passes a detached
        mixing, the architecture step a live one."""
        x, y = batch
        with ctx.autocast():
            logits = ctx.supernet(x, mixing)
        loss = ctx.objective(logits, y)
        extra = self.extra_loss(ctx)
        if extra is not None:
            loss = loss + extra
        return loss, logits

    def arch_step(self, ctx: SearchContext, train_batch: tuple[torch.Tensor, torch.Tensor],
                  arch_batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One update of the architecture state; returns detached metrics (loss, correct)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.arch.load_state_dict(state["arch"])


@dataclass(frozen=True)
class DartsConfig:
    """DARTS (ALGORITHMS §1.4). ``order`` 1 = first order (DARTS-V1), 2 = second order (V2).

    Attributes:
        order: 1 or 2.
        arch_lr, arch_betas, arch_weight_decay: Adam on alpha (3e-4, (0.5, 0.999), 1e-3).
        arch_grad_clip: clip of the architecture gradient norm (0 = off; PC-DARTS ImageNet uses 5).
        warmup_epochs: epochs with the architecture frozen (weights only).
        edge_norm: learn per-edge beta normalised over each node's inputs (PC-DARTS §2.2).
        k: default partial-channel factor for this method (space.k overrides).
        init_scale: alpha, beta <- init_scale * N(0, 1).
        selector: registered scorer that turns the state into final scores.
        hvp_eps: the finite-difference radius is hvp_eps / ||v|| (second order).
    """

    order: Count = 1
    arch_lr: Rate = 3e-4
    arch_betas: Annotated[tuple[float, float], Range(0, 1, hi_open=True)] = (0.5, 0.999)
    arch_weight_decay: Rate = 1e-3
    arch_grad_clip: Rate = 0.0
    warmup_epochs: NonNegInt = 0
    edge_norm: bool = False
    k: Count = 1
    init_scale: Rate = 1e-3
    selector: str = "alpha"
    hvp_eps: Positive = 0.01

    def __post_init__(self) -> None:
        if self.order not in (1, 2):
            raise ConfigError(f"method.order must be 1 (first order) or 2 (second order), got {self.order}")
        if len(self.arch_betas) != 2:
            raise ConfigError(f"method.arch_betas must be two numbers (Adam's beta1, beta2), got {list(self.arch_betas)}")


@METHODS.register("darts", description="DARTS, first (order=1) or second (order=2) order")
class Darts(Method):
    """softmax(alpha) mixing; first-order or finite-difference second-order arch step."""

    Config = DartsConfig

    def __init__(self, cfg: DartsConfig, space: Any, space_cfg: Any, device: torch.device | str = "cpu") -> None:
        super().__init__(cfg, space, space_cfg, device)
        E, O = space.arch_shape(space_cfg)
        self.cell_types = space.cell_types
        for ct in self.cell_types:
            self.arch.register_parameter(f"alpha_{ct}", nn.Parameter(cfg.init_scale * torch.randn(E, O)))
        if cfg.edge_norm:
            for ct in self.cell_types:
                self.arch.register_parameter(f"beta_{ct}", nn.Parameter(cfg.init_scale * torch.randn(E)))
        self.arch.to(device)
        self.optimizer = torch.optim.Adam(self.arch.parameters(), lr=cfg.arch_lr, betas=tuple(cfg.arch_betas),
                                          weight_decay=cfg.arch_weight_decay)

    @property
    def alphas(self) -> dict[str, nn.Parameter]:
        return {ct: getattr(self.arch, f"alpha_{ct}") for ct in self.cell_types}

    @property
    def betas(self) -> Optional[dict[str, nn.Parameter]]:
        if not self.cfg.edge_norm:
            return None
        return {ct: getattr(self.arch, f"beta_{ct}") for ct in self.cell_types}

    def mixing(self) -> Mixing:
        ops = {ct: torch.softmax(a, dim=-1) for ct, a in self.alphas.items()}
        betas = self.betas
        edges = None if betas is None else {ct: normalise_edges(b, self.node_edges) for ct, b in betas.items()}
        return Mixing(ops=ops, edges=edges)

    def scores(self) -> dict[str, torch.Tensor]:
        from .registry import SELECTORS
        return SELECTORS.get(self.cfg.selector)(self.alphas, self.betas, self.node_edges)

    def arch_weights(self) -> dict[str, Any]:
        with torch.no_grad():
            mix = self.mixing()
        out: dict[str, Any] = {"arch_weights": {ct: w.float().cpu().tolist() for ct, w in mix.ops.items()}}
        if mix.edges is not None:
            out["edge_weights"] = {ct: w.float().cpu().tolist() for ct, w in mix.edges.items()}
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.arch.load_state_dict(state["arch"])
        self.optimizer.load_state_dict(state["optimizer"])

    # ---- the architecture step ---------------------------------------------
    def _loss(self, ctx: SearchContext, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loss(ctx, batch, self.mixing())  # the mixing with its graph to alpha/beta

    def arch_step(self, ctx: SearchContext, train_batch: tuple[torch.Tensor, torch.Tensor],
                  arch_batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        params = self.arch_parameters()
        if self.cfg.order == 1:
            # first order: w is a constant; only d L_val / d alpha is needed, so autograd.grad
            # skips the weight-gradient kernels of the backward pass
            loss, logits = self._loss(ctx, arch_batch)
            grads = torch.autograd.grad(loss, params)
        else:
            grads, loss, logits = self._second_order_grads(ctx, train_batch, arch_batch)
        ctx.all_reduce_grads(grads)
        for p, g in zip(params, grads):
            p.grad = g.detach().clone()
        if self.cfg.arch_grad_clip > 0:
            nn.utils.clip_grad_norm_(params, self.cfg.arch_grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        correct = (logits.detach().argmax(1) == arch_batch[1]).sum()
        return {"loss": loss.detach(), "correct": correct, "n": arch_batch[1].numel()}

    def _second_order_grads(self, ctx: SearchContext, train_batch: tuple[torch.Tensor, torch.Tensor],
                            arch_batch: tuple[torch.Tensor, torch.Tensor]
                            ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """DARTS-V2 hypergradient g = d/da L_val(w', a) - xi * H v (ALGORITHMS §1.4).

        w' = w - xi * (mu * m + dL_tr/dw + lambda * w) is the real SGD step (momentum and
        weight decay included); the Hessian-vector product is the central difference
        [dL_tr/da(w + eps v) - dL_tr/da(w - eps v)] / (2 eps) with eps = hvp_eps / ||v||.
        Weights are changed in place under no_grad and restored exactly from a copy.
        """
        alphas = self.arch_parameters()
        W = [p for p in ctx.weight_params]
        info = ctx.weight_step_info()
        xi = info.lr
        backup = [p.detach().clone() for p in W]

        loss_tr, _ = self._loss(ctx, train_batch)
        g_tr = torch.autograd.grad(loss_tr, W, allow_unused=True)
        with torch.no_grad():
            for p, g, m in zip(W, g_tr, info.momentum_buffers):
                step = info.weight_decay * p
                if g is not None:
                    step = step + g
                if m is not None:
                    step = step + info.momentum * m
                p.sub_(xi * step)
        loss_val, logits = self._loss(ctx, arch_batch)
        grads = torch.autograd.grad(loss_val, alphas + W, allow_unused=True)
        g_alpha = [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, grads[: len(alphas)])]
        v = [torch.zeros_like(p) if g is None else g for p, g in zip(W, grads[len(alphas):])]
        with torch.no_grad():
            for p, b in zip(W, backup):
                p.copy_(b)
        norm = torch.sqrt(sum((t.float() ** 2).sum() for t in v))
        eps = self.cfg.hvp_eps / (norm + 1e-12)

        def grad_alpha_at(sign: float) -> list[torch.Tensor]:
            with torch.no_grad():
                for p, b, d in zip(W, backup, v):
                    p.copy_(b + sign * eps * d)
            loss, _ = self._loss(ctx, train_batch)
            gs = torch.autograd.grad(loss, alphas, allow_unused=True)
            return [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, gs)]

        g_plus = grad_alpha_at(+1.0)
        g_minus = grad_alpha_at(-1.0)
        with torch.no_grad():
            for p, b in zip(W, backup):
                p.copy_(b)
        # (g+ - g-) / (2 eps): parenthesised on purpose (the /2.*eps precedence bug, §1.9)
        hyper = [ga - xi * ((gp - gm) / (2 * eps)) for ga, gp, gm in zip(g_alpha, g_plus, g_minus)]
        return hyper, loss_val, logits


@dataclass(frozen=True)
class PCDartsConfig(DartsConfig):
    """PC-DARTS (ALGORITHMS §2.4): K=4, edge normalisation, arch frozen for 15 epochs, arch lr 6e-4."""

    arch_lr: Rate = 6e-4
    warmup_epochs: NonNegInt = 15
    edge_norm: bool = True
    k: Count = 4


@METHODS.register("pc-darts", description="PC-DARTS: partial channels + edge normalisation")
class PCDarts(Darts):
    """DARTS with partial channels (K from the config) and per-node edge normalisation."""

    Config = PCDartsConfig


__all__ = ["Method", "Darts", "PCDarts", "DartsConfig", "PCDartsConfig", "SearchContext", "WeightStepInfo",
           "field"]
