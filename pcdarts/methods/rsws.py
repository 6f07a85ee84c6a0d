"""Random search with weight sharing (RSWS; Li & Talwalkar, UAI 2019, "Random Search and
Reproducibility for Neural Architecture Search"): the baseline every weight-sharing method
must beat.

* **Training**: the supernet's weights are trained with one discrete cell per step, drawn
  uniformly from the space (:meth:`SearchSpace.sample_cell`: on the DARTS space two distinct
  inputs per node and one non-``none`` op per kept edge; on NB201 one op per edge), the same
  cell for every cell of its type. Only the drawn ops run (``Mixing.active``), on the fast
  path too. There is no architecture parameter and no architecture step.
* **Selection** (at the end of the last epoch): ``num_samples`` cells are drawn the same way
  and each is scored with the shared weights, untouched, on the first ``eval_batches`` batches
  of the held-out split (accuracy; the negative loss for an objective without accuracy), in
  eval mode as the search's own evaluation; the best (the first on a tie) is the result.

Every draw comes from the run's architecture generator, so a seed gives one run and exact
resume holds. The paper samples 1000 cells in its selection stage (``num_samples``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from pcdarts.methods.base import Method, SearchContext
from pcdarts.nn.edges import Mixing
from pcdarts.ranges import Count
from pcdarts.registry import METHODS


@dataclass(frozen=True)
class RSWSConfig:
    """RSWS.

    Attributes:
        num_samples: cells scored with the shared weights at the end (1000 in the paper).
        eval_batches: held-out batches each of them is scored on.
        k: partial-channel factor (1: every channel, as the paper).
    """

    num_samples: Count = 1000
    eval_batches: Count = 10
    k: Count = 1


def cell_mixing(cell: dict[str, torch.Tensor], device: torch.device) -> Mixing:
    """The Mixing that runs exactly one discrete cell: weight 1 on its ops, the rest not run."""
    return Mixing(ops={ct: w.to(device) for ct, w in cell.items()}, active={ct: w.bool() for ct, w in cell.items()})


@METHODS.register("rsws", description="random search with weight sharing (Li & Talwalkar): the baseline")
class RSWS(Method):
    """One uniformly drawn cell per weight step; the best of ``num_samples`` drawn cells, scored
    with the shared weights on the held-out split, at the end."""

    Config = RSWSConfig
    has_arch = False
    needs_arch_split = True  # the selection scores cells on it

    def __init__(self, cfg: RSWSConfig, space: Any, space_cfg: Any, device: torch.device | str = "cpu") -> None:
        super().__init__(cfg, space, space_cfg, device)
        self.device = torch.device(device)
        self.masks: Optional[dict[str, torch.Tensor]] = None
        self.best: Optional[dict[str, torch.Tensor]] = None  # the selected cell, once chosen
        self.best_score: Optional[float] = None

    @classmethod
    def default_k(cls, cfg: RSWSConfig) -> int:
        return int(cfg.k)

    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = {ct: m.bool().cpu() for ct, m in masks.items()}

    def sample(self) -> dict[str, torch.Tensor]:
        """One cell drawn uniformly from the live ops (the run's architecture generator)."""
        return self.space.sample_cell(self.space_cfg, self.generator, self.masks)

    def mixing(self) -> Mixing:
        """A fresh cell per call (one per weight step) until the selection; then the selected one."""
        return cell_mixing(self.best if self.best is not None else self.sample(), self.device)

    def on_epoch_end(self, epoch: int, ctx: SearchContext) -> None:
        if epoch == ctx.epochs - 1 and self.best is None:
            self.select(ctx)

    @torch.no_grad()
    def score_cell(self, ctx: SearchContext, cell: dict[str, torch.Tensor],
                   batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Accuracy (%) of one cell with the shared weights on ``batches`` (or minus its mean loss
        when the objective reports no accuracy); nothing is trained or updated."""
        mix = cell_mixing(cell, self.device)
        loss_sum, correct, n, has_acc = 0.0, 0.0, 0, True
        for batch in batches:
            with ctx.autocast():
                loss, metrics = ctx.objective(ctx.supernet, batch, mix)
            size = int(batch[1].shape[0])
            loss_sum += float(loss) * size
            n += size
            has_acc = has_acc and "correct" in metrics
            correct += float(metrics.get("correct", 0))
        return 100.0 * correct / max(n, 1) if has_acc else -loss_sum / max(n, 1)

    def select(self, ctx: SearchContext) -> None:
        """Draw ``num_samples`` cells, score each with the shared weights, keep the best."""
        batches = ctx.sample_batches(self.cfg.eval_batches, "arch")
        supernet = ctx.supernet
        was_training = supernet.training
        supernet.eval()
        try:
            best, best_score = None, float("-inf")
            for _ in range(self.cfg.num_samples):
                cell = self.sample()
                score = self.score_cell(ctx, cell, batches)
                if score > best_score:
                    best, best_score = cell, score
        finally:
            supernet.train(was_training)
        self.best, self.best_score = best, best_score

    def scores(self, ctx: Optional[SearchContext] = None) -> dict[str, torch.Tensor]:
        """The selected cell as [E, O] scores (before the selection: a cell drawn now, so that a
        per-epoch genotype exists; it says nothing)."""
        return dict(self.best if self.best is not None else self.sample())

    def arch_weights(self) -> dict[str, Any]:
        return {} if self.best_score is None else {"rsws_best_score": self.best_score,
                                                   "rsws_samples": self.cfg.num_samples}

    def state_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.state_dict(), "best": self.best, "best_score": self.best_score}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_score = state.get("best"), state.get("best_score")


__all__ = ["RSWS", "RSWSConfig", "cell_mixing"]
