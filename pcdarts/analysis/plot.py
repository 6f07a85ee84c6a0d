"""Pictures: genotype cells as DAGs and architecture weights over epochs.

Cells are drawn with graphviz's ``dot`` binary when it is on ``PATH`` (the classic DARTS
look) and with matplotlib otherwise. matplotlib is imported lazily and only through its
object-oriented API with the Agg canvas, so plotting never changes the caller's pyplot
backend. Output files for ``path_prefix`` P:

* DARTS genotype: ``P_normal.<fmt>`` and ``P_reduce.<fmt>``;
* NB201 genotype: ``P_cell.<fmt>``.
"""
from __future__ import annotations

import hashlib
import math
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any, Sequence, Union

from pcdarts.errors import ConfigError, ExternalToolError, MissingDependencyError
from pcdarts.genotype import Genotype
from pcdarts.genotype.types import CellGraph

FORMATS = ("png", "svg")
_BACKENDS = ("auto", "dot", "matplotlib")
_OP_COLORS = {
    "none": "#bbbbbb", "skip_connect": "#7f7f7f", "max_pool_3x3": "#2ca02c", "avg_pool_3x3": "#17becf",
    "sep_conv_3x3": "#1f77b4", "sep_conv_5x5": "#9467bd", "dil_conv_3x3": "#ff7f0e", "dil_conv_5x5": "#d62728",
    "nor_conv_1x1": "#ff7f0e", "nor_conv_3x3": "#1f77b4",
}


def integer_ticks(axis: Any) -> None:
    """Whole-number ticks only on a matplotlib axis (``ax.xaxis``) that counts epochs or
    occurrences: two epochs read 1, 2, not 1.0, 1.2, ..., 2.0 (a single epoch: one tick)."""
    from matplotlib.ticker import MaxNLocator
    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _matplotlib() -> Any:
    """Import matplotlib lazily, with an actionable message when it is missing."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError('plotting needs matplotlib; install it with: '
                                     'pip install "pcdarts[plot]"') from None
    return Figure, FigureCanvasAgg


# A cell as a plain graph (the genotype type's ``graphs()``): nodes (id, label, kind) and edges
# (src, dst, label, style).
_Graph = CellGraph


def _dot_source(graph: _Graph, title: str) -> str:
    nodes, edges = graph
    fill = {"input": "darkseagreen2", "node": "lightblue", "output": "palegoldenrod"}
    lines = ["digraph cell {", '  rankdir=LR; fontname="helvetica"; labelloc=t;',
             f'  label="{title}";',
             '  node [style="rounded,filled", shape=rect, align=center, fontname="helvetica", fontsize=20, '
             'height=0.5, width=0.5, penwidth=2];',
             '  edge [fontname="helvetica", fontsize=16];']
    for nid, label, kind in nodes:
        lines.append(f'  "{nid}" [label="{label}", fillcolor={fill[kind]}];')
    inputs = " ".join(f'"{nid}";' for nid, _, kind in nodes if kind == "input")
    lines.append(f"  {{rank=same; {inputs}}}")
    for src, dst, label, style in edges:
        if style == "concat":
            lines.append(f'  "{src}" -> "{dst}" [color=gray];')
        elif style == "none":
            lines.append(f'  "{src}" -> "{dst}" [label="none", style=dotted, color=gray, fontcolor=gray];')
        else:
            color = _OP_COLORS.get(label, "black")
            lines.append(f'  "{src}" -> "{dst}" [label="{label}", color="{color}", fontcolor="{color}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _render_dot(graph: _Graph, title: str, out: Path, fmt: str, dot: str) -> None:
    result = subprocess.run([dot, f"-T{fmt}", "-o", str(out)], input=_dot_source(graph, title),
                            text=True, capture_output=True, timeout=60)
    if result.returncode != 0:
        raise ExternalToolError(f"graphviz dot failed ({result.returncode}): {result.stderr.strip()}")


Point = tuple[float, float]


def _layout(graph: _Graph) -> dict[str, Point]:
    """Positions: inputs on the left, intermediate nodes staggered left-to-right, output right."""
    nodes, _ = graph
    inputs = [n for n, _, k in nodes if k == "input"]
    inner = [n for n, _, k in nodes if k == "node"]
    pos: dict[str, Point] = {}
    for i, n in enumerate(inputs):
        pos[n] = (0.0, 0.0 if len(inputs) == 1 else 2.2 - 4.4 * i / (len(inputs) - 1))
    for i, n in enumerate(inner):
        # alternating heights keep most edges that skip a node from running through it
        pos[n] = (2.8 * (i + 1), 1.0 if i % 2 == 0 else -1.0)
    for n, _, k in nodes:
        if k == "output":
            pos[n] = (2.8 * (len(inner) + 1), 0.0)
    return pos


def _bezier(p0: Point, c: Point, p2: Point, t: float) -> Point:
    u = 1.0 - t
    return (u * u * p0[0] + 2 * u * t * c[0] + t * t * p2[0], u * u * p0[1] + 2 * u * t * c[1] + t * t * p2[1])


def _control(p0: Point, p2: Point, rad: float) -> Point:
    # same convention as matplotlib's arc3: chord midpoint offset by rad * (dy, -dx)
    return ((p0[0] + p2[0]) / 2 + rad * (p2[1] - p0[1]), (p0[1] + p2[1]) / 2 - rad * (p2[0] - p0[0]))


def _inside(pt: Point, centre: Point, half: Point, margin: float = 0.0) -> bool:
    return abs(pt[0] - centre[0]) <= half[0] + margin and abs(pt[1] - centre[1]) <= half[1] + margin


_TS = [i / 40 for i in range(41)]


def _route(src: str, dst: str, pos: dict[str, Point], half: dict[str, Point],
           drawn: list[list[Point]], used: set[float]) -> float:
    """Pick the arc curvature that avoids other nodes and already-drawn edges."""
    best, best_score = 0.0, math.inf
    for rad in (0.0, 0.12, -0.12, 0.24, -0.24, 0.36, -0.36, 0.5, -0.5):
        if rad in used:  # a parallel edge (same input twice) already took this curve
            continue
        c = _control(pos[src], pos[dst], rad)
        pts = [_bezier(pos[src], c, pos[dst], t) for t in _TS]
        score = 3.0 * abs(rad)
        for n, centre in pos.items():
            if n not in (src, dst) and any(_inside(q, centre, half[n], 0.15) for q in pts):
                score += 100.0
        for other in drawn:
            score += sum(0.5 for q in pts[4:-4] for o in other[4:-4] if math.dist(q, o) < 0.2)
        if score < best_score:
            best, best_score = rad, score
    return best


def _render_matplotlib(graph: _Graph, title: str, out: Path, fmt: str) -> None:
    Figure, FigureCanvasAgg = _matplotlib()
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    from matplotlib.path import Path as MplPath

    nodes, edges = graph
    pos = _layout(graph)
    labels = {n: (f"${lab}$" if "_{" in lab else lab) for n, lab, _ in nodes}
    # node boxes have a fixed size in data units so arrows can be clipped to them exactly
    half = {n: (0.32 + 0.09 * len(lab), 0.32) for n, lab, _ in nodes}
    xs = [p[0] for p in pos.values()]
    fig = Figure(figsize=(1.05 * (max(xs) - min(xs) + 3.0), 6.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    fill = {"input": "#c1ffc1", "node": "#add8e6", "output": "#eee8aa"}
    drawn: list[list[Point]] = []
    used: dict[tuple[str, str], set[float]] = {}
    placed: list[Point] = []
    for src, dst, label, style in edges:
        rad = _route(src, dst, pos, half, drawn, used.setdefault((src, dst), set()))
        used[(src, dst)].add(rad)
        p0, p2 = pos[src], pos[dst]
        c = _control(p0, p2, rad)
        pts = [_bezier(p0, c, p2, t) for t in _TS]
        drawn.append(pts)
        # visible part of the curve: from where it leaves the source box to where it enters
        # the target box; the sub-curve's control point is the blossom at (t0, t1)
        t0 = next(t for t, q in zip(_TS, pts) if not _inside(q, p0, half[src], 0.05))
        t1 = next(t for t, q in zip(reversed(_TS), reversed(pts)) if not _inside(q, p2, half[dst], 0.05))
        a, b = _bezier(p0, c, p2, t0), _bezier(p0, c, p2, t1)
        w0, w1, w2 = (1 - t0) * (1 - t1), (1 - t0) * t1 + t0 * (1 - t1), t0 * t1
        cc = (w0 * p0[0] + w1 * c[0] + w2 * p2[0], w0 * p0[1] + w1 * c[1] + w2 * p2[1])
        color = "#999999" if style in ("concat", "none") else _OP_COLORS.get(label, "black")
        path = MplPath([a, cc, b], [MplPath.MOVETO, MplPath.CURVE3, MplPath.CURVE3])
        ax.add_patch(FancyArrowPatch(path=path, arrowstyle="-|>", mutation_scale=14, lw=1.6, color=color,
                                     linestyle=":" if style == "none" else "-", zorder=1))
        if not label:
            continue
        # label on the visible part, at the spot farthest from labels placed so far
        spots = [_bezier(p0, c, p2, t0 + f * (t1 - t0)) for f in (0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8)]
        # labels are ~1 unit wide: keep them off node boxes, then away from other labels
        clear = [q for q in spots if not any(_inside(q, pos[n], (half[n][0] + 0.6, half[n][1] + 0.15))
                                             for n in pos)] or spots
        spot = max(clear, key=lambda q: min([math.dist(q, o) for o in placed] + [2.0])
                   - 0.05 * math.dist(q, spots[0]))
        placed.append(spot)
        ax.text(spot[0], spot[1], label, fontsize=8, color=color, ha="center", va="center", zorder=3,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    for nid, _, kind in nodes:
        (x, y), (hw, hh) = pos[nid], half[nid]
        ax.add_patch(FancyBboxPatch((x - hw, y - hh), 2 * hw, 2 * hh, boxstyle="round,pad=0,rounding_size=0.12",
                                    fc=fill[kind], ec="#333333", lw=1.5, zorder=4))
        ax.text(x, y, labels[nid], fontsize=11, ha="center", va="center", zorder=5)
    ax.set_xlim(min(xs) - 1.2, max(xs) + 1.2)
    ys = [q[1] for curve in drawn for q in curve] + [y for _, y in pos.values()]
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title)
    fig.savefig(str(out), format=fmt, bbox_inches="tight", dpi=150)


def plot_genotype(genotype: Genotype, path_prefix: Union[str, Path], formats: Sequence[str] = ("png",),
                  backend: str = "auto") -> list[Path]:
    """Draw the cells of a genotype as DAGs with op-labelled edges.

    Args:
        genotype: a DARTS genotype (normal and reduction cells) or an NB201 genotype.
        path_prefix: output prefix; ``_normal``/``_reduce`` (DARTS) or ``_cell`` (NB201)
            and the format extension are appended. Parent folders are created.
        formats: any of ``"png"``, ``"svg"``.
        backend: ``"auto"`` (``dot`` if on PATH, else matplotlib), ``"dot"`` or ``"matplotlib"``.

    Returns:
        The written files.
    """
    if isinstance(formats, str):
        formats = (formats,)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"formats={list(formats)} must be a non-empty list of {list(FORMATS)}")
    if backend not in _BACKENDS:
        raise ConfigError(f"backend={backend!r} must be one of {list(_BACKENDS)}")
    dot = shutil.which("dot")
    if backend == "dot" and dot is None:
        raise MissingDependencyError("backend='dot' needs the graphviz 'dot' binary on PATH; install graphviz "
                           "or use backend='matplotlib'")
    if not hasattr(genotype, "graphs"):
        raise TypeError(f"genotype must be a registered genotype type (DartsGenotype, NB201Genotype, ...), "
                        f"got {type(genotype).__name__}")
    cells = genotype.graphs()  # (cell type, title, graph) per cell: the genotype type draws its own cells
    prefix = Path(path_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for suffix, title, graph in cells:
        for fmt in formats:
            out = prefix.parent / f"{prefix.name}_{suffix}.{fmt}"
            if backend != "matplotlib" and dot is not None:
                try:
                    _render_dot(graph, title, out, fmt, dot)
                    written.append(out)
                    continue
                except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                    if backend == "dot":
                        raise
                    warnings.warn(f"{e}; falling back to matplotlib", RuntimeWarning, stacklevel=2)
            _render_matplotlib(graph, title, out, fmt)
            written.append(out)
    return written


def plot_arch_weights(history: list[dict], path: Union[str, Path]) -> Path:
    """Line plot of the architecture weights over epochs (1-based, whole-number ticks), one
    subplot per cell type.

    Each curve is one op's weight **averaged over the edges** of the cell type, so at
    every epoch the curves of a subplot sum to 1 when the records hold softmax weights.

    Args:
        history: records with ``"epoch"``, ``"arch_weights": {cell_type: [[O floats] x E]}``
            and ``"primitives": [O op names]``; records without ``arch_weights`` are skipped.
        path: output file; the format comes from its extension (png, svg, pdf, ...).
    """
    records = [r for r in history if isinstance(r, dict) and r.get("arch_weights")]
    if not records:
        raise ValueError("history has no record with an 'arch_weights' field; nothing to plot")
    primitives = records[-1].get("primitives")
    if not primitives:
        raise ValueError("history records need a 'primitives' field (the op names, in arch_weights order)")
    cell_types = list(records[-1]["arch_weights"])
    series: dict[str, dict[str, list[float]]] = {c: {op: [] for op in primitives} for c in cell_types}
    epochs: dict[str, list[int]] = {c: [] for c in cell_types}
    for k, rec in enumerate(records):
        if "epoch" not in rec:
            raise ValueError(f"history record {k} has 'arch_weights' but no 'epoch' field")
        for cell in cell_types:
            rows = rec["arch_weights"].get(cell)
            if rows is None:
                continue
            if any(len(row) != len(primitives) for row in rows):
                raise ValueError(f"history record {k} (epoch {rec['epoch']}): arch_weights[{cell!r}] rows "
                                 f"must have {len(primitives)} values, one per primitive")
            epochs[cell].append(int(rec["epoch"]) + 1)  # 1-based, as the search prints them
            for o, op in enumerate(primitives):
                series[cell][op].append(sum(row[o] for row in rows) / len(rows))
    Figure, FigureCanvasAgg = _matplotlib()
    fig = Figure(figsize=(7.0, 3.2 * len(cell_types)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(cell_types), 1, sharex=True, squeeze=False)[:, 0]
    for ax, cell in zip(axes, cell_types):
        for op in primitives:
            ax.plot(epochs[cell], series[cell][op], marker="." if len(epochs[cell]) < 30 else None,
                    label=op, color=_OP_COLORS.get(op))
        ax.set_title(f"{cell} cell")
        ax.set_ylabel("weight (mean over edges)")
        ax.grid(alpha=0.3)
        integer_ticks(ax.xaxis)
    axes[-1].set_xlabel("epoch")
    axes[0].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(out), bbox_inches="tight", dpi=120)
    return out


def default_prefix(source: str, genotype: Genotype) -> Path:
    """Where ``pcdarts plot`` draws when no ``--out`` is given: next to the genotype.

    A run directory's pictures go into it (``RUN/genotype_normal.png``, the names the
    search uses), a genotype file's beside it (``DIR/STEM_normal.png``); a published
    name draws as ``NAME_*`` and a pasted string as ``genotype-<hash>_*`` in the current
    folder, so that two different cells never overwrite each other's pictures.
    """
    p = Path(source)
    if p.is_dir():
        return p / "genotype"
    if p.is_file():
        return p.with_suffix("")
    if source.isidentifier():
        return Path(source)
    digest = hashlib.sha1(str(genotype).encode()).hexdigest()[:8]
    return Path(f"genotype-{digest}")
