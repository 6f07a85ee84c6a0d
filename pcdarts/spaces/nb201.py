"""The NAS-Bench-201 space (docs/methods.md, "Search spaces"): 4-node cell, one shared 6x5 architecture tensor."""
from __future__ import annotations

from typing import Any, Iterator, Optional

import torch
import torch.nn as nn

from pcdarts.nn.edges import MixedEdge, Mixing
from pcdarts.genotype import NB201_EDGES, NB201Genotype
from pcdarts.nn.ops import NB201_PRIMITIVES, ResNetReduction, nb201_ops
from pcdarts.nn.fast import kernels as fo
from pcdarts.nn.fast.blocks import NB201_KINDS, nb201_block
from pcdarts.nn.fast.cells import FastOptions, cell_plans, run_cell
from pcdarts.registry import SPACES
from pcdarts.spaces import SearchSpace, masked_scores

NB201_NODE_EDGES = [[0], [1, 2], [3, 4, 5]]


class NB201SearchCell(nn.Module):
    """Node j = sum_{i<j} mixed_edge(node_i); the output is node 3."""

    def __init__(self, C: int, k: int, channel_mode: str, track_running_stats: bool,
                 masks: Optional[torch.Tensor] = None, aux_skip: bool = False) -> None:
        super().__init__()
        factories = nb201_ops(track_running_stats)
        self.edges = nn.ModuleList(
            MixedEdge(C, 1, NB201_PRIMITIVES, factories, k, channel_mode, None if masks is None else masks[e].tolist(),
                      aux_skip)
            for e in range(len(NB201_EDGES)))
        self.reduction = False

    def forward(self, x: torch.Tensor, weights: torch.Tensor, edge_weights: Optional[torch.Tensor],
                aux_coef: Optional[object] = None, active: Optional[list[list[bool]]] = None) -> torch.Tensor:
        nodes = [x]
        for group in NB201_NODE_EDGES:
            s = None
            for e in group:
                src = NB201_EDGES[e][0]
                y = self.edges[e](nodes[src], weights[e], None if edge_weights is None else edge_weights[e],
                                  aux_coef, None if active is None else active[e])
                s = y if s is None else s + y
            nodes.append(s)
        return nodes[-1]


class NB201Supernet(nn.Module):
    """Stem, 3 stages of N search cells with residual reduction blocks between them, head.

    Search BN is affine=False in the cells; ``track_running_stats`` is a switch
    (AutoDL-Projects#70: no running stats searches better).
    """

    cell_types = ("cell",)

    def __init__(self, C: int = 16, N: int = 5, num_classes: int = 10, in_channels: int = 3, k: int = 1,
                 channel_mode: str = "first+shuffle", track_running_stats: bool = True,
                 masks: Optional[dict[str, torch.Tensor]] = None, aux_skip: bool = False) -> None:
        super().__init__()
        full = torch.ones(len(NB201_EDGES), len(NB201_PRIMITIVES), dtype=torch.bool)
        self.masks = {"cell": masks["cell"].bool().clone() if masks and "cell" in masks else full}
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.cells = nn.ModuleList()
        C_cur = C
        for stage in range(3):
            if stage > 0:
                self.cells.append(ResNetReduction(C_cur, 2 * C_cur))
                C_cur *= 2
            for _ in range(N):
                self.cells.append(NB201SearchCell(C_cur, k, channel_mode, track_running_stats, self.masks["cell"],
                                                  aux_skip))
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_cur), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_cur, num_classes)

    def forward_features(self, x: torch.Tensor, mixing: Mixing) -> list[torch.Tensor]:
        h = self.stem(x)
        feats = []
        ew, act = mixing.edge_weights("cell"), mixing.active_for("cell")
        for i, cell in enumerate(self.cells):
            if isinstance(cell, NB201SearchCell):
                h = cell(h, mixing.weights_for("cell", i), ew, mixing.aux_skip, act)
            else:
                h = cell(h)
            feats.append(h)
        return feats

    def forward(self, x: torch.Tensor, mixing: Mixing) -> torch.Tensor:
        h = self.lastact(self.forward_features(x, mixing)[-1])
        return self.classifier(self.global_pooling(h).flatten(1))

    def candidate_ops(self) -> Iterator[tuple[str, int, int, int, nn.Module]]:
        for c, cell in enumerate(self.cells):
            if isinstance(cell, NB201SearchCell):
                for e, edge in enumerate(cell.edges):
                    for o in edge.active:
                        yield "cell", c, e, o, edge.ops[str(o)]

    def prune(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks["cell"] = self.masks["cell"] & masks["cell"].bool().cpu()
        for cell in self.cells:
            if isinstance(cell, NB201SearchCell):
                for e, edge in enumerate(cell.edges):
                    edge.prune(self.masks["cell"][e].tolist())


def derive_nb201(scores: dict[str, torch.Tensor], masks: Optional[dict[str, torch.Tensor]] = None,
                 primitives: tuple[str, ...] = NB201_PRIMITIVES) -> NB201Genotype:
    """NB201 rule: argmax op per edge; ``none`` is allowed (docs/methods.md, "Search spaces")."""
    s = masked_scores(scores["cell"], None if masks is None else masks.get("cell"))
    return NB201Genotype(tuple(primitives[int(s[e].argmax())] for e in range(s.shape[0])))


class FastNB201Supernet(NB201Supernet, FastOptions):
    """:class:`NB201Supernet` with the fast cell forward (same modules, same state_dict)."""

    def __init__(self, *args: Any, recompute: bool = True, channels_last: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recompute, self.channels_last = recompute, channels_last

    def cell_forward(self, cell: NB201SearchCell, x: torch.Tensor, weights: torch.Tensor,
                     edge_weights: Optional[torch.Tensor], aux_coef: Optional[object] = None,
                     active: Optional[list[list[bool]]] = None) -> torch.Tensor:
        edge_list = list(NB201_EDGES)
        plans = cell_plans(cell, edge_list, NB201_PRIMITIVES, NB201_KINDS, 3, active)
        states = run_cell(cell, plans, nb201_block, [x], NB201_NODE_EDGES, edge_list, weights,
                           edge_weights, self.recompute, aux_coef)
        return states[-1]

    def forward_features(self, x: torch.Tensor, mixing: Mixing) -> list[torch.Tensor]:
        if self.use_reference:
            return super().forward_features(x, mixing)
        if self.channels_last:
            x = x.contiguous(memory_format=fo.CL)
        h = self.stem(x)
        feats = []
        ew, act = mixing.edge_weights("cell"), mixing.active_for("cell")
        for i, cell in enumerate(self.cells):
            if isinstance(cell, NB201SearchCell):
                h = self.cell_forward(cell, h, mixing.weights_for("cell", i), ew, mixing.aux_skip, act)
            else:
                h = cell(h)
            feats.append(h)
        return feats


@SPACES.register("nb201", description="NAS-Bench-201: 5 ops, 6-edge cell shared by 15 cells")
class NB201Space(SearchSpace):
    name = "nb201"
    primitives = NB201_PRIMITIVES
    cell_types = ("cell",)
    default_layers = 5  # cells per stage, N
    benchmark = "nb201"  # the offline NAS-Bench-201 lookup (pcdarts.nb201), also each epoch's extras
    genotype_type = NB201Genotype
    foreign_values = {"pool_bn": (False,)}  # the benchmark cell's avg_pool_3x3 carries no BN

    def node_edges(self, space_cfg: Any) -> list[list[int]]:
        return [list(g) for g in NB201_NODE_EDGES]

    def build_supernet(self, space_cfg: Any, *, k: int, num_classes: int, in_channels: int,
                       masks: Optional[dict[str, torch.Tensor]] = None, aux_skip: bool = False) -> nn.Module:
        kwargs = dict(C=space_cfg.C, N=space_cfg.layers or self.default_layers, num_classes=num_classes,
                      in_channels=in_channels, k=k, channel_mode=space_cfg.channel_mode,
                      track_running_stats=space_cfg.track_running_stats, masks=masks, aux_skip=aux_skip)
        if getattr(space_cfg, "impl", "reference") == "fast":
            return FastNB201Supernet(**kwargs)
        return NB201Supernet(**kwargs)

    derive_rules = {"argmax": lambda s, m, p: derive_nb201(s, m, p)}
