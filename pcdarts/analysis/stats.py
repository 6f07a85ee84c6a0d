"""Genotype statistics and collapse diagnostics: how far the architecture weights moved,
how two cells agree, how many of a cell's ops are parameter-free, and cells in words.

The size and cost counting (:func:`count_params`, :func:`count_macs`, :func:`genotype_stats`,
:func:`network_label`) lives with the networks in :mod:`pcdarts.nn.counting` (its docstring
states the counting rule) and is re-exported here.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from pcdarts.genotype import Genotype
from pcdarts.genotype.primitives import PARAMETER_FREE
from pcdarts.nn.counting import count_macs, count_params, genotype_stats, network_label  # noqa: F401  (re-exported)


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
    """How many of two cells' choices coincide: ``(shared, total)`` (the genotype type's
    ``agreement``). NB201: the edges that carry the same op, of 6. DARTS-like spaces: per cell
    type and node, the (op, input) pairs both genotypes chose (a node's two pairs count as a set,
    so their order does not matter), of all pairs (16 for 4-node cells).
    """
    if type(a) is not type(b) or a.space != b.space:
        raise ValueError(f"cannot compare a {a.space} genotype with a {b.space} genotype")
    return a.agreement(b)


def seed_agreement(genotypes: Sequence[Genotype]) -> Optional[float]:
    """The mean, over every pair of genotypes (e.g. one per search seed), of the share of
    their choices that coincide (:func:`genotype_agreement`); None for fewer than two."""
    pairs = [genotype_agreement(a, b) for i, a in enumerate(genotypes) for b in genotypes[i + 1:]]
    return sum(s / t for s, t in pairs) / len(pairs) if pairs else None


def genotype_ops(genotype: Genotype) -> list[str]:
    """The op names of a genotype's cells (NB201: its 6 edges; DARTS-like: normal then reduce)."""
    return genotype.cell_ops()


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
    normal = genotype.collapse_ops()
    if normal is not None:
        out["param_free_normal"] = sum(op in PARAMETER_FREE for op in normal)
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
    normal = genotype.collapse_ops()
    ops = normal if normal is not None else genotype_ops(genotype)
    free = [op for op in ops if op in PARAMETER_FREE]
    if 2 * len(free) <= len(ops):
        return None
    which = "normal cell" if normal is not None else "cell"
    counts = ", ".join(f"{op} x{free.count(op)}" for op in sorted(set(free), key=free.index))
    return (f"the found {which} is dominated by parameter-free ops ({len(free)} of {len(ops)}: {counts}), the "
            "signature of DARTS's collapse; search longer, or try a collapse-robust method (darts-minus, drnas, "
            "is-darts) or pcdarts compare")


def describe_cells(genotype: Genotype) -> list[str]:
    """Human-readable lines listing each node's inputs and ops (the genotype type's ``describe``)."""
    return genotype.describe()
