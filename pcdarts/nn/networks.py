"""Discrete (evaluation) networks built from a genotype (docs/methods.md, "Search spaces", "Training a found cell").

* :class:`NetworkCIFAR` -- the DARTS CIFAR evaluation network (20 cells, C=36).
* :class:`NetworkImageNet` -- the DARTS "mobile" ImageNet network (14 cells, C=48).
* :class:`NB201Network` -- the NAS-Bench-201 macro skeleton with one fixed cell.
* :func:`build_network` -- the network of a genotype, through the one :data:`~pcdarts.registry.NETWORKS`
  registry (keyed by the genotype's ``space`` field; ``broad`` registers in :mod:`pcdarts.nn.broad`).

Every network returns ``(logits, aux_logits_or_None)`` and has a ``drop_path_prob``
attribute (0.0 by default) that the trainer sets each epoch. Module names follow the
original DARTS code (``cells.<i>._ops``, ``preprocess0``, ``auxiliary_head.features``,
``classifier``) so parameter names are familiar and ``count_params`` can exclude the
auxiliary head by name. No device logic here.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from pcdarts.genotype import NB201_EDGES, DartsGenotype, Genotype, NB201Genotype
from pcdarts.nn.ops import OPS, FactorizedReduce, Identity, ReLUConvBN, ResNetReduction, nb201_ops
from pcdarts.registry import NETWORKS

NetOutput = tuple[torch.Tensor, Optional[torch.Tensor]]


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of ``x`` with probability ``drop_prob``, rescaling the rest by 1/keep.

    The mask is drawn per sample (shape ``N x 1 x 1 x 1``) and applied out of place, so
    ``x`` itself is never modified (the original code used in-place ops on autograd tensors).

    Args:
        x: a batch of feature maps ``N x C x H x W``.
        drop_prob: probability in [0, 1] of dropping each sample's path.
    """
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"drop_path_prob must be in [0, 1], got {drop_prob}")
    if drop_prob == 0.0:
        return x
    keep = 1.0 - drop_prob
    if keep == 0.0:
        # every path dropped; multiplying keeps the graph so gradients are exact zeros
        return x * 0.0
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
    mask.bernoulli_(keep).div_(keep)  # the mask is not an autograd tensor; in place is safe here
    return x * mask


class DartsCell(nn.Module):
    """One discrete DARTS cell: each node sums its two op outputs; output concatenates nodes.

    Args:
        genotype: the cell pair; ``reduction`` picks which cell is built.
        C_prev_prev: channels of c_{k-2}.
        C_prev: channels of c_{k-1}.
        C: channels of every node inside the cell.
        reduction: build the reduction cell (edges leaving the inputs use stride 2).
        reduction_prev: c_{k-2} is at twice the resolution of c_{k-1} (previous cell reduced).
    """

    def __init__(self, genotype: DartsGenotype, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool) -> None:
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        entries, concat = ((genotype.reduce, genotype.reduce_concat) if reduction
                           else (genotype.normal, genotype.normal_concat))
        if reduction and any(i < 2 for i in concat):
            # the cell inputs are at the input resolution, nodes at half of it: cannot concat
            raise ValueError(f"reduce_concat={list(concat)} may only list intermediate nodes (>= 2) "
                             "because a reduction cell's inputs are at a different resolution")
        self._steps = len(entries) // 2
        self._concat = tuple(concat)
        self.multiplier = len(concat)
        self._indices = tuple(i for _, i in entries)
        self._ops = nn.ModuleList()
        for name, index in entries:
            stride = 2 if reduction and index < 2 else 1
            self._ops.append(OPS["darts"][name](C, stride, True))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for step in range(self._steps):
            total: Optional[torch.Tensor] = None
            for k in (2 * step, 2 * step + 1):
                op = self._ops[k]
                h = op(states[self._indices[k]])
                # identity (stride-1 skip) is never dropped: dropping it would remove the
                # very shortcut drop-path is meant to leave intact
                if self.training and drop_prob > 0.0 and not isinstance(op, (Identity, nn.Identity)):
                    h = drop_path(h, drop_prob)
                total = h if total is None else total + h
            assert total is not None
            states.append(total)
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHead(nn.Module):
    """The DARTS auxiliary classifier, computed at whatever spatial size arrives.

    Layout (indices match the original ``features`` Sequential): ReLU, AvgPool 5 (stride
    ``pool_stride``, no padding, padded zeros not counted), 1x1 conv -> 128, BN, ReLU,
    2x2 conv -> 768, [BN], ReLU, then a linear layer. The CIFAR head (8x8 maps, stride 3)
    has the second BN; the ImageNet head (stride 2) lacks it, a quirk of the original.

    Robustness to other input sizes (e.g. 16x16 digits give 4x4 maps here):
    if the map is smaller than 5 pixels the fixed pooling cannot be applied, so an
    adaptive average pool to 2x2 is used instead; if the 2x2 conv output is larger than
    1x1 (bigger inputs), it is averaged to 1x1 so the linear layer always sees 768
    features. At the canonical sizes both adaptations are inactive.
    """

    def __init__(self, C: int, num_classes: int, pool_stride: int, second_bn: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=pool_stride, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),
        ]
        if second_bn:
            layers.append(nn.BatchNorm2d(768))
        layers.append(nn.ReLU(inplace=False))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features[0](x)
        pool = self.features[1]
        # the fixed 5x5 pool only where it leaves at least 2x2 for the 2x2 conv that follows
        if (min(x.shape[-2:]) - pool.kernel_size) // pool.stride + 1 >= 2:
            x = pool(x)
        else:
            x = F.adaptive_avg_pool2d(x, 2)
        for layer in list(self.features)[2:]:
            x = layer(x)
        if x.shape[-2:] != (1, 1):
            x = F.adaptive_avg_pool2d(x, 1)
        return self.classifier(x.flatten(1))


def _check_positive(**kwargs: int) -> None:
    for name, value in kwargs.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class _DartsNetwork(nn.Module):
    """Shared cell stack of the CIFAR and ImageNet networks (subclasses build the stems)."""

    drop_path_prob: float

    def _build_cells(self, genotype: DartsGenotype, C: int, layers: int, C_stem_pp: int,
                     C_stem_p: int, reduction_prev: bool) -> int:
        """Create ``self.cells``; return the channels at the aux-head position."""
        if not isinstance(genotype, DartsGenotype):
            raise TypeError(f"genotype must be a DartsGenotype, got {type(genotype).__name__}; "
                            "use NB201Network (or build_network) for NAS-Bench-201 cells")
        self._aux_index = 2 * layers // 3
        C_pp, C_p, C_curr = C_stem_pp, C_stem_p, C
        self.cells = nn.ModuleList()
        C_aux = C_p
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = DartsCell(genotype, C_pp, C_p, C_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            C_pp, C_p = C_p, cell.multiplier * C_curr
            if i == self._aux_index:
                C_aux = C_p
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self._C_final = C_p
        return C_aux

    def _run_cells(self, s0: torch.Tensor, s1: torch.Tensor) -> NetOutput:
        logits_aux: Optional[torch.Tensor] = None
        drop_prob = float(self.drop_path_prob)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, drop_prob)
            if i == self._aux_index and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1)), logits_aux


class NetworkCIFAR(_DartsNetwork):
    """DARTS evaluation network for CIFAR-sized inputs (docs/methods.md, "Training a found cell").

    Stem conv3x3 (in_channels -> 3C) + BN; ``layers`` cells with reductions at
    ``layers//3`` and ``2*layers//3`` (C doubles at each); global average pool + linear.
    The auxiliary head sits after cell ``2*layers//3`` and is computed in training mode only.

    Args:
        genotype: the searched cell pair.
        C: initial channels per node.
        layers: number of cells.
        num_classes: classifier outputs.
        in_channels: image channels.
        auxiliary: build the auxiliary head.
    """

    def __init__(self, genotype: DartsGenotype, C: int = 36, layers: int = 20, num_classes: int = 10,
                 in_channels: int = 3, auxiliary: bool = True) -> None:
        super().__init__()
        _check_positive(C=C, layers=layers, num_classes=num_classes, in_channels=in_channels)
        self.drop_path_prob = 0.0
        C_stem = 3 * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_stem),
        )
        C_aux = self._build_cells(genotype, C, layers, C_stem, C_stem, reduction_prev=False)
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes, 3, True) if auxiliary else None
        self.classifier = nn.Linear(self._C_final, num_classes)

    def forward(self, x: torch.Tensor) -> NetOutput:
        s = self.stem(x)
        return self._run_cells(s, s)


class NetworkImageNet(_DartsNetwork):
    """DARTS "mobile" ImageNet network (docs/methods.md, "Training a found cell").

    stem0: conv3x3 s2 (in -> C/2)-BN-ReLU-conv3x3 s2 (C/2 -> C)-BN; stem1: ReLU-conv3x3 s2-BN.
    The first cell is built as if it followed a reduction (its inputs are 56x56 and 28x28
    at 224x224). The auxiliary head (5x5 pool stride 2, no second BN) follows cell
    ``2*layers//3``; as in the original code that cell is the second reduction, so at
    224x224 the head actually sees 7x7 maps (the original comment says 14x14).
    The final pool is adaptive (7x7 at 224x224) so other input sizes work.
    """

    def __init__(self, genotype: DartsGenotype, C: int = 48, layers: int = 14, num_classes: int = 1000,
                 in_channels: int = 3, auxiliary: bool = True) -> None:
        super().__init__()
        _check_positive(C=C, layers=layers, num_classes=num_classes, in_channels=in_channels)
        if C < 2:
            raise ValueError(f"C must be >= 2 for the ImageNet stem (it starts with C/2 channels), got {C}")
        self.drop_path_prob = 0.0
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=False),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        C_aux = self._build_cells(genotype, C, layers, C, C, reduction_prev=True)
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes, 2, False) if auxiliary else None
        self.classifier = nn.Linear(self._C_final, num_classes)

    def forward(self, x: torch.Tensor) -> NetOutput:
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        return self._run_cells(s0, s1)


class NB201Cell(nn.Module):
    """A discrete NAS-Bench-201 cell: node j sums op(node i) over its incoming edges.

    ``none`` edges are skipped entirely (no module, no compute); a node whose incoming
    edges are all ``none`` is zeros. The output is node 3.
    """

    def __init__(self, genotype: NB201Genotype, C: int) -> None:
        super().__init__()
        factories = nb201_ops()
        self.edges = nn.ModuleDict()
        self._incoming: dict[int, list[tuple[int, str]]] = {1: [], 2: [], 3: []}
        for (src, dst), name in zip(NB201_EDGES, genotype.ops):
            if name == "none":
                continue
            key = f"{dst}<-{src}"
            self.edges[key] = factories[name](C, 1, True)
            self._incoming[dst].append((src, key))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for dst in (1, 2, 3):
            incoming = self._incoming[dst]
            if not incoming:
                nodes.append(torch.zeros_like(x))
                continue
            total = self.edges[incoming[0][1]](nodes[incoming[0][0]])
            for src, key in incoming[1:]:
                total = total + self.edges[key](nodes[src])
            nodes.append(total)
        return nodes[3]


class NB201Network(nn.Module):
    """NAS-Bench-201 evaluation network with one fixed cell (docs/methods.md, "Search spaces").

    Stem conv3x3 -> BN; N cells at C, ResNetReduction C -> 2C, N cells, ResNetReduction
    2C -> 4C, N cells; head BN-ReLU-global pool-linear. BN is affine here. Returns
    ``(logits, None)`` so every network has the same interface.

    Args:
        genotype: the NB201 cell.
        C: stem/stage-1 channels.
        N: cells per stage.
        num_classes: classifier outputs.
        in_channels: image channels.
    """

    def __init__(self, genotype: NB201Genotype, C: int = 16, N: int = 5, num_classes: int = 10,
                 in_channels: int = 3) -> None:
        super().__init__()
        if not isinstance(genotype, NB201Genotype):
            raise TypeError(f"genotype must be an NB201Genotype, got {type(genotype).__name__}; "
                            "use NetworkCIFAR/NetworkImageNet (or build_network) for DARTS cells")
        _check_positive(C=C, N=N, num_classes=num_classes, in_channels=in_channels)
        self.drop_path_prob = 0.0  # unused; kept for a uniform trainer interface
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        blocks: list[nn.Module] = []
        C_prev = C
        for stage, C_stage in enumerate((C, 2 * C, 4 * C)):
            if stage > 0:
                blocks.append(ResNetReduction(C_prev, C_stage))
            blocks.extend(NB201Cell(genotype, C_stage) for _ in range(N))
            C_prev = C_stage
        self.cells = nn.Sequential(*blocks)
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x: torch.Tensor) -> NetOutput:
        out = self.lastact(self.cells(self.stem(x)))
        return self.classifier(self.global_pooling(out).flatten(1)), None


def evaluation_of(genotype: Genotype) -> Any:
    """The registered evaluation network of ``genotype``'s family (:data:`NETWORKS`, keyed by the
    genotype's ``space`` field: ``darts``, ``nb201``, ``broad``): an object with ``build``,
    ``label`` and ``model_options``. The one dispatch from a genotype to its network."""
    family = getattr(genotype, "space", None)
    if not isinstance(family, str) or family not in NETWORKS:
        raise TypeError(f"no evaluation network for a {type(genotype).__name__} (space {family!r}); "
                        f"registered: {', '.join(NETWORKS.names())}")
    return NETWORKS.get(family)


def build_network(genotype: Genotype, *, num_classes: int, in_channels: int = 3, C: Optional[int] = None,
                  layers: Optional[int] = None, stem: str = "cifar", auxiliary: bool = True) -> nn.Module:
    """Build the evaluation network for a genotype (its family's entry in :data:`NETWORKS`).

    Args:
        genotype: a :class:`DartsGenotype`, :class:`NB201Genotype`, or a genotype of another
            space with a registered network (e.g. ``broad``).
        num_classes: classifier outputs.
        in_channels: image channels.
        C: initial channels; default 36 (DARTS, cifar stem), 48 (imagenet stem), 16 (NB201).
        layers: number of cells for DARTS (default 20 cifar / 14 imagenet); for NB201 the
            number of cells per stage N (default 5).
        stem: ``"cifar"`` or ``"imagenet"`` (DARTS only).
        auxiliary: build the auxiliary head (DARTS only; NB201 has none).
    """
    return evaluation_of(genotype).build(genotype, num_classes=num_classes, in_channels=in_channels, C=C,
                                         layers=layers, stem=stem, auxiliary=auxiliary)


def network_options(genotype: Genotype, model: Any) -> dict[str, Any]:
    """The :func:`build_network` keywords (``C``, ``layers``, ``stem``, ``auxiliary``) that a training
    config's ``model`` section gives ``genotype``'s network (NB201 cells read ``nb201_C``/``nb201_N``)."""
    return dict(evaluation_of(genotype).model_options(model))


def _check_stem(stem: str) -> None:
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")


@NETWORKS.register("darts", description="DARTS evaluation networks: CIFAR (20 cells) and ImageNet mobile (14)")
class DartsEvaluation:
    """How :func:`build_network`, the size reports and training build and name a DARTS cell's network."""

    @staticmethod
    def build(genotype: Genotype, *, num_classes: int, in_channels: int = 3, C: Optional[int] = None,
              layers: Optional[int] = None, stem: str = "cifar", auxiliary: bool = True) -> nn.Module:
        _check_stem(stem)
        if stem == "imagenet":
            return NetworkImageNet(genotype, C=48 if C is None else C, layers=14 if layers is None else layers,
                                   num_classes=num_classes, in_channels=in_channels, auxiliary=auxiliary)
        return NetworkCIFAR(genotype, C=36 if C is None else C, layers=20 if layers is None else layers,
                            num_classes=num_classes, in_channels=in_channels, auxiliary=auxiliary)

    @staticmethod
    def label(genotype: Genotype, *, C: Optional[int] = None, layers: Optional[int] = None,
              stem: str = "cifar") -> str:
        if stem == "imagenet":
            return f"DARTS ImageNet network C={C or 48}, {layers or 14} cells"
        return f"DARTS CIFAR network C={C or 36}, {layers or 20} cells"

    @staticmethod
    def model_options(model: Any) -> dict[str, Any]:
        return {"C": model.C, "layers": model.layers, "stem": model.stem, "auxiliary": model.auxiliary}


@NETWORKS.register("nb201", description="NAS-Bench-201 network: 3 stages of N copies of one cell")
class NB201Evaluation:
    """How :func:`build_network`, the size reports and training build and name an NB201 cell's network."""

    @staticmethod
    def build(genotype: Genotype, *, num_classes: int, in_channels: int = 3, C: Optional[int] = None,
              layers: Optional[int] = None, stem: str = "cifar", auxiliary: bool = True) -> nn.Module:
        _check_stem(stem)
        if stem != "cifar":
            raise ValueError("stem='imagenet' is only defined for DARTS genotypes; NB201 networks use "
                             "their own conv3x3 stem (leave stem='cifar')")
        return NB201Network(genotype, C=16 if C is None else C, N=5 if layers is None else layers,
                            num_classes=num_classes, in_channels=in_channels)

    @staticmethod
    def label(genotype: Genotype, *, C: Optional[int] = None, layers: Optional[int] = None,
              stem: str = "cifar") -> str:
        return f"NAS-Bench-201 network C={C or 16}, N={layers or 5} cells per stage"

    @staticmethod
    def model_options(model: Any) -> dict[str, Any]:
        return {"C": model.nb201_C, "layers": model.nb201_N}
