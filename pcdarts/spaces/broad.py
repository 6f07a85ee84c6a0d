"""The broad space of B-DARTS / BNAS-v2 (docs/methods.md, "B-DARTS"): DARTS cells in a shallow, broad network.

Topology (BCNN), read from the authors' code (zixiangding/BNASv2, ``BNASv2CLR/model_search_b.py``
and ``model_b.py``; BNAS-v2, arXiv 2009.08886, same authors, is B-DARTS extended, with the same
CLR) and written here in our own words:

* stem: 3x3 conv (in -> ``stem_multiplier * C``) -> BN;
* ``blocks`` (``space.layers``) convolution blocks; block b has ``cells_per_block`` *deep* cells (stride 1, C*2^b
  channels per node) followed by one *broad* cell (a reduction: stride 2, C*2^(b+1));
  deep and broad cells are all instances of one searched cell, the ``normal`` cell type
  ("BCNN reuses the topology of the cells in the convolution block");
* ``enhancement_cells`` enhancement cells (stride 1, C*2^blocks), the second searched cell,
  stored in the ``reduce`` cell type (the official naming, so official genotypes paste in);
  the first one reads the convolution blocks: input 0 = the concatenation of the embedded
  outputs of blocks 0..B-2, input 1 = that of the last block (the official code, written
  for 2 blocks, reads blocks 0 and 1 only; ours is the same at 2 blocks);
* broad connections (the "multi-scale feature fusion"): the input of every broad cell is
  embedded by ReLU-1x1 conv-BN (to C*2^b channels) and brought to the final resolution by
  one FactorizedReduce per remaining block, so the classifier sees every scale; the output
  of every enhancement cell is embedded the same way (C*2^blocks channels, the last one
  kept at full width); the output of every broad cell is embedded (C*2^(b+1) channels, the
  last block at full width) and reduced to the final resolution before it feeds the
  enhancement cells. These "knowledge embedding" modules are affine, as in the code;
* classifier: global average pooling of the concatenation of all embedded broad-cell inputs
  and enhancement outputs, then one linear layer.

Official sizes: search ``C=16``, 2 blocks of one broad cell each (no deep cells), 1
enhancement cell (``space.layers=2, cells_per_block=0, enhancement_cells=1``, the
defaults here); evaluation (:class:`BroadNetwork`): ``C=48``, 6 convolution cells in 2
blocks (2 deep + 1 broad each), 2 enhancement cells, no auxiliary head, drop-path 0.3.

Both the supernet and the evaluation network are the classes here; the supernet reuses
the DARTS search cell, its fast path (:class:`FastDartsSupernet`'s cell runner on node
lists; the embedding modules run as ordinary modules) and the DARTS derive rules; the
genotype is a :class:`~pcdarts.genotype.BroadGenotype` (DARTS cells, marked ``broad`` so
``pcdarts train``, ``info``, ``show`` and ``plot`` build this network).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn as nn

from pcdarts.errors import ConfigError
from pcdarts.genotype import BroadGenotype
from pcdarts.nn.edges import Mixing
from pcdarts.nn.fast import kernels as fo
from pcdarts.nn.fast.cells import FastOptions
from pcdarts.nn.broad import BroadMacro, CellRunner, Nodes, _cat
from pcdarts.nn.ops import DARTS_PRIMITIVES
from pcdarts.registry import SPACES
from pcdarts.spaces import SearchSpace
from pcdarts.ranges import Count, NonNegInt
from pcdarts.spaces.darts import (DartsSpaceConfig, DartsSupernet, FastDartsSupernet, SearchCell, cell_bn_options,
                                  darts_node_edges, derive_darts, derive_node_pairs, initial_masks)

class BroadSupernet(BroadMacro):
    """The broad search network (BCNN supernet). It owns no architecture parameters.

    Args:
        C: initial channels (16); layers: convolution blocks (2); cells_per_block: deep
            cells before each block's broad cell (0); enhancement_cells: (1).
        nodes, stem_multiplier, k, channel_mode, masks, aux_skip, pool_bn, track_running_stats: as
            :class:`DartsSupernet` (the BN options apply to the search cells only).
    """

    cell_types = ("normal", "reduce")

    def __init__(self, C: int = 16, layers: int = 2, cells_per_block: int = 0, enhancement_cells: int = 1,
                 num_classes: int = 10, in_channels: int = 3, nodes: int = 4, stem_multiplier: int = 3, k: int = 1,
                 channel_mode: str = "first+shuffle", masks: Optional[dict[str, torch.Tensor]] = None,
                 aux_skip: bool = False, pool_bn: bool = True, track_running_stats: bool = True) -> None:
        super().__init__()
        self.nodes = nodes
        self.masks = initial_masks(self.cell_types, nodes, masks)

        def make_cell(ct: str, C_pp: int, C_p: int, C_cell: int, reduction: bool, reduction_prev: bool
                      ) -> tuple[nn.Module, int]:
            cell = SearchCell(nodes, C_pp, C_p, C_cell, reduction, reduction_prev, k, channel_mode, self.masks[ct],
                              aux_skip, pool_bn, track_running_stats)
            cell.cell_type = ct  # a plain attribute: the type is not implied by the stride here
            return cell, nodes * C_cell

        self._build(C=C, blocks=layers, deep=cells_per_block, enhancement=enhancement_cells,
                    stem_multiplier=stem_multiplier, in_channels=in_channels, num_classes=num_classes,
                    make_cell=make_cell)

    def cell_type(self, cell: nn.Module) -> str:
        return cell.cell_type

    # the DARTS supernet's structure methods only read cells, masks and cell_type()
    candidate_ops: Callable[..., Iterator[tuple[str, int, int, int, nn.Module]]] = DartsSupernet.candidate_ops
    prune: Callable[..., None] = DartsSupernet.prune

    def run_cell(self, i: int, cell: nn.Module, s0: Nodes, s1: Nodes, mixing: Mixing) -> Nodes:
        ct = cell.cell_type
        return [cell(_cat(s0), _cat(s1), mixing.weights_for(ct, i), mixing.edge_weights(ct), mixing.aux_skip,
                     mixing.active_for(ct))]

    def forward_features(self, x: torch.Tensor, mixing: Mixing) -> list[torch.Tensor]:
        """The output of every cell (convolution cells, then enhancement cells)."""
        feats: list[torch.Tensor] = []
        self._forward(x, lambda i, c, s0, s1: self.run_cell(i, c, s0, s1, mixing), feats)
        return feats

    def forward(self, x: torch.Tensor, mixing: Mixing) -> torch.Tensor:
        return self._forward(x, lambda i, c, s0, s1: self.run_cell(i, c, s0, s1, mixing))


class FastBroadSupernet(BroadSupernet, FastOptions):
    """:class:`BroadSupernet` with the fast DARTS cell forward (same modules, same state_dict)."""

    def __init__(self, *args: Any, recompute: bool = True, channels_last: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recompute, self.channels_last = recompute, channels_last
        self._edge_list = [(i, j + 2) for j, group in enumerate(darts_node_edges(self.nodes))
                           for i in range(len(group))]

    # the DARTS fast cell runner reads nodes, _edge_list and recompute only
    cell_forward: Callable[..., Nodes] = FastDartsSupernet.cell_forward

    def run_cell(self, i: int, cell: nn.Module, s0: Nodes, s1: Nodes, mixing: Mixing) -> Nodes:
        if self.use_reference:
            return super().run_cell(i, cell, s0, s1, mixing)
        ct = cell.cell_type
        return self.cell_forward(cell, s0, s1, mixing.weights_for(ct, i), mixing.edge_weights(ct), mixing.aux_skip,
                                 mixing.active_for(ct))

    def _forward(self, x: torch.Tensor, run: CellRunner, feats: Optional[list[torch.Tensor]] = None) -> torch.Tensor:
        if self.channels_last and not self.use_reference:
            x = x.contiguous(memory_format=fo.CL)
        return super()._forward(x, run, feats)


@dataclass(frozen=True)
class BroadSpaceConfig(DartsSpaceConfig):
    """The ``space:`` section of the broad space: the DARTS cell's fields (its stem is cifar only)
    and the BCNN layout's.

    Attributes:
        cells_per_block: deep (stride-1) cells before each block's broad cell; None = the space's
            default (0, the official search supernet).
        enhancement_cells: enhancement cells after the blocks; None = the space's default (1).
    """

    cells_per_block: Optional[NonNegInt] = None
    enhancement_cells: Optional[Count] = None


@SPACES.register("broad", description="B-DARTS broad supernet (BCNN): DARTS cells in 2 shallow convolution "
                                      "blocks + an enhancement cell, every block pooled into the classifier")
class BroadSpace(SearchSpace):
    """The broad space: DARTS primitives and cells (``normal`` = convolution cell, ``reduce`` =
    enhancement cell), the DARTS derive rules, :class:`BroadGenotype` results."""

    name = "broad"
    primitives = DARTS_PRIMITIVES
    cell_types = ("normal", "reduce")
    default_layers = 2             # convolution blocks of the search supernet
    train_preset = "b-darts_cifar10"  # the broad evaluation network's protocol
    default_cells_per_block = 0    # deep cells before each broad cell
    default_enhancement_cells = 1
    inputs_per_node = 2            # DARTS cells
    derive_excluded = ("none",)
    Config = BroadSpaceConfig
    genotype_type = BroadGenotype
    none_is_placeholder = True

    def node_edges(self, space_cfg: Any) -> list[list[int]]:
        return darts_node_edges(getattr(space_cfg, "nodes", 4))

    def build_supernet(self, space_cfg: Any, *, k: int, num_classes: int, in_channels: int,
                       masks: Optional[dict[str, torch.Tensor]] = None, aux_skip: bool = False) -> nn.Module:
        if getattr(space_cfg, "stem", "cifar") != "cifar":
            raise ConfigError(f"the broad space has a cifar stem only; got space.stem={space_cfg.stem!r} "
                              "(drop --space.stem or set it to cifar)")
        if space_cfg.C % 2:
            raise ConfigError(f"space.C={space_cfg.C} must be even for the broad space (its FactorizedReduce "
                              "embeddings split the channels in two)")
        cells = getattr(space_cfg, "cells_per_block", None)
        enhancement = getattr(space_cfg, "enhancement_cells", None)
        kwargs = dict(C=space_cfg.C, layers=space_cfg.layers or self.default_layers,
                      cells_per_block=self.default_cells_per_block if cells is None else cells,
                      enhancement_cells=enhancement or self.default_enhancement_cells, num_classes=num_classes,
                      in_channels=in_channels, nodes=space_cfg.nodes, stem_multiplier=space_cfg.stem_multiplier,
                      k=k, channel_mode=space_cfg.channel_mode, masks=masks, aux_skip=aux_skip,
                      **cell_bn_options(space_cfg))
        if getattr(space_cfg, "impl", "reference") == "fast":
            return FastBroadSupernet(**kwargs)
        return BroadSupernet(**kwargs)

    derive_rules = {"darts": lambda s, m, p: BroadGenotype.of(derive_darts(s, m, p)),
                    "node-pairs": lambda s, m, p: BroadGenotype.of(derive_node_pairs(s, m, p))}


__all__ = ["BroadSupernet", "FastBroadSupernet", "BroadSpace"]
