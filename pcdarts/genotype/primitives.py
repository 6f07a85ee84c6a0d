"""Candidate operation names of the spaces, in their canonical order (docs/methods.md, "Search spaces").

Plain data (no torch), so genotypes can be validated without building any network.
"""
from __future__ import annotations

DARTS_PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
NB201_PRIMITIVES: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# the ops a DARTS-format cell may hold: the DARTS primitives but ``none`` (never derived), and the
# ``noise`` op of the RobustDARTS space S4 (pcdarts/spaces/robust.py), which the DARTS evaluation
# network builds like the others
DARTS_CELL_OPS: tuple[str, ...] = tuple(p for p in DARTS_PRIMITIVES if p != "none") + ("noise",)

# ops without weights: a cell made mostly of these is the signature of DARTS's collapse
PARAMETER_FREE: frozenset[str] = frozenset({"none", "skip_connect", "max_pool_3x3", "avg_pool_3x3", "noise"})
