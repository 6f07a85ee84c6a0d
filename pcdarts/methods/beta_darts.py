"""β-DARTS (Ye et al., CVPR 2022, "β-DARTS: Beta-Decay Regularization for Differentiable
Architecture Search"): DARTS first order whose architecture loss carries the beta-decay term

    L_arch = L_val(w, alpha) + lambda_e * mean_{cell types, edges} logsumexp_o(alpha_{e,o})

The log-sum-exp of an edge's alpha is the log of the softmax's normaliser; pushing it down
keeps the unnormalised alpha (their "beta") small and even, which the authors show damps the
skip-connection collapse. ``lambda_e`` grows linearly with the epoch.

Official code (``Sunshine-Ye/Beta-DARTS``, ``optimizers/darts/architect.py`` ``mlc_loss`` and
``_backward_step``; entry point ``nasbench201/train_search.py``):

* the term is the mean over every edge (row of alpha) of ``logsumexp`` over its ops;
* ``lambda_e = 0 + 50 * epoch / 100``: the divisor 100 is a literal, so with the script's
  default 100 epochs lambda reaches 49.5 at the last epoch, and with 50 epochs only 24.5.
  ``lambda_max`` (50) and ``lambda_epochs`` (100) reproduce this; ``lambda_epochs: null``
  scales to the search's own epochs instead (lambda_max in the last epoch);
* the term is added to the first-order architecture step only (``order: 1``); the weight
  step is unchanged;
* Adam on alpha with lr 3e-4, betas (0.5, 0.999), weight decay 1e-3, as DARTS.

Notes on pcdarts: where the official script samples its architecture batch with a fresh
iterator each step, pcdarts cycles one persistent iterator (the same distribution). The
regulariser is computed over the live ops only when some were pruned (``search.prune``):
a removed op's alpha is at -inf in the softmax and takes no part in the normaliser.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from pcdarts.errors import ConfigError
from pcdarts.methods.base import SearchContext
from pcdarts.methods.darts import Darts, DartsConfig
from pcdarts.ranges import Epochs, Rate
from pcdarts.registry import METHODS


@dataclass(frozen=True)
class BetaDartsConfig(DartsConfig):
    """β-DARTS (official code's values): DARTS first order plus the beta-decay term.

    Attributes:
        lambda_max: the regulariser's coefficient reached at epoch ``lambda_epochs`` (50).
        lambda_epochs: the divisor of the linear ramp, ``lambda_e = lambda_max * e / lambda_epochs``
            (the official script's literal 100, whatever its epochs); None = the search's epochs
            minus one, so the last epoch uses ``lambda_max``.
    """

    lambda_max: Rate = 50.0
    lambda_epochs: Optional[Epochs] = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.order != 1:
            raise ConfigError("beta-darts adds its term to the first-order architecture step "
                              "(method.order must be 1)")


def beta_lambda(cfg: BetaDartsConfig, epoch: int, epochs: int) -> float:
    """The coefficient of the beta-decay term in ``epoch`` (0-based) of ``epochs``."""
    T = cfg.lambda_epochs if cfg.lambda_epochs is not None else max(epochs - 1, 1)
    return cfg.lambda_max * epoch / T


def beta_decay_loss(alphas: dict[str, torch.Tensor]) -> torch.Tensor:
    """mean over every edge of every cell type of logsumexp over the edge's (live) ops.
    ``alphas``: cell type -> [E, O], removed ops at -inf."""
    return torch.cat([torch.logsumexp(a, dim=-1) for a in alphas.values()]).mean()


@METHODS.register("beta-darts", description="β-DARTS: DARTS 1st order + beta-decay regulariser (CVPR 2022)")
class BetaDarts(Darts):
    """DARTS first order whose architecture loss adds ``lambda_e * beta_decay_loss(alpha)``."""

    Config = BetaDartsConfig

    def __init__(self, cfg: BetaDartsConfig, space: Any, space_cfg: Any, device: Any = "cpu") -> None:
        super().__init__(cfg, space, space_cfg, device)
        self.reg_lambda = beta_lambda(cfg, 0, 1)

    def on_epoch_start(self, epoch: int, ctx: SearchContext) -> None:
        super().on_epoch_start(epoch, ctx)  # the architecture lr schedule
        self.reg_lambda = beta_lambda(self.cfg, epoch, ctx.epochs)

    def extra_loss(self, ctx: SearchContext, step: str) -> Optional[torch.Tensor]:
        if step != "arch" or self.reg_lambda == 0:
            return None
        return self.reg_lambda * beta_decay_loss(self.live_alphas())

    def arch_weights(self) -> dict[str, Any]:
        with torch.no_grad():
            reg = float(beta_decay_loss(self.live_alphas()))
        return {**super().arch_weights(), "beta_lambda": self.reg_lambda, "beta_decay_loss": reg}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "reg_lambda": self.reg_lambda}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.reg_lambda = float(state.get("reg_lambda", self.reg_lambda))


__all__ = ["BetaDarts", "BetaDartsConfig", "beta_decay_loss", "beta_lambda"]
