"""Genotypes: the discrete result of a search, for every space.

* :class:`DartsGenotype` prints as the familiar
  ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], ...)``
  and parses that text back, so published cells can be pasted in.
* :class:`BroadGenotype` (broad space, B-DARTS) is a DartsGenotype marked ``broad``; it
  prints and parses as ``BroadGenotype(normal=[...], ...)``.
* :class:`NB201Genotype` round-trips the canonical NAS-Bench-201 arch string
  ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``.

All read and write JSON (its ``space`` field names the class). No torch imports here.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

from pcdarts.errors import PcdartsError
from pcdarts.genotype.primitives import DARTS_CELL_OPS, NB201_PRIMITIVES


class GenotypeError(PcdartsError, ValueError):
    """A genotype (file, string or dict) that cannot be read; the message names the field."""


# a cell as a graph for pictures: nodes (id, label, kind: input | node | output) and edges
# (source id, target id, label, style: op | none | concat); drawn by pcdarts.analysis.plot
CellGraph = tuple[list[tuple[str, str, str]], list[tuple[str, str, str, str]]]

# the genotype class of each JSON "space" field (a genotype family: ``darts``, ``nb201``, ``broad``),
# filled by :func:`register_genotype_type` where each class is defined; a space names its class in
# ``SearchSpace.genotype_type`` (a space with a new kind of cell defines and registers it in its file)
GENOTYPE_TYPES: dict[str, type] = {}


def register_genotype_type(cls: type) -> type:
    """Class decorator: register a genotype class under its ``space`` (the JSON field that names
    it). The class reads and writes itself: ``to_dict``/``from_dict``, ``__str__`` and
    ``matches_text``/``from_text`` (its text form), ``cell_ops``, ``collapse_ops``, ``agreement``
    and ``describe`` (the statistics of :mod:`pcdarts.analysis.stats`)."""
    if cls.space in GENOTYPE_TYPES:
        raise ValueError(f"genotype type {cls.space!r} is registered twice")
    GENOTYPE_TYPES[cls.space] = cls
    return cls


@register_genotype_type
@dataclass(frozen=True)
class DartsGenotype:
    """A DARTS cell pair. Entries 2k and 2k+1 are the inputs of node k+2.

    Each entry is ``(op, input)`` with input 0 = c_{k-2}, 1 = c_{k-1}, 2.. = earlier nodes.
    """

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]
    space = "darts"
    text_name = "Genotype"  # the name its text form starts with (the original code's namedtuple)
    cell_titles = {"normal": "normal cell", "reduce": "reduction cell"}  # what each cell is, for pictures

    def __post_init__(self) -> None:
        for field in ("normal", "reduce"):
            _check_darts_cell(getattr(self, field), field)
        for field in ("normal_concat", "reduce_concat"):
            cells = self.normal if field == "normal_concat" else self.reduce
            concat = getattr(self, field)
            n_nodes = len(cells) // 2
            if not concat or any(not isinstance(i, int) or i < 0 or i >= n_nodes + 2 for i in concat):
                raise GenotypeError(f"{field}={list(concat)} must list node indices in 0..{n_nodes + 1}")

    def __str__(self) -> str:
        def cell(c: tuple[tuple[str, int], ...]) -> str:
            return "[" + ", ".join(f"({op!r}, {i})" for op, i in c) + "]"

        return (f"{self.text_name}(normal={cell(self.normal)}, normal_concat={list(self.normal_concat)}, "
                f"reduce={cell(self.reduce)}, reduce_concat={list(self.reduce_concat)})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "normal": [[op, i] for op, i in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, i] for op, i in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DartsGenotype":
        missing = [k for k in ("normal", "normal_concat", "reduce", "reduce_concat") if k not in d]
        if missing:
            raise GenotypeError(f"DARTS genotype is missing field(s) {missing}")
        parts: dict[str, Any] = {}
        for field in ("normal", "reduce"):
            entries = d[field]
            if not isinstance(entries, (list, tuple)):
                raise GenotypeError(f"field {field!r} must be a list of [op, input] pairs, got {entries!r}")
            pairs = []
            for k, e in enumerate(entries):
                if not (isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], str)
                        and isinstance(e[1], int)):
                    raise GenotypeError(f"field {field!r} entry {k} must be [op_name, input_index], got {e!r}")
                pairs.append((e[0], int(e[1])))
            parts[field] = tuple(pairs)
        for field in ("normal_concat", "reduce_concat"):
            v = d[field]
            if isinstance(v, range):
                v = list(v)
            if not isinstance(v, (list, tuple)):
                raise GenotypeError(f"field {field!r} must be a list of node indices, got {v!r}")
            parts[field] = tuple(v)
        return cls(**parts)

    @classmethod
    def matches_text(cls, text: str) -> bool:
        """Whether ``text`` (stripped) is this class's text form."""
        return re.match(rf"{cls.text_name}\s*\(", text) is not None

    @classmethod
    def from_text(cls, text: str) -> "DartsGenotype":
        return cls.parse(text)

    def cell_ops(self) -> list[str]:
        """The op names of the cells: normal, then reduce."""
        return [op for cell in (self.normal, self.reduce) for op, _ in cell]

    def collapse_ops(self) -> Optional[list[str]]:
        """The ops of the cell where collapse shows (the normal cell: reduction cells are
        pool-heavy by design); None where every cell counts."""
        return [op for op, _ in self.normal]

    def agreement(self, other: "DartsGenotype") -> tuple[int, int]:
        """Per cell type and node, the (op, input) pairs both chose (a node's two pairs as a
        set), of all pairs: ``(shared, total)``."""
        shared = total = 0
        for ca, cb in ((self.normal, other.normal), (self.reduce, other.reduce)):
            if len(ca) != len(cb):
                raise ValueError(f"cannot compare cells of {len(ca) // 2} and {len(cb) // 2} nodes")
            for k in range(0, len(ca), 2):
                right = list(cb[k:k + 2])
                for pair in ca[k:k + 2]:
                    if pair in right:
                        right.remove(pair)
                        shared += 1
            total += len(ca)
        return shared, total

    def describe(self) -> list[str]:
        """Each node's inputs and ops, in words (0, 1 = the cell inputs, 2.. = nodes)."""
        names = {0: "c_{k-2}", 1: "c_{k-1}"}
        lines: list[str] = []
        for kind in ("normal", "reduce"):
            entries, concat = getattr(self, kind), getattr(self, f"{kind}_concat")
            lines.append(f"{self.cell_titles[kind]}:")
            for step in range(len(entries) // 2):
                terms = [f"{op}({names.get(i, f'node {i}')})" for op, i in entries[2 * step:2 * step + 2]]
                lines.append(f"  node {step + 2} = " + " + ".join(terms))
            outs = ", ".join(names.get(i, f"node {i}") for i in concat)
            lines.append(f"  output = concat({outs})")
        return lines

    def graphs(self) -> list[tuple[str, str, CellGraph]]:
        """``(cell type, title, graph)`` per cell, for pictures (see :data:`CellGraph`)."""
        return [(kind, self.cell_titles[kind], self._graph(kind)) for kind in ("normal", "reduce")]

    def _graph(self, kind: str) -> CellGraph:
        entries, concat = getattr(self, kind), getattr(self, f"{kind}_concat")
        names = {0: "c_{k-2}", 1: "c_{k-1}"}
        n_steps = len(entries) // 2
        for step in range(n_steps):
            names[step + 2] = str(step)
        nodes = [(names[0], names[0], "input"), (names[1], names[1], "input")]
        nodes += [(names[s + 2], names[s + 2], "node") for s in range(n_steps)]
        nodes.append(("c_{k}", "c_{k}", "output"))
        edges = [(names[i], names[k // 2 + 2], op, "op") for k, (op, i) in enumerate(entries)]
        edges += [(names[i], "c_{k}", "", "concat") for i in concat]
        return nodes, edges

    @classmethod
    def parse(cls, text: str) -> "DartsGenotype":
        """Parse ``Genotype(normal=[...], normal_concat=[...], reduce=[...], reduce_concat=[...])``
        (``BroadGenotype(...)`` for :class:`BroadGenotype`)."""
        m = re.fullmatch(rf"\s*{cls.text_name}\s*\((.*)\)\s*", text, flags=re.S)
        if not m:
            raise GenotypeError(f"a DARTS genotype string must look like {cls.text_name}(normal=[...], "
                                "normal_concat=[...], reduce=[...], reduce_concat=[...])")
        try:
            call = ast.parse(f"f({m.group(1)})", mode="eval").body
            assert isinstance(call, ast.Call)
            fields: dict[str, Any] = {}
            for kw in call.keywords:
                node = kw.value
                # range(2, 6) is how the original code writes the concat lists
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "range":
                    fields[str(kw.arg)] = list(range(*[ast.literal_eval(a) for a in node.args]))
                else:
                    fields[str(kw.arg)] = ast.literal_eval(node)
        except (SyntaxError, ValueError, AssertionError) as e:
            raise GenotypeError(f"cannot parse DARTS genotype string: {e}") from None
        return cls.from_dict(fields)


def _check_darts_cell(cell: tuple[tuple[str, int], ...], field: str) -> None:
    if len(cell) == 0 or len(cell) % 2:
        raise GenotypeError(f"field {field!r} must hold two (op, input) pairs per node, got {len(cell)} entries")
    for k, (op, inp) in enumerate(cell):
        if op not in DARTS_CELL_OPS:
            valid = ", ".join(DARTS_CELL_OPS)
            raise GenotypeError(f"field {field!r} entry {k}: unknown op {op!r}; valid ops: {valid}")
        node = k // 2 + 2
        if not 0 <= inp < node:
            raise GenotypeError(f"field {field!r} entry {k}: input {inp} must be in 0..{node - 1} for node {node}")


@register_genotype_type
@dataclass(frozen=True)
class BroadGenotype(DartsGenotype):
    """A B-DARTS (broad space) result: DARTS cells, marked for the broad evaluation network
    (docs/methods.md, "B-DARTS"). ``normal`` is the convolution cell (the deep cells, and with stride 2
    the broad cell ending each convolution block), ``reduce`` the enhancement cell (stride 1):
    the naming of the official BNAS-v2 code. Prints and parses as ``BroadGenotype(...)``;
    JSON ``"space": "broad"``. Never equal to a :class:`DartsGenotype` with the same cells
    (it is another network)."""

    space = "broad"
    text_name = "BroadGenotype"
    cell_titles = {"normal": "convolution cell (normal)", "reduce": "enhancement cell (reduce)"}

    @classmethod
    def of(cls, genotype: DartsGenotype) -> "BroadGenotype":
        """The same cells, marked broad."""
        return cls(genotype.normal, genotype.normal_concat, genotype.reduce, genotype.reduce_concat)


NB201_EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
"""(source, target) of the 6 NB201 edges in canonical order."""


@register_genotype_type
@dataclass(frozen=True)
class NB201Genotype:
    """One op per NB201 edge, in the canonical order of :data:`NB201_EDGES`."""

    ops: tuple[str, ...]
    space = "nb201"

    def __post_init__(self) -> None:
        if len(self.ops) != len(NB201_EDGES):
            raise GenotypeError(f"an NB201 cell has 6 edges, got {len(self.ops)} ops")
        for k, op in enumerate(self.ops):
            if op not in NB201_PRIMITIVES:
                src, dst = NB201_EDGES[k]
                raise GenotypeError(f"edge {src}->{dst}: unknown op {op!r}; valid ops: {', '.join(NB201_PRIMITIVES)}")

    def arch_str(self) -> str:
        nodes = []
        for dst in (1, 2, 3):
            items = [f"{self.ops[k]}~{src}" for k, (src, d) in enumerate(NB201_EDGES) if d == dst]
            nodes.append("|" + "|".join(items) + "|")
        return "+".join(nodes)

    __str__ = arch_str

    @classmethod
    def from_arch_str(cls, text: str) -> "NB201Genotype":
        s = text.strip()
        segments = s.split("+")
        if len(segments) != 3:
            raise GenotypeError(f"NB201 arch string {text!r} must have 3 '+'-separated node segments, "
                                f"like |op~0|+|op~0|op~1|+|op~0|op~1|op~2|")
        ops: dict[tuple[int, int], str] = {}
        for dst, seg in enumerate(segments, start=1):
            if not (seg.startswith("|") and seg.endswith("|")):
                raise GenotypeError(f"node {dst} segment {seg!r} must start and end with '|'")
            items = seg[1:-1].split("|")
            if len(items) != dst:
                raise GenotypeError(f"node {dst} segment {seg!r} must list {dst} incoming edge(s), got {len(items)}")
            for item in items:
                op, _, src = item.partition("~")
                if not src.isdigit() or int(src) >= dst:
                    raise GenotypeError(f"node {dst}: edge {item!r} must be op~source with source < {dst}")
                ops[(int(src), dst)] = op
        if len(ops) != 6:
            raise GenotypeError(f"NB201 arch string {text!r} repeats a source node")
        return cls(tuple(ops[e] for e in NB201_EDGES))

    @classmethod
    def matches_text(cls, text: str) -> bool:
        return text.startswith("|")

    @classmethod
    def from_text(cls, text: str) -> "NB201Genotype":
        return cls.from_arch_str(text)

    def cell_ops(self) -> list[str]:
        """The op of each of the 6 edges."""
        return list(self.ops)

    def collapse_ops(self) -> Optional[list[str]]:
        return None  # one cell: every op counts

    def agreement(self, other: "NB201Genotype") -> tuple[int, int]:
        """The edges that carry the same op, of 6."""
        return sum(x == y for x, y in zip(self.ops, other.ops)), len(self.ops)

    def describe(self) -> list[str]:
        lines = ["cell (node 0 = input, output = node 3):"]
        for dst in (1, 2, 3):
            terms = [f"{op}(node {src})" for (src, d), op in zip(NB201_EDGES, self.ops) if d == dst and op != "none"]
            lines.append(f"  node {dst} = " + (" + ".join(terms) if terms else "0 (all inputs none)"))
        return lines

    def graphs(self) -> list[tuple[str, str, CellGraph]]:
        """The one cell as a graph, for pictures (see :data:`CellGraph`)."""
        label = {0: "in (0)", 1: "1", 2: "2", 3: "out (3)"}
        kinds = {0: "input", 1: "node", 2: "node", 3: "output"}
        nodes = [(str(i), label[i], kinds[i]) for i in range(4)]
        edges = [(str(s), str(d), op, "none" if op == "none" else "op") for (s, d), op in zip(NB201_EDGES, self.ops)]
        return [("cell", "NAS-Bench-201 cell", (nodes, edges))]

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space, "arch": self.arch_str()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NB201Genotype":
        if "arch" not in d or not isinstance(d["arch"], str):
            raise GenotypeError("NB201 genotype needs a string field 'arch' (the |op~0|+... arch string)")
        return cls.from_arch_str(d["arch"])


Genotype = Union[DartsGenotype, NB201Genotype]


def genotype_from_dict(d: Any) -> Genotype:
    if not isinstance(d, dict):
        raise GenotypeError(f"a genotype must be a JSON object, got {type(d).__name__}")
    space = d.get("space")
    if space is None:  # files written before the field: an NB201 arch string, else DARTS cells
        space = NB201Genotype.space if "arch" in d else DartsGenotype.space
    if space not in GENOTYPE_TYPES:
        raise GenotypeError(f"field 'space' is {space!r}; expected one of {', '.join(map(repr, GENOTYPE_TYPES))}")
    return GENOTYPE_TYPES[space].from_dict(d)


def parse_genotype(text: str) -> Genotype:
    """A genotype from a string: the text form of a registered genotype type (NB201 arch string,
    DARTS ``Genotype(...)``, broad ``BroadGenotype(...)``) or JSON."""
    s = text.strip()
    if s.startswith("{"):
        try:
            return genotype_from_dict(json.loads(s))
        except json.JSONDecodeError as e:
            raise GenotypeError(f"invalid genotype JSON: {e}") from None
    for cls in GENOTYPE_TYPES.values():
        if cls.matches_text(s):
            return cls.from_text(s)
    raise GenotypeError(f"cannot read {s[:60]!r} as a genotype: expected an NB201 arch string (|op~0|+...), "
                        "a DARTS Genotype(...) or BroadGenotype(...) string, JSON, a file, or a published name")


def looks_like_genotype_text(text: str) -> bool:
    """Whether ``text`` is meant as a genotype (JSON or a registered type's text form), not a name."""
    s = text.strip()
    return s.startswith("{") or any(cls.matches_text(s) for cls in GENOTYPE_TYPES.values())
