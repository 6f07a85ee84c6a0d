"""The broad (BCNN) wiring of B-DARTS / BNAS-v2 and its evaluation network (docs/methods.md, "B-DARTS").

:class:`BroadMacro` is the topology shared by the broad search supernet
(:mod:`pcdarts.spaces.broad`, where the whole layout is described) and
:class:`BroadNetwork`, the evaluation network of a :class:`~pcdarts.genotype.BroadGenotype`
(official sizes: ``C=48``, 6 convolution cells in 2 blocks of 2 deep + 1 broad cell, 2
enhancement cells, no auxiliary head). The network registers in ``NETWORKS`` under the
genotype's space, so ``build_network`` (train, info, show, plot) builds it without
importing the search spaces.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from pcdarts.genotype import DartsGenotype
from pcdarts.nn.networks import DartsCell, NetOutput, _check_positive
from pcdarts.nn.ops import FactorizedReduce, ReLUConvBN
from pcdarts.registry import NETWORKS

Nodes = list[torch.Tensor]  # a cell output as the list of nodes whose concatenation it is
# make_cell(cell type, C_pp, C_p, C, reduction, reduction_prev) -> (cell, output channels)
CellFactory = Callable[[str, int, int, int, bool, bool], tuple[nn.Module, int]]
# run(index in cells, cell, input 0, input 1) -> output
CellRunner = Callable[[int, nn.Module, Nodes, Nodes], Nodes]


def _cat(nodes: Nodes) -> torch.Tensor:
    return nodes[0] if len(nodes) == 1 else torch.cat(nodes, dim=1)


def _embed(C_in: int, C_out: int, reductions: int) -> nn.Sequential:
    """ReLU-1x1 conv-BN to ``C_out`` channels, then ``reductions`` FactorizedReduce (affine)."""
    return nn.Sequential(ReLUConvBN(C_in, C_out, 1, 1, 0), *[FactorizedReduce(C_out, C_out) for _ in range(reductions)])


class BroadMacro(nn.Module):
    """The BCNN wiring shared by :class:`BroadSupernet` and :class:`BroadNetwork` (see the
    module docstring). ``cells`` holds the convolution cells in order, then the enhancement
    cells; ``gap_embed[b]`` embeds the input of block b's broad cell, ``en_embed[b]`` its
    output, ``en_out[j]`` the output of enhancement cell j."""

    def _build(self, *, C: int, blocks: int, deep: int, enhancement: int, stem_multiplier: int, in_channels: int,
               num_classes: int, make_cell: CellFactory) -> None:
        self.blocks, self.deep, self.enhancement = blocks, deep, enhancement
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        self.cells = nn.ModuleList()
        self.gap_embed, self.en_embed, self.en_out = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        C_pp, C_p, reduction_prev = C_stem, C_stem, False
        pooled, en_channels = [], []
        for b in range(blocks):
            C_b = C * 2 ** b
            for _ in range(deep):
                cell, out = make_cell("normal", C_pp, C_p, C_b, False, reduction_prev)
                self.cells.append(cell)
                C_pp, C_p, reduction_prev = C_p, out, False
            self.gap_embed.append(_embed(C_p, C_b, blocks - b))
            pooled.append(C_b)
            cell, out = make_cell("normal", C_pp, C_p, 2 * C_b, True, reduction_prev)
            self.cells.append(cell)
            C_pp, C_p, reduction_prev = C_p, out, True
            e = out if b == blocks - 1 else 2 * C_b
            self.en_embed.append(_embed(out, e, blocks - 1 - b))
            en_channels.append(e)
        C_e = C * 2 ** blocks
        C_pp, C_p = (sum(en_channels[:-1]) if blocks > 1 else en_channels[-1]), en_channels[-1]
        for j in range(enhancement):
            cell, out = make_cell("reduce", C_pp, C_p, C_e, False, False)
            self.cells.append(cell)
            C_pp, C_p = C_p, out
            o = out if j == enhancement - 1 else C_e
            self.en_out.append(ReLUConvBN(out, o, 1, 1, 0))
            pooled.append(o)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(sum(pooled), num_classes)

    def _forward(self, x: torch.Tensor, run: CellRunner, feats: Optional[list[torch.Tensor]] = None) -> torch.Tensor:
        """Logits; ``run`` computes one cell; ``feats`` (if given) collects every cell's output."""
        s0 = s1 = [self.stem(x)]
        cells = iter(enumerate(self.cells))
        pooled, en = [], []

        def step(s0: Nodes, s1: Nodes) -> Nodes:
            i, cell = next(cells)
            out = run(i, cell, s0, s1)
            if feats is not None:
                feats.append(_cat(out))
            return out

        for b in range(self.blocks):
            for _ in range(self.deep):
                s0, s1 = s1, step(s0, s1)
            pooled.append(self.gap_embed[b](_cat(s1)))
            s0, s1 = s1, step(s0, s1)
            en.append(self.en_embed[b](_cat(s1)))
        s0, s1 = (en[:-1] if self.blocks > 1 else en[-1:]), en[-1:]
        for j in range(self.enhancement):
            s0, s1 = s1, step(s0, s1)
            pooled.append(self.en_out[j](_cat(s1)))
        # global pooling of the concatenation = concatenation of the poolings
        return self.classifier(torch.cat([self.global_pooling(p).flatten(1) for p in pooled], 1))


def _one_cell(cell: tuple[tuple[str, int], ...], concat: tuple[int, ...]) -> DartsGenotype:
    """A cell pair with ``cell`` in both slots, so a :class:`DartsCell` of either stride builds it."""
    return DartsGenotype(cell, concat, cell, concat)


class BroadNetwork(BroadMacro):
    """The broad evaluation network of a genotype (the official ``model_b.Network``, CIFAR).

    Args:
        genotype: ``normal`` = the convolution cell (deep and broad cells), ``reduce`` = the
            enhancement cell.
        C: initial channels (48); layers: convolution cells in all (6), a multiple of
            ``blocks``: each block is ``layers / blocks - 1`` deep cells and one broad cell.
        blocks: convolution blocks (2); enhancement_cells: (2).

    Returns ``(logits, None)`` (no auxiliary head) and has ``drop_path_prob`` like the other networks.
    """

    def __init__(self, genotype: DartsGenotype, C: int = 48, layers: int = 6, num_classes: int = 10,
                 in_channels: int = 3, blocks: int = 2, enhancement_cells: int = 2, stem_multiplier: int = 3) -> None:
        super().__init__()
        _check_positive(C=C, layers=layers, num_classes=num_classes, in_channels=in_channels, blocks=blocks,
                        enhancement_cells=enhancement_cells)
        if layers % blocks:
            raise ValueError(f"the broad network splits its layers={layers} convolution cells into {blocks} blocks "
                             f"(deep cells + one broad cell each): use a multiple of {blocks}")
        self.drop_path_prob = 0.0
        kinds = {"normal": _one_cell(genotype.normal, genotype.normal_concat),
                 "reduce": _one_cell(genotype.reduce, genotype.reduce_concat)}

        def make_cell(ct: str, C_pp: int, C_p: int, C_cell: int, reduction: bool, reduction_prev: bool
                      ) -> tuple[nn.Module, int]:
            cell = DartsCell(kinds[ct], C_pp, C_p, C_cell, reduction, reduction_prev)
            return cell, cell.multiplier * C_cell

        self._build(C=C, blocks=blocks, deep=layers // blocks - 1, enhancement=enhancement_cells,
                    stem_multiplier=stem_multiplier, in_channels=in_channels, num_classes=num_classes,
                    make_cell=make_cell)

    def forward(self, x: torch.Tensor) -> NetOutput:
        p = float(self.drop_path_prob)
        return self._forward(x, lambda i, cell, s0, s1: [cell(_cat(s0), _cat(s1), p)]), None


EVAL_C, EVAL_LAYERS, EVAL_BLOCKS, EVAL_ENHANCEMENT = 48, 6, 2, 2  # the official CIFAR evaluation network




@NETWORKS.register("broad", description="B-DARTS broad evaluation network")
class BroadEvaluation:
    """How ``build_network`` and the size reports build and name the broad network."""

    @staticmethod
    def build(genotype: Any, *, num_classes: int, in_channels: int = 3, C: Optional[int] = None,
              layers: Optional[int] = None, stem: str = "cifar", auxiliary: bool = True) -> nn.Module:
        """:class:`BroadNetwork`: ``C`` (48), ``layers`` = convolution cells (6, in 2 blocks);
        no auxiliary head (``auxiliary`` is ignored)."""
        if stem != "cifar":
            raise ValueError(f"the broad network has a cifar stem only, got stem={stem!r}")
        return BroadNetwork(genotype, C=EVAL_C if C is None else C, layers=EVAL_LAYERS if layers is None else layers,
                            num_classes=num_classes, in_channels=in_channels, blocks=EVAL_BLOCKS,
                            enhancement_cells=EVAL_ENHANCEMENT)

    @staticmethod
    def label(genotype: Any, *, C: Optional[int] = None, layers: Optional[int] = None, stem: str = "cifar") -> str:
        n = EVAL_LAYERS if layers is None else layers
        return (f"B-DARTS broad network C={C or EVAL_C}, {n} convolution cells in {EVAL_BLOCKS} blocks, "
                f"{EVAL_ENHANCEMENT} enhancement cells")

    @staticmethod
    def model_options(model: Any) -> dict[str, Any]:
        """A training config's ``model`` section, read as for a DARTS cell (C, layers, stem, auxiliary)."""
        return {"C": model.C, "layers": model.layers, "stem": model.stem, "auxiliary": model.auxiliary}


__all__ = ["BroadMacro", "BroadNetwork", "BroadEvaluation", "Nodes", "CellFactory", "CellRunner"]
