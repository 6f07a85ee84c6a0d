"""DARTS (first and second order) and PC-DARTS: softmax(alpha) mixing, optional per-edge beta
normalised over each node's inputs, Adam on the architecture (ALGORITHMS §1.4, §2)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Optional

import torch
import torch.nn as nn

from pcdarts.errors import ConfigError
from pcdarts.methods.base import Method, SearchContext
from pcdarts.methods.hypergrad import second_order_grads
from pcdarts.nn.edges import Mixing, normalise_edges
from pcdarts.ranges import Count, EpochIndex, NonNegInt, Positive, Range, Rate
from pcdarts.registry import METHODS


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
        derive_rule: the space's derive rule (DARTS space: ``darts``, top-2 distinct inputs,
            or ``node-pairs``, top-2 (op, input) pairs; NB201: ``argmax``); None = the space's default.
        hvp_eps: the finite-difference radius is hvp_eps / ||v|| (second order).
    """

    order: Count = 1
    arch_lr: Rate = 3e-4
    arch_betas: Annotated[tuple[float, float], Range(0, 1, hi_open=True)] = (0.5, 0.999)
    arch_weight_decay: Rate = 1e-3
    arch_grad_clip: Rate = 0.0
    warmup_epochs: EpochIndex = 0
    edge_norm: bool = False
    k: Count = 1
    init_scale: Rate = 1e-3
    selector: str = "alpha"
    derive_rule: Optional[str] = None
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

    @classmethod
    def default_k(cls, cfg: DartsConfig) -> int:
        return int(cfg.k)

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        if cls.has_arch and cfg.method.warmup_epochs >= cfg.search.epochs:
            raise ConfigError(f"method.warmup_epochs={cfg.method.warmup_epochs} must be smaller than search.epochs="
                              f"{cfg.search.epochs}: the architecture would never be updated")

    def is_arch_active(self, epoch: int) -> bool:
        return epoch >= self.cfg.warmup_epochs

    def mixing(self) -> Mixing:
        ops = {ct: torch.softmax(a, dim=-1) for ct, a in self.alphas.items()}
        betas = self.betas
        edges = None if betas is None else {ct: normalise_edges(b, self.node_edges) for ct, b in betas.items()}
        return Mixing(ops=ops, edges=edges)

    def scores(self, ctx: Optional[SearchContext] = None) -> dict[str, torch.Tensor]:
        from pcdarts.registry import SELECTORS
        return SELECTORS.get(self.cfg.selector)(self, ctx)

    def derive_rule(self) -> Optional[str]:
        return self.cfg.derive_rule

    def divergence_hint(self) -> str:
        return (f"the architecture learning rate is probably too high (method.arch_lr={self.cfg.arch_lr:g}); "
                "lower it and start again")

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
    def _loss(self, ctx: SearchContext, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.loss(ctx, batch, self.mixing())  # the mixing with its graph to alpha/beta

    def arch_step(self, ctx: SearchContext, train_batch: tuple[torch.Tensor, torch.Tensor],
                  arch_batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        params = self.arch_parameters()
        if self.cfg.order == 1:
            # first order: w is a constant; only d L_val / d alpha is needed, so autograd.grad
            # skips the weight-gradient kernels of the backward pass
            loss, metrics = self._loss(ctx, arch_batch)
            grads = torch.autograd.grad(loss, params)
        else:
            grads, loss, metrics = second_order_grads(
                lambda batch: self._loss(ctx, batch), params, ctx.weight_params, ctx.weight_step_info(),
                train_batch, arch_batch, hvp_eps=self.cfg.hvp_eps, supernet=ctx.supernet)
        ctx.all_reduce_grads(grads)
        for p, g in zip(params, grads):
            p.grad = g.detach().clone()
        if self.cfg.arch_grad_clip > 0:
            nn.utils.clip_grad_norm_(params, self.cfg.arch_grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.detach(), **metrics}


@dataclass(frozen=True)
class PCDartsConfig(DartsConfig):
    """PC-DARTS (ALGORITHMS §2.4): K=4, edge normalisation, arch frozen for 15 epochs, arch lr 6e-4."""

    arch_lr: Rate = 6e-4
    warmup_epochs: EpochIndex = 15
    edge_norm: bool = True
    k: Count = 4


@METHODS.register("pc-darts", description="PC-DARTS: partial channels + edge normalisation")
class PCDarts(Darts):
    """DARTS with partial channels (K from the config) and per-node edge normalisation."""

    Config = PCDartsConfig


__all__ = ["Darts", "PCDarts", "DartsConfig", "PCDartsConfig"]
