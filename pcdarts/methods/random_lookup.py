"""Random search with a benchmark lookup (``random-lookup``): ``num_samples`` cells drawn
uniformly from the space (with replacement, :meth:`SearchSpace.sample_cell`), the best by the
benchmark's validation accuracy. It answers "what would a random search with N full trainings
have found" and needs a space with a benchmark (NAS-Bench-201: ``space.benchmark``, looked up
in :data:`pcdarts.registry.BENCHMARKS`).

Nothing is trained: the method owns its step and asks for no data stream, so an epoch costs
no forward pass; the draws and lookups happen once, when the search starts, from the run's
architecture generator (a seed gives one result). The best cell (the first on a tie) is the
search's genotype; ``random_lookup_valid`` in the history is its benchmark accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from pcdarts.errors import ConfigError
from pcdarts.methods.base import Method, SearchContext
from pcdarts.methods.rsws import cell_mixing
from pcdarts.nn.edges import Mixing
from pcdarts.ranges import Count
from pcdarts.registry import BENCHMARKS, METHODS


@dataclass(frozen=True)
class RandomLookupConfig:
    """random-lookup.

    Attributes:
        num_samples: cells drawn (N, 100 by default).
        dataset: the benchmark dataset whose validation accuracy ranks them (``cifar10``).
    """

    num_samples: Count = 100
    dataset: str = "cifar10"


@METHODS.register("random-lookup", description="baseline: the best of N random cells by the benchmark's "
                                              "validation accuracy (NAS-Bench-201)")
class RandomLookup(Method):
    """No training; N uniformly drawn cells looked up in the space's benchmark at the start."""

    Config = RandomLookupConfig
    has_arch = False
    needs_arch_split = False
    owns_step = True
    data_streams: tuple[str, ...] = ()  # no batch is drawn: a step does nothing

    def __init__(self, cfg: RandomLookupConfig, space: Any, space_cfg: Any,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(cfg, space, space_cfg, device)
        self.device = torch.device(device)
        self.masks: Optional[dict[str, torch.Tensor]] = None
        self.best: Optional[dict[str, torch.Tensor]] = None
        self.best_valid: Optional[float] = None

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        from pcdarts.spaces import SPACES, get_space
        if get_space(cfg.space.name).benchmark is None:
            with_one = [n for n in SPACES.names() if get_space(n).benchmark is not None]
            raise ConfigError(f"method random-lookup ranks cells by a benchmark's accuracy and the {cfg.space.name} "
                              f"space has none; use --space {' or --space '.join(with_one) or '(none)'}, or "
                              f"--method rsws for a random search with weight sharing on any space")

    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = {ct: m.bool().cpu() for ct, m in masks.items()}

    def lookup(self) -> Callable[..., float]:
        return BENCHMARKS.get(self.space.benchmark)

    def on_search_start(self, ctx: SearchContext) -> None:
        validation = self.lookup()
        best, best_valid = None, float("-inf")
        for _ in range(self.cfg.num_samples):
            cell = self.space.sample_cell(self.space_cfg, self.generator, self.masks)
            valid = float(validation(self.space.derive(cell, self.masks), self.cfg.dataset))
            if valid > best_valid:
                best, best_valid = cell, valid
        self.best, self.best_valid = best, best_valid

    def step(self, ctx: SearchContext, batches: dict[str, Any], weight_step: Any) -> dict[str, Any]:
        return {}  # nothing is trained

    def mixing(self) -> Mixing:
        if self.best is not None:
            return cell_mixing(self.best, self.device)
        E, O = self.space.arch_shape(self.space_cfg)
        ops = {}
        for ct in self.space.cell_types:  # uniform over each edge's live ops (set_masks: the removed ones get 0)
            live = self.masks[ct].float() if self.masks is not None and ct in self.masks else torch.ones(E, O)
            ops[ct] = (live / live.sum(1, keepdim=True).clamp_min(1.0)).to(self.device)
        return Mixing(ops=ops)

    def scores(self, ctx: Optional[SearchContext] = None) -> dict[str, torch.Tensor]:
        if self.best is None:
            raise RuntimeError("random-lookup has no cell before the search starts")
        return dict(self.best)

    def arch_weights(self) -> dict[str, Any]:
        return {} if self.best_valid is None else {"random_lookup_valid": self.best_valid,
                                                   "random_lookup_samples": self.cfg.num_samples}

    def state_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.state_dict(), "best": self.best, "best_valid": self.best_valid}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_valid = state.get("best"), state.get("best_valid")


__all__ = ["RandomLookup", "RandomLookupConfig"]
