"""Model size and cost: one counting rule used everywhere in the toolkit.

Counting rule
-------------
* **Parameters** (:func:`count_params`): every parameter of the model except those of
  modules whose name starts with an excluded prefix (default ``"auxiliary"``, i.e. the
  auxiliary head, which is dropped at test time; docs/methods.md, "Training a found cell"). Prefixes are matched
  against every dotted component of the parameter name, so wrapped models
  (``module.auxiliary_head...``) are handled too. Buffers (BN running stats) are not
  parameters and are not counted.
* **Multiply-adds** (:func:`count_macs`): only ``nn.Conv2d`` and ``nn.Linear`` layers count.

  - conv: ``output_elements x (in_channels / groups) x kernel_h x kernel_w``
    (dilation does not change it; bias adds are not counted);
  - linear: ``in_features x out_features`` per output row (one row per sample).

  BatchNorm, activations, pooling, the additions inside cells, concatenation and
  drop-path are **not** counted. The model runs once, in eval mode (so the auxiliary
  head and drop-path are inactive), on a single zero image of the given size; each
  module's train/eval flag is restored afterwards. With this rule the ImageNet-mobile
  DARTS_V2 network (C=48, 14 cells, 224x224) has 529.9M multiply-adds and 4.72M
  parameters (the paper reports 574M and 4.7M; counting tools differ, quark0/darts#46),
  and the CIFAR DARTS_V2 network (C=36, 20 cells) has 3.35M parameters.

:func:`genotype_stats` applies both rules to the evaluation network of a genotype and
caches the result per genotype string and configuration, so the searcher can call it
every epoch. The network is built and run once on the CPU, inside a forked RNG, so the call
never changes the run's random stream (about 0.2 s for a CIFAR network; the ``meta``
device would skip the arithmetic but runs its shape functions in Python, 5-10x slower).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from pcdarts.genotype import (NB201_EDGES, DartsGenotype, Genotype, NB201Genotype, parse_genotype)
from pcdarts.genotype.primitives import PARAMETER_FREE
from pcdarts.registry import NETWORKS


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return any(part.startswith(prefix) for part in name.split(".") for prefix in exclude)


def count_params(model: nn.Module, exclude: Sequence[str] = ("auxiliary",)) -> int:
    """Number of parameters, leaving out modules whose name starts with a prefix in ``exclude``.

    Args:
        model: any module.
        exclude: module-name prefixes to leave out (default: the auxiliary head).
    """
    if isinstance(exclude, str):
        exclude = (exclude,)
    return sum(p.numel() for name, p in model.named_parameters() if not _excluded(name, exclude))


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-adds of the Conv2d and Linear layers for one input of ``input_size`` (C, H, W).

    See the module docstring for the exact rule. The model's (and every submodule's)
    train/eval mode is restored afterwards.

    Args:
        model: a network taking a ``1 x C x H x W`` tensor.
        input_size: ``(channels, height, width)`` of one input.
    """
    if len(input_size) != 3 or any(not isinstance(s, int) or s < 1 for s in input_size):
        raise ValueError(f"input_size must be (channels, height, width) of positive ints, got {input_size!r}")
    total = 0

    def conv_hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv2d)
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Linear)
        rows = output.numel() // module.out_features
        total += rows * module.in_features * module.out_features

    modes = {m: m.training for m in model.modules()}
    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        model.eval()
        param = next(model.parameters(), None)
        x = torch.zeros((1, *input_size), dtype=param.dtype if param is not None else torch.float32,
                        device=param.device if param is not None else None)
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return total


def _default_size(stem: str) -> int:
    return 224 if stem == "imagenet" else 32


@lru_cache(maxsize=256)
def _stats_cached(space: str, text: str, num_classes: int, in_channels: int, input_size: int,
                  C: Optional[int], layers: Optional[int], stem: str) -> tuple[int, int]:
    from pcdarts.nn.networks import build_network  # late: keeps `import pcdarts.analysis.stats` light

    genotype = parse_genotype(text)
    size = (in_channels, input_size, input_size)

    # One CPU build and forward of a 1-image batch: the arithmetic is cheap, and the forked
    # RNG leaves the run's random stream as it was (the weights' initialisation draws from it,
    # and so does the forward of a cell with RobustDARTS's ``noise`` op), cached or not.
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        net = build_network(genotype, num_classes=num_classes, in_channels=in_channels, C=C,
                            layers=layers, stem=stem, auxiliary=False)
        return count_params(net), count_macs(net, size)


def genotype_stats(genotype: Genotype, *, num_classes: int = 10, in_channels: int = 3,
                   input_size: Optional[int] = None, C: Optional[int] = None, layers: Optional[int] = None,
                   stem: str = "cifar", labelled: bool = True) -> dict[str, float]:
    """Parameters and multiply-adds of a genotype's evaluation network (cached).

    Args:
        genotype: a DARTS or NB201 genotype.
        num_classes: classifier outputs.
        labelled: False for data without classes (an unlabelled search): the network label
            then speaks of a ``num_classes``-output head, not of classes.
        in_channels: image channels.
        input_size: square input side; default 32 (cifar stem, NB201) or 224 (imagenet stem).
        C: initial channels (default per :func:`pcdarts.nn.networks.build_network`).
        layers: cells (DARTS) or cells per stage (NB201); default per ``build_network``.
        stem: ``"cifar"`` or ``"imagenet"``.

    Returns:
        ``{"params": M, "macs": M, "n_params": int, "n_macs": int, "input_size": int}``:
        parameters (auxiliary head excluded) and multiply-adds in millions, the exact
        counts, and the input side that was used.
    """
    if not isinstance(genotype, (DartsGenotype, NB201Genotype)):
        raise TypeError(f"genotype must be a DartsGenotype or NB201Genotype, got {type(genotype).__name__}")
    size = _default_size(stem) if input_size is None else int(input_size)
    params, macs = _stats_cached(genotype.space, str(genotype), int(num_classes), int(in_channels), size,
                                 C, layers, stem)
    return {"params": params / 1e6, "macs": macs / 1e6, "n_params": params, "n_macs": macs, "input_size": size,
            "network": network_label(genotype, num_classes=num_classes, in_channels=in_channels, input_size=size,
                                     C=C, layers=layers, stem=stem, labelled=labelled)}


def network_label(genotype: Genotype, *, num_classes: int, in_channels: int, input_size: int,
                  C: Optional[int] = None, layers: Optional[int] = None, stem: str = "cifar",
                  labelled: bool = True) -> str:
    """Which evaluation network a parameter / multiply-add figure refers to, in words
    (the defaults of :func:`pcdarts.nn.networks.build_network` filled in); ``labelled`` False:
    data without classes (its head's outputs are named, not classes)."""
    if labelled:
        head = f"{num_classes} class{'' if num_classes == 1 else 'es'}"
    else:
        head = f"{num_classes}-output head (unlabelled data: no classes)"
    shape = f"{head}, {in_channels}x{input_size}x{input_size} input"
    if genotype.space not in ("darts", "nb201"):  # a space with its own evaluation network (e.g. broad)
        return f"{NETWORKS.get(genotype.space).label(genotype, C=C, layers=layers, stem=stem)}, {shape}"
    if isinstance(genotype, NB201Genotype):
        return f"NAS-Bench-201 network C={C or 16}, N={layers or 5} cells per stage, {shape}"
    if stem == "imagenet":
        return f"DARTS ImageNet network C={C or 48}, {layers or 14} cells, {shape}"
    return f"DARTS CIFAR network C={C or 36}, {layers or 20} cells, {shape}"


def arch_weight_summary(arch_weights: Optional[dict[str, list[list[float]]]],
                        op_masks: Optional[dict[str, Any]] = None) -> dict[str, float]:
    """How far op weights moved from uniform over each edge's live ops: ``{"entropy", "max",
    "uniform"}`` or ``{}``.

    ``op_masks`` (cell type -> [E][O] truth values, False = the op was removed: pruned before
    the search, shrunk, or not a candidate) names the live ops; None = every op is live. Only
    the live ops of an edge count, their weights renormalised: ``entropy`` is the mean over
    edges (all cell types) of the per-edge entropy divided by log(live ops of that edge): 1.0 =
    uniform, 0.0 = one op per edge; ``max`` is the mean of the per-edge largest weight;
    ``uniform`` the mean of 1 / (live ops), the weight of one op under a uniform choice. Edges
    with fewer than two live ops have nothing to choose and are left out.
    """
    if not arch_weights:
        return {}
    rows, live = [], []
    for ct, cell in arch_weights.items():
        masks = (op_masks or {}).get(ct)
        for e, row in enumerate(cell):
            keep = [bool(v) for v in masks[e]] if masks is not None else [True] * len(row)
            if sum(keep) > 1:
                rows.append(row)
                live.append(keep)
    if not rows:
        return {}
    m = torch.tensor(live, dtype=torch.bool)
    w = torch.tensor(rows, dtype=torch.float64).clamp_min(0) * m
    w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
    n = m.sum(1).double()
    ent = -(w * w.clamp_min(1e-12).log()).sum(1) / n.log()
    return {"entropy": float(ent.mean()), "max": float(w.max(1).values.mean()), "uniform": float((1.0 / n).mean())}


def genotype_agreement(a: Genotype, b: Genotype) -> tuple[int, int]:
    """How many of two cells' choices coincide: ``(shared, total)``.

    NB201: the edges that carry the same op, of 6. DARTS-like spaces: per cell type and
    node, the (op, input) pairs both genotypes chose (a node's two pairs count as a set, so
    their order does not matter), of all pairs (16 for 4-node cells).
    """
    if type(a) is not type(b) or a.space != b.space:
        raise ValueError(f"cannot compare a {a.space} genotype with a {b.space} genotype")
    if isinstance(a, NB201Genotype):
        return sum(x == y for x, y in zip(a.ops, b.ops)), len(a.ops)
    shared = total = 0
    for ca, cb in ((a.normal, b.normal), (a.reduce, b.reduce)):
        if len(ca) != len(cb):
            raise ValueError(f"cannot compare cells of {len(ca) // 2} and {len(cb) // 2} nodes")
        for k in range(0, len(ca), 2):
            left, right = list(ca[k:k + 2]), list(cb[k:k + 2])
            for pair in left:
                if pair in right:
                    right.remove(pair)
                    shared += 1
        total += len(ca)
    return shared, total


def seed_agreement(genotypes: Sequence[Genotype]) -> Optional[float]:
    """The mean, over every pair of genotypes (e.g. one per search seed), of the share of
    their choices that coincide (:func:`genotype_agreement`); None for fewer than two."""
    pairs = [genotype_agreement(a, b) for i, a in enumerate(genotypes) for b in genotypes[i + 1:]]
    return sum(s / t for s, t in pairs) / len(pairs) if pairs else None


def genotype_ops(genotype: Genotype) -> list[str]:
    """The op names of a genotype's cells (NB201: its 6 edges; DARTS-like: normal then reduce)."""
    if isinstance(genotype, NB201Genotype):
        return list(genotype.ops)
    return [op for cell in (genotype.normal, genotype.reduce) for op, _ in cell]


def collapse_stats(genotype: Genotype, arch_weights: Optional[dict[str, list[list[float]]]] = None,
                   op_masks: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The collapse diagnostics of one epoch: how many of the cell's ops are parameter-free
    (``param_free_ops`` of ``cell_ops``; DARTS-like spaces also ``param_free_normal``, the
    normal cell's share, where collapse shows: reduction cells are pool-heavy by design) and,
    when the method has op weights, the mean normalised entropy of each cell type's weights
    over each edge's live ops (``arch_entropy``: 1.0 = uniform; ``op_masks`` as in
    :func:`arch_weight_summary`)."""
    ops = genotype_ops(genotype)
    out: dict[str, Any] = {"param_free_ops": sum(op in PARAMETER_FREE for op in ops), "cell_ops": len(ops)}
    if hasattr(genotype, "normal"):
        out["param_free_normal"] = sum(op in PARAMETER_FREE for op, _ in genotype.normal)
    entropy = {ct: arch_weight_summary({ct: w}, op_masks).get("entropy") for ct, w in (arch_weights or {}).items()}
    entropy = {ct: round(v, 4) for ct, v in entropy.items() if v is not None}
    if entropy:
        out["arch_entropy"] = entropy
    return out


NOT_MOVED = 0.995  # a mean normalised entropy that prints as 1.00: the op weights are still uniform


def collapse_warning(genotype: Genotype, arch_entropy: Optional[dict[str, float]] = None) -> Optional[str]:
    """A one-line warning about the found cell, else None.

    When the op weights never moved from uniform (every cell type's ``arch_entropy``, the
    last epoch's :func:`collapse_stats`, prints as 1.00), the cell was picked from near-ties,
    which says nothing about collapse: the warning says that the architecture did not move.
    Otherwise it warns when more than half of the searched cell's ops are parameter-free
    (the normal cell in DARTS-like spaces).
    """
    if arch_entropy and all(v >= NOT_MOVED for v in arch_entropy.values()):
        mean = sum(arch_entropy.values()) / len(arch_entropy)
        return (f"the architecture did not move: its op weights are still uniform (entropy {mean:.2f} of uniform "
                "over the live ops), so the cell was picked from near-ties and means little; train the "
                "architecture longer (more epochs after the warm-up, e.g. --budget N) or with a larger "
                "architecture learning rate")
    ops = [op for op, _ in genotype.normal] if hasattr(genotype, "normal") else genotype_ops(genotype)
    free = [op for op in ops if op in PARAMETER_FREE]
    if 2 * len(free) <= len(ops):
        return None
    which = "normal cell" if hasattr(genotype, "normal") else "cell"
    counts = ", ".join(f"{op} x{free.count(op)}" for op in sorted(set(free), key=free.index))
    return (f"the found {which} is dominated by parameter-free ops ({len(free)} of {len(ops)}: {counts}), the "
            "signature of DARTS's collapse; search longer, or try a collapse-robust method (darts-minus, drnas, "
            "is-darts) or pcdarts compare")


def describe_cells(genotype: Genotype) -> list[str]:
    """Human-readable lines listing each node's inputs and ops."""
    lines: list[str] = []
    if isinstance(genotype, NB201Genotype):
        lines.append("cell (node 0 = input, output = node 3):")
        for dst in (1, 2, 3):
            terms = [f"{op}(node {src})" for (src, d), op in zip(NB201_EDGES, genotype.ops)
                     if d == dst and op != "none"]
            lines.append(f"  node {dst} = " + (" + ".join(terms) if terms else "0 (all inputs none)"))
        return lines
    names = {0: "c_{k-2}", 1: "c_{k-1}"}
    for kind in ("normal", "reduce"):
        entries = getattr(genotype, kind)
        concat = getattr(genotype, f"{kind}_concat")
        # nodes are numbered as the genotype's input indices: 0, 1 = cell inputs, 2.. = nodes
        lines.append(f"{genotype.cell_titles[kind]}:")
        for step in range(len(entries) // 2):
            terms = [f"{op}({names.get(i, f'node {i}')})" for op, i in entries[2 * step:2 * step + 2]]
            lines.append(f"  node {step + 2} = " + " + ".join(terms))
        outs = ", ".join(names.get(i, f"node {i}") for i in concat)
        lines.append(f"  output = concat({outs})")
    return lines
