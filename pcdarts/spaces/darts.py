"""The DARTS cell space (docs/methods.md, "Search spaces"): search cell, supernet, derivation rule."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn as nn

from pcdarts.nn.edges import MixedEdge, Mixing
from pcdarts.config import SpaceConfig
from pcdarts.errors import ConfigError
from pcdarts.ranges import Count
from pcdarts.genotype import DartsGenotype
from pcdarts.nn.ops import DARTS_PRIMITIVES, FactorizedReduce, ReLUConvBN, darts_ops
from pcdarts.nn.fast import kernels as fo
from pcdarts.nn.fast.blocks import DARTS_KINDS, darts_block
from pcdarts.nn.fast.cells import FastOptions, cell_plans, run_cell
from pcdarts.nn.fast.conv import preprocess
from pcdarts.registry import SPACES
from pcdarts.spaces import SearchSpace, masked_scores


def darts_node_edges(nodes: int) -> list[list[int]]:
    """Edge indices entering nodes 2..nodes+1: [[0,1],[2,3,4],[5..8],[9..13]] for 4 nodes."""
    groups, e = [], 0
    for j in range(nodes):
        groups.append(list(range(e, e + j + 2)))
        e += j + 2
    return groups


def initial_masks(cell_types: Sequence[str], nodes: int, masks: Optional[dict[str, torch.Tensor]] = None,
                  num_ops: int = len(DARTS_PRIMITIVES)) -> dict[str, torch.Tensor]:
    """The op masks a DARTS-cell supernet starts from: the given ones (a resumed, pruned run, or
    a space's per-edge candidate sets), else every op of every edge, per cell type."""
    E = sum(j + 2 for j in range(nodes))
    return {ct: (masks[ct].bool().clone() if masks and ct in masks
                 else torch.ones(E, num_ops, dtype=torch.bool)) for ct in cell_types}


class SearchCell(nn.Module):
    """A DARTS search cell: two preprocessed inputs, ``nodes`` intermediate nodes, 4C output.

    ``pool_bn``: BN(affine=False) after the pooling ops (the DARTS search cell; False: the
    IS-DARTS and DrNAS cells). ``track_running_stats`` False: every BN of the cell (its
    preprocessing and ops) uses batch statistics, also in eval mode (the IS-DARTS code)."""

    def __init__(self, nodes: int, C_pp: int, C_p: int, C: int, reduction: bool, reduction_prev: bool,
                 k: int, channel_mode: str, masks: Optional[torch.Tensor] = None, aux_skip: bool = False,
                 pool_bn: bool = True, track_running_stats: bool = True,
                 primitives: tuple[str, ...] = DARTS_PRIMITIVES) -> None:
        super().__init__()
        self.reduction, self.nodes = reduction, nodes
        self.primitives = tuple(primitives)  # the O axis of the op weights (the fast path reads it too)
        t = track_running_stats
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_pp, C, affine=False, track_running_stats=t)
        else:
            self.preprocess0 = ReLUConvBN(C_pp, C, 1, 1, 0, affine=False, track_running_stats=t)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False, track_running_stats=t)
        factories = darts_ops(pool_bn, t)
        self.edges = nn.ModuleList()
        e = 0
        for j in range(nodes):
            for i in range(j + 2):
                stride = 2 if reduction and i < 2 else 1
                mask = None if masks is None else masks[e].tolist()
                self.edges.append(MixedEdge(C, stride, self.primitives, factories, k, channel_mode, mask, aux_skip))
                e += 1

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                edge_weights: Optional[torch.Tensor], aux_coef: Optional[object] = None,
                active: Optional[list[list[bool]]] = None) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        e = 0
        for j in range(self.nodes):
            s = None
            for i, h in enumerate(states):
                ew = None if edge_weights is None else edge_weights[e]
                y = self.edges[e](h, weights[e], ew, aux_coef, None if active is None else active[e])
                s = y if s is None else s + y
                e += 1
            states.append(s)
        return torch.cat(states[2:], dim=1)


class DartsSupernet(nn.Module):
    """The DARTS search network. It owns no architecture parameters, loss or device.

    Args:
        C: initial channels; layers: number of cells (reductions at layers//3 and 2*layers//3).
        k, channel_mode: partial channels (K=1 is DARTS).
        stem: ``cifar`` (conv3x3 -> BN, ``stem_multiplier * C`` channels) or ``imagenet``
            (three stride-2 3x3 convs; the first cell then preprocesses as after a reduction).
        masks: cell type -> [E, O] booleans of ops to build (None = all).
        aux_skip: build an auxiliary skip module on every edge (DARTS-; see :class:`MixedEdge`).
        pool_bn, track_running_stats: BN after the pooling ops, running statistics in the
            cells' BNs (see :class:`SearchCell`; the stem keeps its running statistics).
        primitives: the op names of the O axis (the DARTS primitives; a space with other
            candidates, e.g. RobustDARTS's S1-S4, gives its own and its per-edge sets as ``masks``).
    """

    cell_types = ("normal", "reduce")

    def __init__(self, C: int = 16, layers: int = 8, num_classes: int = 10, in_channels: int = 3,
                 nodes: int = 4, stem_multiplier: int = 3, stem: str = "cifar", k: int = 1,
                 channel_mode: str = "first+shuffle", masks: Optional[dict[str, torch.Tensor]] = None,
                 aux_skip: bool = False, pool_bn: bool = True, track_running_stats: bool = True,
                 primitives: tuple[str, ...] = DARTS_PRIMITIVES) -> None:
        super().__init__()
        self.nodes = nodes
        self.masks = initial_masks(self.cell_types, nodes, masks, len(primitives))
        C_stem = stem_multiplier * C
        if stem == "cifar":
            self.stem: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
            self.stem1: Optional[nn.Module] = None
            reduction_prev = False
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, C_stem // 2, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(C_stem // 2), nn.ReLU(inplace=True),
                nn.Conv2d(C_stem // 2, C_stem, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C_stem))
            self.stem1 = nn.Sequential(
                nn.ReLU(inplace=False), nn.Conv2d(C_stem, C_stem, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(C_stem))
            reduction_prev = True
        C_pp, C_p, C_cur = C_stem, C_stem, C
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_cur *= 2
            ct = "reduce" if reduction else "normal"
            self.cells.append(SearchCell(nodes, C_pp, C_p, C_cur, reduction, reduction_prev, k, channel_mode,
                                         self.masks[ct], aux_skip, pool_bn, track_running_stats, primitives))
            reduction_prev = reduction
            C_pp, C_p = C_p, nodes * C_cur
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)

    def cell_type(self, cell: nn.Module) -> str:
        return "reduce" if cell.reduction else "normal"

    def forward_features(self, x: torch.Tensor, mixing: Mixing) -> list[torch.Tensor]:
        """Outputs of the stem and of every cell (for decoders and analysis)."""
        s0 = self.stem(x)
        s1 = self.stem1(s0) if self.stem1 is not None else s0
        feats = []
        for i, cell in enumerate(self.cells):
            ct = self.cell_type(cell)
            s0, s1 = s1, cell(s0, s1, mixing.weights_for(ct, i), mixing.edge_weights(ct), mixing.aux_skip,
                              mixing.active_for(ct))
            feats.append(s1)
        return feats

    def forward(self, x: torch.Tensor, mixing: Mixing) -> torch.Tensor:
        out = self.forward_features(x, mixing)[-1]
        return self.classifier(self.global_pooling(out).flatten(1))

    def candidate_ops(self) -> Iterator[tuple[str, int, int, int, nn.Module]]:
        """(cell type, cell index, edge, op index, module) for every built candidate op."""
        for c, cell in enumerate(self.cells):
            for e, edge in enumerate(cell.edges):
                for o in edge.active:
                    yield self.cell_type(cell), c, e, o, edge.ops[str(o)]

    def prune(self, masks: dict[str, torch.Tensor]) -> None:
        """Remove the ops whose mask entry is False (the only way structure changes)."""
        for ct, m in masks.items():
            self.masks[ct] = self.masks[ct] & m.bool().cpu()
        for cell in self.cells:
            m = self.masks[self.cell_type(cell)]
            for e, edge in enumerate(cell.edges):
                edge.prune(m[e].tolist())


def _derive_cells(scores: dict[str, torch.Tensor], masks: Optional[dict[str, torch.Tensor]],
                  primitives: tuple[str, ...], nodes: Optional[int], pick: Any) -> DartsGenotype:
    """The scaffolding of the DARTS-space rules: masked scores with ``none`` excluded, then
    ``pick(block [inputs, O], cell type, node) -> [(op, input), (op, input)]`` per node."""
    none = primitives.index("none") if "none" in primitives else None
    cells = {}
    for ct in ("normal", "reduce"):
        s = masked_scores(scores[ct], None if masks is None else masks.get(ct))
        if none is not None:
            s[:, none] = float("-inf")
        n_nodes = nodes if nodes is not None else _nodes_for_edges(s.shape[0])
        chosen: list[tuple[str, int]] = []
        for j, group in enumerate(darts_node_edges(n_nodes)):
            chosen += [(primitives[o], t) for o, t in pick(s[group], ct, j + 2)]
        cells[ct] = tuple(chosen)
    concat = tuple(range(2, 2 + len(cells["normal"]) // 2))
    return DartsGenotype(cells["normal"], concat, cells["reduce"], concat)


def _top2_inputs(block: torch.Tensor, ct: str, node: int) -> list[tuple[int, int]]:
    strength = block.max(dim=1).values
    order = sorted(range(block.shape[0]), key=lambda t: (-float(strength[t]), t))[:2]  # ties: lower input
    for t in order:
        if not torch.isfinite(block[t]).any():
            raise ValueError(f"{ct} cell node {node}: every op of input {t} is pruned; cannot derive")
    return [(int(block[t].argmax()), t) for t in order]


def _top2_pairs(block: torch.Tensor, ct: str, node: int) -> list[tuple[int, int]]:
    flat = [(-float(block[t, o]), t, o) for t in range(block.shape[0]) for o in range(block.shape[1])]
    best = sorted(v for v in flat if v[0] != float("inf"))[:2]  # ties: lower input, then lower op
    if len(best) < 2:
        raise ValueError(f"{ct} cell node {node}: fewer than two live (op, input) pairs; cannot derive")
    return [(o, t) for _, t, o in best]


def derive_darts(scores: dict[str, torch.Tensor], masks: Optional[dict[str, torch.Tensor]] = None,
                 primitives: tuple[str, ...] = DARTS_PRIMITIVES, nodes: Optional[int] = None) -> DartsGenotype:
    """DARTS rule: per node keep the 2 incoming edges with the largest non-``none`` weight,
    then take the argmax op (``none`` excluded) on each kept edge. Scores are [E, O] per cell type
    (softmax(alpha), times the normalised beta for PC-DARTS)."""
    return _derive_cells(scores, masks, primitives, nodes, _top2_inputs)


def derive_node_pairs(scores: dict[str, torch.Tensor], masks: Optional[dict[str, torch.Tensor]] = None,
                      primitives: tuple[str, ...] = DARTS_PRIMITIVES, nodes: Optional[int] = None) -> DartsGenotype:
    """Node-pairs rule (IS-DARTS): per node keep the 2 (op, input) pairs with the largest
    score over all its incoming edges and ops (``none`` excluded); the two may share an input."""
    return _derive_cells(scores, masks, primitives, nodes, _top2_pairs)


def _nodes_for_edges(E: int) -> int:
    n, total = 0, 0
    while total < E:
        total += n + 2
        n += 1
    if total != E:
        raise ValueError(f"{E} edges do not form a DARTS cell")
    return n


class FastDartsSupernet(DartsSupernet, FastOptions):
    """:class:`DartsSupernet` with the fast cell forward (same modules, same state_dict)."""

    def __init__(self, *args: Any, recompute: bool = True, channels_last: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recompute, self.channels_last = recompute, channels_last
        self._edge_list = [(i, j + 2) for j, group in enumerate(darts_node_edges(self.nodes))
                           for i in range(len(group))]

    def cell_forward(self, cell: SearchCell, s0: list[torch.Tensor], s1: list[torch.Tensor], weights: torch.Tensor,
                     edge_weights: Optional[torch.Tensor], aux_coef: Optional[object] = None,
                     active: Optional[list[list[bool]]] = None) -> list[torch.Tensor]:
        """A cell on node lists: inputs and output are the nodes whose concatenation is the
        reference cell's input/output (the concatenation itself is never materialised)."""
        plans = cell_plans(cell, self._edge_list, cell.primitives, DARTS_KINDS, self.nodes + 2, active)
        states = [preprocess(cell.preprocess0, s0), preprocess(cell.preprocess1, s1)]
        states = run_cell(cell, plans, darts_block, states, darts_node_edges(self.nodes), self._edge_list,
                           weights, edge_weights, self.recompute, aux_coef)
        return states[2:]

    def _run(self, x: torch.Tensor, mixing: Mixing) -> Iterator[list[torch.Tensor]]:
        if self.channels_last:
            x = x.contiguous(memory_format=fo.CL)
        s0 = self.stem(x)
        s1 = self.stem1(s0) if self.stem1 is not None else s0
        n0, n1 = [s0], [s1]
        for i, cell in enumerate(self.cells):
            ct = self.cell_type(cell)
            n0, n1 = n1, self.cell_forward(cell, n0, n1, mixing.weights_for(ct, i), mixing.edge_weights(ct),
                                           mixing.aux_skip, mixing.active_for(ct))
            yield n1

    def forward_features(self, x: torch.Tensor, mixing: Mixing) -> list[torch.Tensor]:
        if self.use_reference:
            return super().forward_features(x, mixing)
        return [torch.cat(nodes, dim=1) for nodes in self._run(x, mixing)]

    def forward(self, x: torch.Tensor, mixing: Mixing) -> torch.Tensor:
        if self.use_reference:
            return super().forward(x, mixing)
        for nodes in self._run(x, mixing):
            pass
        # global average pooling of a concatenation = concatenation of the per-node poolings
        return self.classifier(torch.cat([self.global_pooling(n).flatten(1) for n in nodes], 1))


@dataclass(frozen=True)
class DartsSpaceConfig(SpaceConfig):
    """The ``space:`` section of the DARTS cell spaces (darts, s1-s4): the common fields
    (:class:`~pcdarts.config.SpaceConfig`) and the DARTS cell's own.

    Attributes:
        nodes: intermediate nodes per cell (4).
        stem: ``cifar`` (one 3x3 conv) or ``imagenet`` (three stride-2 convs).
        stem_multiplier: stem width as a multiple of C (3).
        pool_bn: BN(affine=False) after the pooling ops of the search cells; None = true (the
            DARTS code); false = pooling alone (the IS-DARTS code).
    """

    nodes: Count = 4
    stem: str = "cifar"
    stem_multiplier: Count = 3
    pool_bn: Optional[bool] = None


def cell_bn_options(space_cfg: Any) -> dict[str, bool]:
    """The search cells' BN options of a space config: ``space.pool_bn`` (None = True, the DARTS
    search cell) and ``space.track_running_stats``."""
    pool_bn = getattr(space_cfg, "pool_bn", None)
    return {"pool_bn": True if pool_bn is None else bool(pool_bn),
            "track_running_stats": bool(getattr(space_cfg, "track_running_stats", True))}


@SPACES.register("darts", description="DARTS cell space: 8 ops, 4-node normal and reduction cells")
class DartsSpace(SearchSpace):
    name = "darts"
    primitives = DARTS_PRIMITIVES
    cell_types = ("normal", "reduce")
    default_layers = 8  # cells of the CIFAR supernet
    inputs_per_node = 2  # a DARTS cell: two inputs per node, one op each, never ``none``
    derive_excluded = ("none",)
    Config = DartsSpaceConfig  # the space: section of this space (and of S1-S4)
    genotype_type = DartsGenotype
    none_is_placeholder = True

    def check_config(self, space_cfg: Any) -> None:
        if space_cfg.stem not in ("cifar", "imagenet"):
            raise ConfigError(f"space.stem must be 'cifar' or 'imagenet', got {space_cfg.stem!r}")
        layers = space_cfg.layers or self.default_layers
        if layers < 3:  # reductions at layers//3 and 2*layers//3: every cell would reduce
            raise ConfigError(f"space.layers={layers} builds a DARTS supernet without a normal cell (cells "
                              f"layers//3 and 2*layers//3 reduce), so the normal cell's weights would never be "
                              f"trained; use space.layers >= 3")

    def node_edges(self, space_cfg: Any) -> list[list[int]]:
        return darts_node_edges(getattr(space_cfg, "nodes", 4))

    def build_supernet(self, space_cfg: Any, *, k: int, num_classes: int, in_channels: int,
                       masks: Optional[dict[str, torch.Tensor]] = None, aux_skip: bool = False) -> nn.Module:
        kwargs = dict(C=space_cfg.C, layers=space_cfg.layers or self.default_layers, num_classes=num_classes,
                      in_channels=in_channels, nodes=space_cfg.nodes, stem_multiplier=space_cfg.stem_multiplier,
                      stem=space_cfg.stem, k=k, channel_mode=space_cfg.channel_mode, masks=self.start_masks(masks),
                      aux_skip=aux_skip, primitives=self.primitives, **cell_bn_options(space_cfg))
        if getattr(space_cfg, "impl", "reference") == "fast":
            return FastDartsSupernet(**kwargs)  # the optimised path (same parameters, same maths)
        return DartsSupernet(**kwargs)

    derive_rules = {"darts": lambda s, m, p: derive_darts(s, m, p),
                    "node-pairs": lambda s, m, p: derive_node_pairs(s, m, p)}
