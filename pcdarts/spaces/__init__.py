"""Search spaces: what a topology is and how to build and discretise it.

A :class:`SearchSpace` knows its primitives, its cell types and their edges; it
builds the supernet and derives a genotype from scores with a pure function.
It trains nothing.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from pcdarts.config import SpaceConfig
from pcdarts.genotype import Genotype
from pcdarts.nn.counting import genotype_stats
from pcdarts.registry import BENCHMARKS, SPACES


class SearchSpace:
    """Protocol of a search space; concrete spaces register in :data:`SPACES`."""

    name: str = ""
    primitives: tuple[str, ...] = ()
    cell_types: tuple[str, ...] = ()
    default_layers: int = 1  # space.layers when the config leaves it None
    train_preset: str = "cifar10_paper"  # the training preset the end-of-search summary suggests

    # the discrete cells of this space: each intermediate node keeps ``inputs_per_node`` of its
    # incoming edges (None = every one), each kept edge exactly one op, never one of
    # ``derive_excluded`` (read by :meth:`sample_cell`; the derive rules follow the same shape)
    inputs_per_node: Optional[int] = None
    derive_excluded: tuple[str, ...] = ()
    # the name of this space's benchmark lookup in :data:`pcdarts.registry.BENCHMARKS`, if any
    benchmark: Optional[str] = None
    # per cell type, per edge: the op names that edge offers, when the edges differ (RobustDARTS's
    # S1); None = every primitive on every edge. Pure data; read through candidate_masks()
    edge_candidates: Optional[dict[str, tuple[tuple[str, ...], ...]]] = None
    # the genotype class that derive returns (registered in pcdarts.genotype.GENOTYPE_TYPES; its
    # ``space`` field keys the evaluation network in pcdarts.registry.NETWORKS)
    genotype_type: type = object
    # the class of this space's ``space:`` config section (pcdarts.config.SpaceConfig plus the
    # space's own fields, e.g. DartsSpaceConfig); read by pcdarts.config.space_section
    Config: type = SpaceConfig
    # other spaces' section fields this space reads as saying nothing new, by value (NB201:
    # ``pool_bn: false``, its pooling never has BN); any other value of theirs is refused
    foreign_values: dict[str, tuple[Any, ...]] = {}
    # True where ``none`` is among the primitives only as DARTS's placeholder zero op (derive never
    # keeps it, and methods that drop it from the search, e.g. DrNAS, do so); False where it is a
    # real candidate of the space (NB201, RobustDARTS's S3)
    none_is_placeholder: bool = False

    def check_config(self, space_cfg: Any) -> None:
        """Refuse (ConfigError naming the field) a space config that builds a broken supernet."""

    def candidate_masks(self) -> Optional[dict[str, torch.Tensor]]:
        """Per cell type, [E, O] booleans of the ops each edge offers (from :attr:`edge_candidates`);
        None = every primitive on every edge. This is the seam of per-edge candidate sets: the
        space builds its supernet with these masks (the other ops never exist, on the reference
        and the fast path alike), every method learns them through ``set_masks`` (a softmax or a
        Dirichlet then spans only the edge's own ops) and :meth:`derive` never picks outside them."""
        if self.edge_candidates is None:
            return None
        return {ct: torch.tensor([[p in ops for p in self.primitives] for ops in edges], dtype=torch.bool)
                for ct, edges in self.edge_candidates.items()}

    def start_masks(self, masks: Optional[dict[str, torch.Tensor]] = None) -> Optional[dict[str, torch.Tensor]]:
        """The op masks a supernet is built with: ``masks`` (a resumed, pruned run's) within the
        space's :meth:`candidate_masks`."""
        cand = self.candidate_masks()
        if cand is None:
            return masks
        return {ct: c & masks[ct].bool().cpu() if masks and ct in masks else c for ct, c in cand.items()}

    def node_edges(self, space_cfg: Any) -> list[list[int]]:
        """Edge indices entering each intermediate node (the edge-normalisation groups)."""
        raise NotImplementedError

    def num_edges(self, space_cfg: Any) -> int:
        return sum(len(g) for g in self.node_edges(space_cfg))

    def arch_shape(self, space_cfg: Any) -> tuple[int, int]:
        """[E, O]: the shape of one cell type's op-weight tensor."""
        return self.num_edges(space_cfg), len(self.primitives)

    def build_supernet(self, space_cfg: Any, *, k: int, num_classes: int, in_channels: int,
                       masks: Optional[dict[str, torch.Tensor]] = None, aux_skip: bool = False) -> nn.Module:
        raise NotImplementedError

    # name -> rule(scores, masks, primitives) -> Genotype; the first is the space's default
    derive_rules: dict[str, Any] = {}

    def derive(self, scores: dict[str, torch.Tensor], masks: Optional[dict[str, torch.Tensor]] = None,
               rule: Optional[str] = None) -> Genotype:
        """Pure function: per-cell-type [E, O] scores (and optional op masks) -> genotype,
        by the named derive ``rule`` (None = the space's default)."""
        name = rule or next(iter(self.derive_rules))
        if name not in self.derive_rules:
            from pcdarts.errors import ConfigError
            raise ConfigError(f"unknown derive rule {name!r} for the {self.name} space; "
                              f"choose one of: {', '.join(self.derive_rules)}")
        # never an op the edge does not offer
        return self.derive_rules[name](scores, self.start_masks(masks), self.primitives)

    def sample_cell(self, space_cfg: Any, generator: Optional[torch.Generator] = None,
                    masks: Optional[dict[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
        """A discrete cell drawn uniformly from the space (random-search baselines): per cell
        type an [E, O] float tensor with a 1 for each kept (edge, op) and 0 elsewhere. Per node,
        ``inputs_per_node`` distinct incoming edges are drawn uniformly among those with a live
        op, and on each an op uniformly among its live ops (``masks``: cell type -> [E, O], False =
        removed; ``derive_excluded`` ops never). Every draw comes from ``generator``, so a seed
        gives one sequence of cells. ``space.derive`` of the result gives back exactly this cell."""
        E, O = self.arch_shape(space_cfg)
        allowed = torch.ones(E, O, dtype=torch.bool)
        for name in self.derive_excluded:
            if name in self.primitives:
                allowed[:, self.primitives.index(name)] = False
        device = generator.device if generator is not None else torch.device("cpu")

        def draw(n: int) -> list[int]:  # a uniform random order of range(n)
            return torch.randperm(n, generator=generator, device=device).tolist()

        cells = {}
        for ct in self.cell_types:
            ok = allowed & masks[ct].bool().cpu() if masks is not None and ct in masks else allowed
            w = torch.zeros(E, O)
            for node, group in enumerate(self.node_edges(space_cfg)):
                cands = [e for e in group if bool(ok[e].any())]
                keep = len(group) if self.inputs_per_node is None else self.inputs_per_node
                if len(cands) < keep:
                    raise ValueError(f"{ct} cell node {node}: {len(cands)} incoming edges with a live op, "
                                     f"{keep} needed to draw a cell")
                for i in sorted(draw(len(cands))[:keep]):
                    ops = ok[cands[i]].nonzero().flatten().tolist()
                    w[cands[i], ops[draw(len(ops))[0]]] = 1.0
            cells[ct] = w
        return cells

    def genotype_stats(self, genotype: Genotype, *, num_classes: int, in_channels: int,
                       input_size: int, labelled: bool = True) -> dict[str, float]:
        """Parameters (M) and multiply-adds (M) of the genotype's evaluation network
        (``labelled`` False: data without classes, worded so in the network's label)."""
        return genotype_stats(genotype, num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                              labelled=labelled)

    def epoch_extras(self, genotype: Genotype, *, table: Optional[str] = None) -> dict[str, Any]:
        """The space's own fields of a search epoch's history record for this epoch's ``genotype``
        (the Searcher merges them): with a ``benchmark``, its lookup of the cell under the
        benchmark's name (``{"nb201": {dataset: {"valid", "test"}}}``; ``table``: the benchmark's
        table file, None = its default); else nothing. A lookup that cannot be answered raises
        the benchmark's error (the Searcher then warns and stops asking)."""
        if self.benchmark is None:
            return {}
        return {self.benchmark: BENCHMARKS.get(self.benchmark).epoch_record(genotype, table=table)}

    # Evaluation networks: every genotype type's network is registered in
    # ``pcdarts.registry.NETWORKS`` under the genotype's ``space`` field (DARTS and NB201 in
    # pcdarts/nn/networks.py, broad in pcdarts/nn/broad.py); build_network and the size reports
    # look it up there, so a space with a new kind of cell registers its genotype type and network.


def masked_scores(scores: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Scores with pruned ops set to -inf so no rule can pick them."""
    s = scores.detach().float().cpu().clone()
    if mask is not None:
        s[~mask.bool().cpu()] = float("-inf")
    return s


def get_space(name: str) -> SearchSpace:
    return SPACES.get(name)()


from pcdarts.spaces import darts, nb201, broad, robust  # noqa: E402,F401  (registration; broad, robust build on darts)

__all__ = ["SearchSpace", "get_space", "masked_scores", "SPACES"]
