"""DARTS (first and second order) and PC-DARTS: softmax(alpha) mixing, optional per-edge beta
normalised over each node's inputs, Adam on the architecture (docs/methods.md, "DARTS", "PC-DARTS"), with an
optional per-epoch architecture learning-rate schedule (B-DARTS's confident learning rate)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Optional

import torch
import torch.nn as nn

from pcdarts.errors import ConfigError
from pcdarts.methods.base import Method, SearchContext, apply_arch_grads
from pcdarts.methods.hypergrad import second_order_grads
from pcdarts.nn.edges import Mixing, normalise_edges
from pcdarts.ranges import Count, EpochIndex, Positive, Range, Rate
from pcdarts.registry import METHODS


@dataclass(frozen=True)
class DartsConfig:
    """DARTS (docs/methods.md, "DARTS"). ``order`` 1 = first order (DARTS-V1), 2 = second order (V2).

    Attributes:
        order: 1 or 2.
        arch_lr, arch_betas, arch_weight_decay: Adam on alpha (3e-4, (0.5, 0.999), 1e-3).
        arch_grad_clip: clip of the architecture gradient norm (0 = off; PC-DARTS ImageNet uses 5).
        warmup_epochs: epochs with the architecture frozen (weights only).
        edge_norm: learn per-edge beta normalised over each node's inputs (PC-DARTS).
        k: default partial-channel factor for this method (space.k overrides).
        init_scale: alpha, beta <- init_scale * N(0, 1).
        selector: registered scorer that turns the state into final scores.
        derive_rule: the space's derive rule (DARTS space: ``darts``, top-2 distinct inputs,
            or ``node-pairs``, top-2 (op, input) pairs; NB201: ``argmax``); None = the space's default.
        hvp_eps: the finite-difference radius is hvp_eps / ||v|| (second order).
        arch_lr_schedule: the Adam lr of epoch e is ``arch_lr * arch_lr_factor(schedule, e, epochs)``:
            ``constant`` (DARTS), ``power(p)`` (B-DARTS's confident learning rate, p = 2 in the
            official code), ``linear`` or ``cosine-increasing`` (see :func:`arch_lr_factor`).
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
    arch_lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        try:
            parse_arch_lr_schedule(self.arch_lr_schedule)
        except ValueError:
            raise ConfigError(f"method.arch_lr_schedule must be constant, linear, cosine-increasing or power(p) "
                              f"with p > 0 (e.g. power(2)), got {self.arch_lr_schedule!r}") from None
        if self.order not in (1, 2):
            raise ConfigError(f"method.order must be 1 (first order) or 2 (second order), got {self.order}")
        if len(self.arch_betas) != 2:
            raise ConfigError("method.arch_betas must be two numbers (Adam's beta1, beta2), "
                              f"got {list(self.arch_betas)}")


def parse_arch_lr_schedule(schedule: str) -> tuple[str, float]:
    """``constant`` | ``linear`` | ``cosine-increasing`` | ``power(p)`` -> (kind, p) (p = 1
    unless ``power``); ValueError for anything else, or p not a finite number > 0."""
    s = str(schedule).strip()
    if s in ("constant", "linear", "cosine-increasing"):
        return s, 1.0
    m = re.fullmatch(r"power\(\s*([^()]*?)\s*\)", s)
    if m is None:
        raise ValueError(f"unknown architecture lr schedule {schedule!r}")
    p = float(m.group(1))  # ValueError if not a number
    if not (math.isfinite(p) and p > 0):
        raise ValueError(f"power(p) needs a finite p > 0, got {p}")
    return "power", p


def arch_lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """The factor on ``arch_lr`` in ``epoch`` (0-based) of a search of ``epochs`` epochs.

    B-DARTS's confident learning rate (CLR, docs/methods.md, "B-DARTS"): the architecture gradient is
    trusted more as the supernet weights train, so its learning rate grows with training
    progress ``t = (epoch + 1) / epochs`` (t = 1 in the last epoch; clamped there):

    * ``constant``: 1 (plain DARTS);
    * ``power(p)``: t^p. This is the authors' code (zixiangding/BNASv2,
      ``BNASv2CLR/train_search_b_confidence.py``: ``((epoch + 1) / epochs) ** power``, power 2,
      multiplying the Adam lr of the first-order step); the formula is unverified
      against the paper text;
    * ``linear``: t (= ``power(1)``);
    * ``cosine-increasing``: (1 - cos(pi t)) / 2, a half cosine from ~0 up to 1.

    The factor scales the Adam lr for both orders. (The official second-order step instead
    multiplies the unrolled loss by it and keeps the lr; under Adam that only shifts the
    balance against the weight decay, so it is not offered.)
    """
    kind, p = parse_arch_lr_schedule(schedule)
    if kind == "constant":
        return 1.0
    t = min((epoch + 1) / epochs, 1.0)
    if kind == "cosine-increasing":
        return (1.0 - math.cos(math.pi * t)) / 2.0
    return t ** p  # power(p); linear is p = 1


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
        # the live ops per cell type when some were removed before the search (set_masks); None = all
        self.op_masks: Optional[dict[str, torch.Tensor]] = None

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
                              f"{cfg.search.epochs}: the architecture would never be updated; to run fewer epochs, "
                              "use --budget N instead of --search.epochs (it scales the warm-up alike), or lower "
                              "--method.warmup_epochs")

    def is_arch_active(self, epoch: int) -> bool:
        return epoch >= self.cfg.warmup_epochs

    def on_epoch_start(self, epoch: int, ctx: SearchContext) -> None:
        """Sets this epoch's architecture lr by ``arch_lr_schedule`` (``constant`` leaves the
        optimiser alone). The lr lives in the optimiser's state, so a mid-epoch resume keeps it."""
        if parse_arch_lr_schedule(self.cfg.arch_lr_schedule)[0] != "constant":
            lr = self.cfg.arch_lr * arch_lr_factor(self.cfg.arch_lr_schedule, epoch, ctx.epochs)
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Removed ops leave the softmax: ``Mix(x) = sum_o I(o) e^a_o o(x) / sum_o' I(o') e^a_o'``
        (docs/methods.md, "Zero-shot pruning"); their alpha stays a parameter, with no gradient from the loss.
        Every op live (the usual case) keeps the plain softmax, bit for bit."""
        live = {ct: masks[ct].bool() for ct in self.cell_types if ct in masks}
        if any(not bool(m.any(-1).all()) for m in live.values()):
            raise ValueError("set_masks: every edge needs at least one live op")
        device = self.alphas[self.cell_types[0]].device
        self.op_masks = None if all(bool(m.all()) for m in live.values()) else {
            ct: m.to(device) for ct, m in live.items()}

    def live_alphas(self) -> dict[str, torch.Tensor]:
        """alpha per cell type with the removed ops at -inf (alpha itself when every op is live)."""
        if self.op_masks is None:
            return dict(self.alphas)
        return {ct: a if ct not in self.op_masks else a.masked_fill(~self.op_masks[ct], float("-inf"))
                for ct, a in self.alphas.items()}

    def mixing(self) -> Mixing:
        ops = {ct: torch.softmax(a, dim=-1) for ct, a in self.live_alphas().items()}
        betas = self.betas
        edges = None if betas is None else {ct: normalise_edges(b, self.node_edges) for ct, b in betas.items()}
        return Mixing(ops=ops, edges=edges)

    def scores(self, ctx: Optional[SearchContext] = None) -> dict[str, torch.Tensor]:
        from pcdarts.registry import SCORERS
        return SCORERS.get(self.cfg.selector)(self, ctx)

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
        if parse_arch_lr_schedule(self.cfg.arch_lr_schedule)[0] != "constant":
            out["arch_lr"] = self.optimizer.param_groups[0]["lr"]
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.arch.load_state_dict(state["arch"])
        self.optimizer.load_state_dict(state["optimizer"])

    # ---- the architecture step ---------------------------------------------
    def _loss(self, ctx: SearchContext,
              batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
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
        apply_arch_grads(ctx, self.optimizer, params, grads, self.cfg.arch_grad_clip)
        return {"loss": loss.detach(), **metrics}


@dataclass(frozen=True)
class PCDartsConfig(DartsConfig):
    """PC-DARTS (docs/methods.md, "PC-DARTS"): K=4, edge normalisation, arch frozen for 15 epochs, arch lr 6e-4."""

    arch_lr: Rate = 6e-4
    warmup_epochs: EpochIndex = 15
    edge_norm: bool = True
    k: Count = 4


@METHODS.register("pc-darts", description="PC-DARTS: partial channels + edge normalisation")
class PCDarts(Darts):
    """DARTS with partial channels (K from the config) and per-node edge normalisation."""

    Config = PCDartsConfig


__all__ = ["Darts", "PCDarts", "DartsConfig", "PCDartsConfig", "arch_lr_factor", "parse_arch_lr_schedule"]
