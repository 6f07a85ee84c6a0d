"""IS-DARTS (He, Liu, Zhang & Zheng, AAAI 2024; docs/methods.md, "IS-DARTS").

No architecture parameters: the mixed edge is ``sum_o m_o o(x) / |O|`` with binary masks
``m`` (one per cell type) and the constant divisor ``|O|``, the number of the space's
candidate ops (the edge's own, on a space whose edges differ), not of the survivors.
All training images train the weights (no split,
no architecture step). Near the end of the search the supernet is shrunk progressively:
after the training epochs ``E - S*D + k*D`` (1-based, k = 0..S-1; ``S = shrink_steps``,
``D = shrink_interval``, ``E = search.epochs``) the IIM pass
(:mod:`pcdarts.scorers.iim`) measures every live op and, in each comparison subset, the
ops with the largest F (lowest IIM) are removed from the supernet (``ctx.prune``: they
stop executing, their weights and momenta are freed). Subsets and survivors:

* NAS-Bench-201: the 5 ops of an edge; keep 1 (one per step with the paper's S = 4);
* DARTS space (and every space with a ``node-pairs`` derive rule, e.g. ``broad``): all
  (op, input) pairs entering a node (16, 24, 32, 40); keep 2, which may share an input;
  derived with the space's ``node-pairs`` rule.

Step ``s`` (0-based) removes ``ceil((live - keep) / (S - s))`` of a subset, so any S ends
with exactly ``keep`` survivors; exact ties (e.g. the +inf of ``none`` and of constant maps) go
to the lowest input, then in the official code's op order (:data:`OFFICIAL_OP_ORDER`: its
DARTS list is none, skip, sep 3/5, dil 3/5, avg pool, max pool, not ours). The paper's
"shrink rate" is 1/S (its ablation: rate 0.5 / 0.25 / 0.143 / 0.1 / 0.05 = S 2 / 4 / 7 /
10 / 20 with D 18 / 6 / 3 / 2 / 1 on the DARTS space; rate 1, one-shot selection, is S = 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from pcdarts.errors import ConfigError
from pcdarts.methods.base import Method, SearchContext
from pcdarts.nn.edges import Mixing
from pcdarts.ranges import Count, Epochs
from pcdarts.registry import METHODS
from pcdarts.scorers.iim import FORMULAS, iim_statistics, sample_images
from pcdarts.spaces import get_space

# (comparison subset, survivors per subset, derive rule, the authors' S, the authors' D):
# DARTS-type spaces (those with the ``node-pairs`` rule: darts, broad) compete per node,
# every other space (NAS-Bench-201) per edge with its default rule
NODE_RULE = ("node", 2, "node-pairs", 7, 3)
EDGE_RULE = ("edge", 1, None, 4, 2)

# the op order of the official code's search spaces (its DARTS list and its NAS-Bench-201 list
# are both in this order): exact ties in a subset are removed in it; ops it does not name
# come after, in the space's order
OFFICIAL_OP_ORDER = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "sep_conv_3x3", "sep_conv_5x5",
                     "dil_conv_3x3", "dil_conv_5x5", "avg_pool_3x3", "max_pool_3x3")


def tie_ranks(primitives: Sequence[str]) -> list[int]:
    """Per op index of ``primitives``, its position in :data:`OFFICIAL_OP_ORDER` (unknown ops
    after the known ones, in the space's order)."""
    known = {name: i for i, name in enumerate(OFFICIAL_OP_ORDER)}
    return [known.get(name, len(known) + o) for o, name in enumerate(primitives)]


@dataclass(frozen=True)
class ISDartsConfig:
    """IS-DARTS (docs/methods.md, "IS-DARTS").

    Attributes:
        shrink_steps: S, the number of shrink steps; None = the authors' value for the
            space (NB201 4, DARTS-type spaces 7). The paper's shrink rate is 1/S.
        shrink_interval: D, epochs between shrink steps; None = the authors' value (NB201 2,
            DARTS-type 3). Shrinks happen after epochs ``E - S*D + k*D`` (1-based), so the last
            one leaves D epochs of training on the final cell.
        iim_num_samples: images of the IIM pass: the first ones of a fixed, un-augmented
            view of the training images; None = all of them (the official code iterates its
            whole, augmented, training loader). The paper uses 200 (NB201) and 600 (DARTS
            space); the presets set those.
        iim_formula: ``official`` (``3 (x - mu)^2 / sigma^6``, the released code) or
            ``textbook`` (``(x - mu)^2 / sigma^6 - 1 / (2 sigma^4)``, sigma floored; the paper's observed information).
    """

    shrink_steps: Optional[Count] = None
    shrink_interval: Optional[Epochs] = None
    iim_num_samples: Optional[Count] = None
    iim_formula: str = "official"

    def __post_init__(self) -> None:
        if self.iim_formula not in FORMULAS:
            raise ConfigError(f"method.iim_formula must be one of {', '.join(FORMULAS)}, got {self.iim_formula!r}")


def space_rule(space: Any) -> tuple[str, int, Optional[str], int, int]:
    """(subset kind, survivors, derive rule, authors' S, authors' D) of a search space."""
    return NODE_RULE if "node-pairs" in space.derive_rules else EDGE_RULE


def resolved_schedule(cfg: ISDartsConfig, space: Any) -> tuple[int, int]:
    """(S, D): the config's values, or the authors' ones for the space where None."""
    _, _, _, S, D = space_rule(space)
    return (int(cfg.shrink_steps) if cfg.shrink_steps is not None else S,
            int(cfg.shrink_interval) if cfg.shrink_interval is not None else D)


def shrink_epochs(epochs: int, steps: int, interval: int) -> list[int]:
    """The 1-based epochs after which step k = 0..S-1 shrinks: ``E - S*D + k*D``
    (NB201 30/4/2: 22, 24, 26, 28; DARTS 50/7/3: 29, 32, ..., 47)."""
    return [epochs - steps * interval + k * interval for k in range(steps)]


def removal_count(live: int, keep: int, step: int, steps: int) -> int:
    """Ops a subset with ``live`` survivors loses at step ``step`` (0-based) of ``steps``:
    ``ceil((live - keep) / (steps - step))``, never negative."""
    return max(0, math.ceil((live - keep) / (steps - step)))


def subsets(kind: str, node_edges: Sequence[Sequence[int]], num_edges: int) -> list[list[int]]:
    """The edge groups whose (edge, op) entries compete: one per edge, or one per node."""
    return [[e] for e in range(num_edges)] if kind == "edge" else [list(g) for g in node_edges]


def shrink_mask(fisher: torch.Tensor, mask: torch.Tensor, groups: Sequence[Sequence[int]], keep: int,
                step: int, steps: int, op_ranks: Optional[Sequence[int]] = None) -> torch.Tensor:
    """The [E, O] mask after one shrink step: in every group, the :func:`removal_count`
    live (edge, op) entries of largest F are removed; exact ties go to the lowest edge of the
    group (edges of a node are in input order), then the lowest ``op_ranks[o]`` (the official
    op order, :func:`tie_ranks`; None = the op index), as the official code's stable sort."""
    new = mask.clone()
    O = mask.shape[1]
    rank = list(range(O)) if op_ranks is None else list(op_ranks)
    for group in groups:
        live = [(e, o) for e in group for o in range(O) if bool(mask[e, o])]
        n = removal_count(len(live), keep, step, steps)
        order = sorted(range(len(live)), key=lambda i: (-float(fisher[live[i]]), list(group).index(live[i][0]),
                                                        rank[live[i][1]]))
        for i in order[:n]:
            new[live[i]] = False
    return new


@METHODS.register("is-darts", description="IS-DARTS: binary masks, IIM-based progressive shrinking (AAAI 2024)")
class ISDarts(Method):
    """Binary masks per cell type, constant 1/|O| mixing, shrinking at the end of epochs."""

    Config = ISDartsConfig
    has_arch = False
    needs_arch_split = False
    op_weights_move = False  # 1/|O| over the live ops: uniform by construction, their entropy says nothing

    def __init__(self, cfg: ISDartsConfig, space: Any, space_cfg: Any, device: torch.device | str = "cpu") -> None:
        super().__init__(cfg, space, space_cfg, device)
        self.kind, self.keep, self.rule, _, _ = space_rule(space)
        self.steps, self.interval = resolved_schedule(cfg, space)
        E, O = space.arch_shape(space_cfg)
        # the constant divisor |O|: the space's candidate ops, per edge where its edges offer
        # different sets (RobustDARTS's S1: the edge's own two, not the six of the union)
        cand = space.candidate_masks()
        self.num_ops: dict[str, Any] = {ct: O if cand is None else cand[ct].sum(-1, keepdim=True).float().to(device)
                                        for ct in space.cell_types}
        self.cell_types = space.cell_types
        self.groups = subsets(self.kind, self.node_edges, E)
        self.op_ranks = tie_ranks(space.primitives)
        for ct in self.cell_types:
            # buffers, so the method's state_dict (and a resume) carries them
            self.arch.register_buffer(f"mask_{ct}", torch.ones(E, O, dtype=torch.bool, device=device))
            self.arch.register_buffer(f"iim_{ct}", torch.zeros(E, O, dtype=torch.float64, device=device))
        self.arch.register_buffer("shrinks", torch.zeros((), dtype=torch.long, device=device))

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        S, D = resolved_schedule(cfg.method, get_space(cfg.space.name))
        E = cfg.search.epochs
        if S * D >= E:
            raise ConfigError(
                f"method.shrink_steps={S} x method.shrink_interval={D} = {S * D} epochs of shrinking must be fewer "
                f"than search.epochs={E} (the first shrink follows a trained epoch); give the search more epochs "
                f"(search.epochs, or a larger --budget) or lower method.shrink_steps or method.shrink_interval")

    # ---- state -------------------------------------------------------------
    def masks(self) -> dict[str, torch.Tensor]:
        return {ct: getattr(self.arch, f"mask_{ct}") for ct in self.cell_types}

    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Ops removed before the search (``search.prune``) are pruned here too, so the shrink
        steps count only the live ones (the divisor stays |O|, as ever)."""
        for ct, mask in self.masks().items():
            if ct in masks:
                mask.copy_(mask & masks[ct].to(mask.device).bool())

    def last_iim(self) -> dict[str, torch.Tensor]:
        """F of the last IIM pass per cell type ([E, O]; zeros before the first shrink)."""
        return {ct: getattr(self.arch, f"iim_{ct}") for ct in self.cell_types}

    def mixing(self) -> Mixing:
        return Mixing(ops={ct: m.float() / self.num_ops[ct] for ct, m in self.masks().items()})

    def scores(self, ctx: Optional[SearchContext] = None) -> dict[str, torch.Tensor]:
        """Live ops ranked by the last IIM pass (lowest F = most informative first), pruned ones
        last: after the last shrink the derived cell is exactly the survivors (NB201: the one
        op per edge; DARTS: the two (op, input) pairs per node); before it, the cell the
        current ranking would keep (the official code derives nothing until the end; before
        the first pass every live op ties and the rule takes the lowest index)."""
        out = {}
        for ct, mask in self.masks().items():
            rank = -self.last_iim()[ct].float().cpu().clamp(max=1e30)  # +inf F -> the lowest live score
            out[ct] = torch.where(mask.cpu(), rank, torch.full_like(rank, float("-inf")))
        return out

    def derive_rule(self) -> Optional[str]:
        return self.rule

    def arch_weights(self) -> dict[str, Any]:
        out: dict[str, Any] = {"arch_weights": {ct: w.cpu().tolist() for ct, w in self.mixing().ops.items()}}
        if int(self.arch.shrinks) > 0:  # F of the last pass; null = +inf
            out["iim"] = {ct: [[None if math.isinf(v) else v for v in row] for row in f.cpu().tolist()]
                          for ct, f in self.last_iim().items()}
        return out

    def divergence_hint(self) -> str:
        return "is-darts has no architecture step; lower search.lr and start again"

    # ---- shrinking ---------------------------------------------------------
    def schedule(self, epochs: int) -> list[int]:
        return shrink_epochs(epochs, self.steps, self.interval)

    def on_epoch_end(self, epoch: int, ctx: SearchContext) -> None:
        schedule = self.schedule(ctx.epochs)
        if epoch + 1 in schedule:
            self.shrink(schedule.index(epoch + 1), ctx)

    @torch.no_grad()
    def shrink(self, step: int, ctx: SearchContext) -> None:
        """One shrink step: the IIM pass, the new masks, the ops removed from the supernet."""
        n = self.cfg.iim_num_samples
        fisher = iim_statistics(ctx.supernet, self.mixing(), sample_images(ctx, n), formula=self.cfg.iim_formula,
                                num_samples=n)
        for ct, mask in self.masks().items():
            getattr(self.arch, f"iim_{ct}").copy_(fisher[ct])
            mask.copy_(shrink_mask(fisher[ct], mask.cpu(), self.groups, self.keep, step, self.steps, self.op_ranks))
        self.arch.shrinks += 1
        ctx.prune({ct: m.cpu() for ct, m in self.masks().items()})


__all__ = ["ISDarts", "ISDartsConfig", "NODE_RULE", "EDGE_RULE", "OFFICIAL_OP_ORDER", "shrink_epochs",
           "removal_count", "shrink_mask", "subsets", "resolved_schedule", "space_rule", "tie_ranks"]
