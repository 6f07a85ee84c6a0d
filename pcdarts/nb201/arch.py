"""NB201 cell handling: arch strings and genotype files -> cells, base-5 codes, isomorphism.

Isomorphic cells (:func:`canonical_arch`) -- two cells are treated as equivalent when they
compute the same *symbolic expression* of the cell input ``x``:

* ``none`` contributes nothing; ``skip_connect`` passes its input's terms through; every
  other op becomes a term ``op(<its input>)``; a node is the *multiset* (sorted sum) of its
  terms, so the order of summands does not matter (this also covers swapping the
  intermediate nodes 1 and 2 when there is no edge 2<-1);
* an op applied to a node that is identically zero contributes nothing, and nodes that
  do not feed node 3 are ignored: so edges that are on no path from node 0 to node 3
  never matter, and every cell with no such path is equivalent to the all-``none`` cell.

  Caveat: a ReLU-Conv-BN on an all-zero input outputs the (learned) BN bias, so a conv
  edge leaving a dead node adds an input-independent per-channel constant; we treat it
  as nothing. In the package data these cells match their simpler twins within seed
  noise (e.g. CIFAR-10 ``|none~0|+|none~0|none~1|+|skip_connect~0|nor_conv_3x3~1|none~2|``
  84.50 vs ``...|skip_connect~0|none~1|none~2|`` 84.35).

The 15,625 cells fall into 4,930 such classes (341 cells have no input-to-output path).
The benchmark trained every cell separately, so isomorphic cells have different numbers:
on CIFAR-10 validation the median std of the member means within a class is 0.13 points,
below the median per-cell std over seeds (0.16); a few parameter-free (pooling-only)
classes contain diverged runs (~24 %).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pcdarts.genotype import (
    NB201_EDGES,
    DartsGenotype,
    NB201Genotype,
    load_genotype,
    parse_genotype,
)
from pcdarts.errors import PcdartsError
from pcdarts.nn.ops import NB201_PRIMITIVES


class BenchmarkError(PcdartsError, ValueError):
    """A benchmark lookup that cannot be answered; the message names the file/arch/field and the fix."""


N_CELLS = 5 ** 6
_OPS_INDEX = {op: i for i, op in enumerate(NB201_PRIMITIVES)}

ArchLike = str | Path | NB201Genotype


# --------------------------------------------------------------------------- arch handling


def _as_nb201(arch: Any) -> NB201Genotype:
    """Resolve an arch string, genotype file / run directory, name or genotype to an NB201 cell."""
    if isinstance(arch, NB201Genotype):
        return arch
    if isinstance(arch, DartsGenotype):
        raise BenchmarkError("NB201 lookup needs an NB201 cell, got a DARTS genotype; pass an NB201 arch string "
                             "(|op~0|+|op~0|op~1|+|op~0|op~1|op~2|) or a genotype.json with \"space\": \"nb201\"")
    if not isinstance(arch, (str, Path)):
        raise BenchmarkError(f"arch must be an NB201 arch string, an NB201Genotype or a genotype file path, "
                             f"got {type(arch).__name__}")
    text = str(arch).strip()
    # strings are parsed without touching the file system (long DARTS strings are not valid paths)
    shown = text if len(text) <= 80 else text[:77] + "..."
    if text[:1] in ("|", "{") or text.startswith("Genotype"):
        genotype = parse_genotype(text)
    else:
        try:
            genotype = load_genotype(arch)
        except OSError as e:  # e.g. a name too long to be a path
            raise BenchmarkError(f"cannot read {shown!r} as an NB201 arch string or genotype file: {e.strerror}; "
                                 "pass |op~0|+|op~0|op~1|+|op~0|op~1|op~2| or a path to genotype.json") from None
    if not isinstance(genotype, NB201Genotype):
        raise BenchmarkError(f"{shown!r} is a DARTS genotype; NB201 lookup needs an NB201 cell: an arch string "
                             "|op~0|+|op~0|op~1|+|op~0|op~1|op~2| or a genotype.json with \"space\": \"nb201\"")
    return genotype


def _code_of(genotype: NB201Genotype) -> int:
    """Base-5 code of a cell: op index per edge, edge 0 (1<-0) most significant."""
    code = 0
    for op in genotype.ops:
        code = code * 5 + _OPS_INDEX[op]
    return code


def _digits_of(code: int) -> tuple[int, ...]:
    digits = []
    for _ in range(6):
        code, d = divmod(code, 5)
        digits.append(d)
    return tuple(reversed(digits))


def _arch_of(code: int) -> str:
    return NB201Genotype(tuple(NB201_PRIMITIVES[d] for d in _digits_of(code))).arch_str()


def _expression(digits: Sequence[int]) -> str:
    """The symbolic expression of node 3 in terms of the input ``x`` (see the module docstring)."""
    nodes: dict[int, tuple[str, ...]] = {0: ("x",)}
    for dst in (1, 2, 3):
        terms: list[str] = []
        for k, (src, d) in enumerate(NB201_EDGES):
            if d != dst:
                continue
            op, value = digits[k], nodes[src]
            if op == 0 or not value:  # none, or an op applied to a zero node
                continue
            if NB201_PRIMITIVES[op] == "skip_connect":
                terms.extend(value)
            else:
                terms.append(f"{NB201_PRIMITIVES[op]}({'+'.join(value)})")
        nodes[dst] = tuple(sorted(terms))
    return "+".join(nodes[3]) or "0"


@functools.lru_cache(maxsize=1)
def _iso_classes() -> tuple[np.ndarray, tuple[tuple[int, ...], ...]]:
    """Isomorphism classes of all 15,625 cells.

    Returns:
        ``(class_of_code, members)``: class id per code, and per class its member codes,
        canonical representative first, then the others in increasing code order.
    """
    key_to_class: dict[str, int] = {}
    class_of = np.empty(N_CELLS, dtype=np.int32)
    groups: list[list[int]] = []
    for code in range(N_CELLS):
        key = _expression(_digits_of(code))
        cid = key_to_class.setdefault(key, len(groups))
        if cid == len(groups):
            groups.append([])
        groups[cid].append(code)
        class_of[code] = cid

    def rank(code: int) -> tuple[int, int]:
        return (sum(1 for d in _digits_of(code) if d != 0), code)

    members = []
    for g in groups:
        rep = min(g, key=rank)
        members.append((rep, *[c for c in g if c != rep]))
    return class_of, tuple(members)


def _class_members(code: int) -> tuple[int, ...]:
    class_of, members = _iso_classes()
    return members[int(class_of[code])]


def canonical_arch(arch: ArchLike) -> str:
    """The canonical representative of the cell's isomorphism class, as an arch string.

    Two cells have the same canonical form when they compute the same expression of the
    cell input: ``none`` edges and edges on no input-to-output path are dropped, skip
    connections are followed, and sums are unordered (details in the module docstring).
    The representative is the class member with the fewest non-``none`` edges (ties: the
    smallest base-5 code).

    Args:
        arch: an NB201 arch string, :class:`NB201Genotype`, genotype file or run directory.

    Returns:
        An arch string, e.g. every cell without a path from node 0 to node 3 maps to the
        all-``none`` cell.

    Raises:
        GenotypeError: ``arch`` is a malformed arch string or file (the message names the field).
        BenchmarkError: ``arch`` is a DARTS genotype.
    """
    return _arch_of(_class_members(_code_of(_as_nb201(arch)))[0])


def isomorphic_archs(arch: ArchLike) -> list[str]:
    """All cells isomorphic to ``arch`` (itself included), canonical representative first.

    Args:
        arch: an NB201 arch string, :class:`NB201Genotype`, genotype file or run directory.

    Returns:
        Arch strings of the class members.
    """
    return [_arch_of(c) for c in _class_members(_code_of(_as_nb201(arch)))]

