"""The tiny, fully enumerable space of the weight-sharing study (docs/methods.md, "Weight-sharing analysis").

Four cells without reduction, all sharing one architecture. A cell has one input node
(the previous cell's output after a 1x1 ReLU-conv-BN), two intermediate nodes and three
edges (node 1 <- in, node 2 <- in, node 2 <- node 1); its output is the concatenation
of the two intermediate nodes (2C channels). Each edge picks one of four ops, so the
space has 4^3 = 64 child models. The stem is two 3x3 conv-BN layers (no ReLU between
them) with ``stem_multiplier * C`` channels, and there is no skip between cells, as in
the official code (``ultmaster/deeper-insights-weight-sharing``).

It is an **analysis space, not a registered search space**: ``pcdarts ws-analysis``
enumerates its children by index and never derives a genotype, trains an evaluation
network or runs a search method on it, so it has no genotype type, derive rule or
evaluation network and is deliberately not in :data:`pcdarts.registry.SPACES` (the
method x space tests would otherwise demand all of them).

The supernet follows the house seams: its forward takes a :class:`~pcdarts.nn.edges.Mixing`
(``ops={"cell": [3, 4]}``, ``active={"cell": [3, 4] bool}`` for single-path steps), its
edges are reference :class:`~pcdarts.nn.edges.MixedEdge` modules, and the default fast
forward runs the shared fast cell runner on the same modules (``with net.reference():``
runs the op modules one by one). Inactive ops are skipped on both paths.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn

from pcdarts.nn.edges import MixedEdge, Mixing
from pcdarts.nn.fast import kernels as fo
from pcdarts.nn.fast.blocks import DARTS_KINDS, darts_block
from pcdarts.nn.fast.cells import FastOptions, cell_plans, run_cell
from pcdarts.nn.ops import OPS, ReLUConvBN
from pcdarts.spaces import SearchSpace

TINY_PRIMITIVES = ("max_pool_3x3", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_5x5")
TINY_EDGES = ((0, 1), (0, 2), (1, 2))  # (source node, target node); node 0 is the preprocessed input
TINY_NODE_EDGES = [[0], [1, 2]]  # edges entering nodes 1 and 2
TINY_CELLS = 4


def tiny_children() -> list[tuple[int, ...]]:
    """All 64 children as op indices per edge, in lexicographic order (edge 0 slowest)."""
    return list(itertools.product(range(len(TINY_PRIMITIVES)), repeat=len(TINY_EDGES)))


def tiny_child_name(ops: tuple[int, ...]) -> str:
    """A child's name: its op per edge (1<-0, 2<-0, 2<-1) joined by ``+``."""
    return "+".join(TINY_PRIMITIVES[o] for o in ops)


class TinyCell(nn.Module):
    """One input node, two intermediate nodes, three single-op-or-mixed edges; output 2C."""

    def __init__(self, C_in: int, C: int) -> None:
        super().__init__()
        self.reduction = False
        self.preprocess = ReLUConvBN(C_in, C, 1, 1, 0, affine=False)
        # search-network ops: BN(affine=False) after pooling, affine=False convs (the official MixedOp)
        self.edges = nn.ModuleList(MixedEdge(C, 1, TINY_PRIMITIVES, OPS["darts_search"]) for _ in TINY_EDGES)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, active: Optional[list[list[bool]]] = None
                ) -> torch.Tensor:
        nodes = [self.preprocess(x)]
        for group in TINY_NODE_EDGES:
            s = None
            for e in group:
                y = self.edges[e](nodes[TINY_EDGES[e][0]], weights[e], None, None,
                                  None if active is None else active[e])
                s = y if s is None else s + y
            nodes.append(s)
        return torch.cat(nodes[1:], dim=1)


class TinySupernet(nn.Module, FastOptions):
    """The study's supernet: stem (2 x conv3x3-BN), ``cells`` tiny cells, global pooling, linear.

    Args:
        C: channels of a cell's nodes (its output has 2C).
        num_classes, in_channels: data shape.
        cells: number of cells (4 in the paper).
        stem_multiplier: the stem has ``stem_multiplier * C`` channels.
        bn_momentum: momentum of every BatchNorm (the official default is 0.4).
        fast: run the fast cell forward (False = always the reference forward).
    """

    cell_types = ("cell",)

    def __init__(self, C: int = 16, num_classes: int = 10, in_channels: int = 3, cells: int = TINY_CELLS,
                 stem_multiplier: int = 3, bn_momentum: float = 0.1, fast: bool = True) -> None:
        super().__init__()
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem),
            nn.Conv2d(C_stem, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        self.cells = nn.ModuleList()
        C_p = C_stem
        for _ in range(cells):
            self.cells.append(TinyCell(C_p, C))
            C_p = len(TINY_NODE_EDGES) * C
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)
        self.masks = {"cell": torch.ones(len(TINY_EDGES), len(TINY_PRIMITIVES), dtype=torch.bool)}
        self.use_reference = not fast
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = bn_momentum

    def _cell_fast(self, cell: TinyCell, x: torch.Tensor, weights: torch.Tensor,
                   active: Optional[list[list[bool]]]) -> torch.Tensor:
        edge_list = list(TINY_EDGES)
        plans = cell_plans(cell, edge_list, TINY_PRIMITIVES, DARTS_KINDS, len(TINY_NODE_EDGES), active)
        states = run_cell(cell, plans, darts_block, [cell.preprocess(x)], TINY_NODE_EDGES, edge_list, weights,
                          None, self.recompute)
        return torch.cat(states[1:], dim=1)

    def forward_features(self, x: torch.Tensor, mixing: Mixing) -> list[torch.Tensor]:
        fast = not self.use_reference
        if fast and self.channels_last:
            x = x.contiguous(memory_format=fo.CL)
        h = self.stem(x)
        act = mixing.active_for("cell")
        feats = []
        for i, cell in enumerate(self.cells):
            w = mixing.weights_for("cell", i)
            h = self._cell_fast(cell, h, w, act) if fast else cell(h, w, act)
            feats.append(h)
        return feats

    def forward(self, x: torch.Tensor, mixing: Mixing) -> torch.Tensor:
        h = self.forward_features(x, mixing)[-1]
        return self.classifier(self.global_pooling(h).flatten(1))

    def candidate_ops(self) -> Iterator[tuple[str, int, int, int, nn.Module]]:
        """(cell type, cell index, edge, op index, module) for every candidate op."""
        for c, cell in enumerate(self.cells):
            for e, edge in enumerate(cell.edges):
                for o in edge.active:
                    yield "cell", c, e, o, edge.ops[str(o)]


class TinySpace(SearchSpace):
    """The tiny space as the one assembly's supernet stage sees it
    (:func:`pcdarts.spaces.build.make_supernet`): its primitives, cell and supernet, nothing more
    (no genotype, derive rule or evaluation network; not registered, see the module docstring).
    ``space_cfg.impl`` picks the forward (``fast`` or ``reference``); the tiny supernet has no
    partial channels, op masks or auxiliary skip, so asking for one is an error."""

    name = "tiny"
    primitives = TINY_PRIMITIVES
    cell_types = ("cell",)
    default_layers = TINY_CELLS

    def node_edges(self, space_cfg: Any) -> list[list[int]]:
        return [list(g) for g in TINY_NODE_EDGES]

    def build_supernet(self, space_cfg: Any, *, k: int, num_classes: int, in_channels: int,
                       masks: Optional[dict[str, torch.Tensor]] = None, aux_skip: bool = False) -> nn.Module:
        if k != 1 or masks or aux_skip:
            raise ValueError(f"the tiny space has no partial channels, op masks or auxiliary skip "
                             f"(got k={k}, masks={bool(masks)}, aux_skip={aux_skip})")
        return TinySupernet(space_cfg.C, num_classes, in_channels, fast=space_cfg.impl == "fast")


def build_tiny_supernet(C: int, *, num_classes: int, in_channels: int, bn_momentum: float = 0.1,
                        fast: bool = True, **kwargs: Any) -> TinySupernet:
    """The tiny supernet (see :class:`TinySupernet`)."""
    return TinySupernet(C, num_classes, in_channels, bn_momentum=bn_momentum, fast=fast, **kwargs)


__all__ = ["TINY_PRIMITIVES", "TINY_EDGES", "TINY_CELLS", "TinySupernet", "TinySpace", "build_tiny_supernet",
           "tiny_children", "tiny_child_name"]
