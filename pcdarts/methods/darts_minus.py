"""DARTS- (Chu et al., ICLR 2021; docs/methods.md, "DARTS-"): DARTS first order plus an auxiliary
skip connection outside the softmax on every edge, with a fixed coefficient beta decayed per epoch.

    mixed(x) = sum_o softmax(alpha)_o * o(x) + beta_e * aux(x)

``aux`` is the identity on stride-1 edges and a non-affine FactorizedReduce on stride-2
edges (built by the supernet when a method asks for it, :meth:`Method.supernet_options`).
beta is not learned: it is set at the start of each epoch (epoch 0 uses beta0) by the
schedule, ``linear`` ``beta0 * (T - e) / T`` by default (the released script), so it is
1.0 at epoch 0 and 0.02 at epoch 49 of 50 and never reaches 0 while training. The skip
is discarded at derivation (the DARTS rule on softmax(alpha)).

With a decay start S > 0 the released ``DecayScheduler`` keeps beta0 before S and from S on
divides the *raw* epoch by ``T - S`` (no ``e - S``): linear ``beta0 (T - e) / (T - S)``
(continuous: 1.0 at S), cosine ``beta0 (1 + cos(pi e / (T - S))) / 2`` (jumps at S: 0.854 at
epoch 10 of 50, 0.120 at 49) and slow cosine ``beta0 cos(pi e / (2 (T - S)))`` (negative
near the end: -0.346 at 49). That is the default (``decay_from_start=False``);
``decay_from_start=True`` is the corrected schedule, ``e - S`` over ``T - S``, continuous
from beta0 at S to 0 at T (the same values as the released one for ``linear``). Past T the
value of epoch T is kept (the released code's stop epoch, equal to T by default).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from pcdarts.errors import ConfigError
from pcdarts.methods.base import SearchContext
from pcdarts.methods.darts import Darts, DartsConfig
from pcdarts.nn.edges import Mixing
from pcdarts.ranges import EpochIndex, Epochs, Rate
from pcdarts.registry import METHODS

SCHEDULES = ("linear", "cosine", "slow-cosine", "constant")


@dataclass(frozen=True)
class DartsMinusConfig(DartsConfig):
    """DARTS- (authors' values): DARTS first order, beta0 = 1 decayed linearly over T = 50 epochs.

    Attributes:
        beta0: initial coefficient of the auxiliary skip.
        beta_schedule: ``linear`` (released script), ``cosine``, ``slow-cosine`` or ``constant``.
        decay_epochs: T of the schedule; None = the search's epochs.
        decay_start: epochs S that keep beta0 before the decay starts (0 in the paper).
        decay_from_start: with ``decay_start > 0``: False (the released code) divides the raw
            epoch by ``T - S``, so cosine jumps at S and slow cosine ends negative; True
            decays ``e - S`` over ``T - S``, continuously from beta0 at S to 0 at T.
    """

    beta0: Rate = 1.0
    beta_schedule: str = "linear"
    decay_epochs: Optional[Epochs] = None
    decay_start: EpochIndex = 0
    decay_from_start: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta_schedule not in SCHEDULES:
            raise ConfigError(f"method.beta_schedule must be one of {', '.join(SCHEDULES)}, "
                              f"got {self.beta_schedule!r}")
        if self.order != 1:
            raise ConfigError("darts-minus is DARTS first order (method.order must be 1)")


def aux_beta(cfg: DartsMinusConfig, epoch: int, epochs: int) -> float:
    """The auxiliary-skip coefficient of ``epoch`` (0-based) in a search of ``epochs`` epochs
    (see the module docstring; the released ``DecayScheduler`` unless ``decay_from_start``)."""
    T = cfg.decay_epochs or epochs
    S = cfg.decay_start
    if cfg.beta_schedule == "constant" or epoch < S:
        return cfg.beta0
    span = T - S  # the released code's denominator, T_max - T_start
    if span <= 0:
        raise ConfigError(f"method.decay_start={S} must be below the decay horizon T={T} "
                          f"(method.decay_epochs, or search.epochs when unset)")
    e = min(epoch, T)  # past T (the released code's stop epoch) the value of epoch T is kept
    x = (e - S if cfg.decay_from_start else e) / span
    if cfg.beta_schedule == "linear":  # (T - e) / (T - S) either way: 1 at S, 0 at T
        return cfg.beta0 * (T - e) / span
    if cfg.beta_schedule == "cosine":
        return cfg.beta0 * (1 + math.cos(math.pi * x)) / 2
    # slow cosine: a quarter period, beta0 * cos(pi x / 2) (0.031 at epoch 49 of 50)
    return cfg.beta0 * math.cos(math.pi * x / 2)


@METHODS.register("darts-minus", description="DARTS-: auxiliary skip outside the softmax, decayed (ICLR 2021)")
class DartsMinus(Darts):
    """DARTS first order whose Mixing carries the decayed auxiliary-skip coefficient."""

    Config = DartsMinusConfig

    def __init__(self, cfg: DartsMinusConfig, space: Any, space_cfg: Any, device: Any = "cpu") -> None:
        super().__init__(cfg, space, space_cfg, device)
        self.beta = cfg.beta0

    @classmethod
    def supernet_options(cls, cfg: Any) -> dict[str, Any]:
        return {"aux_skip": True}

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        super().check_config(cfg)
        m = cfg.method
        T = m.decay_epochs or cfg.search.epochs
        if m.beta_schedule != "constant" and m.decay_start >= T:
            raise ConfigError(f"method.decay_start={m.decay_start} must be below the decay horizon T={T} "
                              f"(method.decay_epochs, or search.epochs when unset): the schedule divides by "
                              f"T - decay_start; lower method.decay_start or raise method.decay_epochs")

    def on_epoch_start(self, epoch: int, ctx: SearchContext) -> None:
        super().on_epoch_start(epoch, ctx)  # the architecture lr schedule
        self.beta = aux_beta(self.cfg, epoch, ctx.epochs)

    def mixing(self) -> Mixing:
        mix = super().mixing()
        mix.aux_skip = self.beta
        return mix

    def arch_weights(self) -> dict[str, Any]:
        return {**super().arch_weights(), "aux_beta": self.beta}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "beta": self.beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.beta = float(state.get("beta", self.cfg.beta0))


__all__ = ["DartsMinus", "DartsMinusConfig", "aux_beta"]
