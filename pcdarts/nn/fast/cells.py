"""The fast path's cell runner: same modules and parameters as the reference, faster forward.

The spaces' fast supernets (``FastDartsSupernet`` in :mod:`pcdarts.spaces.darts`,
``FastNB201Supernet`` in :mod:`pcdarts.spaces.nb201`) subclass the reference
supernets and keep every module, so ``state_dict()`` keys and shapes are identical
(``fast.load_state_dict(ref.state_dict())`` just works), ``candidate_ops()`` yields the
real op modules and ``prune()`` is inherited. Only the cell forward differs; it computes
the mathematics of :class:`pcdarts.nn.edges.MixedEdge` (the oracle of ``tests/nn/fast/test_cells.py``):

* per node, not per edge (:mod:`pcdarts.nn.fast.blocks`): every edge leaving a node reads
  the same channels, so pooling (and its BN) runs once per node, the same op of all
  outgoing edges runs as one grouped call, and the weighted op sums of all outgoing
  edges are one GEMM; ``none`` and masked ops are not in the plan, so they never run;
* conv ops as single autograd nodes (:mod:`pcdarts.nn.fast.conv`, :mod:`pcdarts.nn.fast.pool`)
  that keep only their input and recompute the rest in backward (activation memory of
  a search step drops >10x against the reference), and skip the weight gradients in
  the architecture step;
* no per-edge cat + shuffle: every edge entering node j uses the same channel
  permutation, so ``x_j = P(cat[sum_e a_e y_e, sum_e b_e rest_e])`` is assembled once
  per node with one strided copy, and the 2x2 max-pool bypass of stride-2 edges runs
  once per node; a cell's output concatenation is never materialised (the next cells'
  preprocessing reads the node list);
* channels_last activations: mkldnn's depthwise, pooling and BN kernels are several
  times faster in that layout on CPU.

Channel modes: ``first+shuffle`` / ``first+shift`` as above; ``random`` draws the same
``torch.randperm(C)`` calls in the same order as the reference (all edges of a cell, in
edge order, before the cell runs), so equal seeds give equal results on both paths. The
``noise`` op (RobustDARTS's S4) is drawn the same way, after its edge's permutation, and
added into its edges' columns after the source's block (it reads nothing of the source).
``Mixing.aux_skip`` (DARTS-'s auxiliary skip) is added per edge outside the op and edge
weights, as on the reference path (``aux_coef`` of :func:`run_cell`; built with
``aux_skip=True``).
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn

from pcdarts.nn.fast import kernels as fo
from pcdarts.nn.edges import bypass
from pcdarts.nn.ops import draw_noise
from pcdarts.nn.fast.blocks import SourcePlan, source_plans


class FastOptions:
    """Switches of the fast path (attributes of the fast supernets).

    Attributes:
        recompute: conv chains keep only their input and rerun their convolutions in
            backward (the weight step needs most of them anyway: measured cost ~0 on CPU);
            False also keeps the input of their last BatchNorm (more memory).
        channels_last: run the network on channels_last tensors (keep True: every kernel
            choice of the fast path was measured in that layout).
    """

    recompute: bool = True
    channels_last: bool = True
    use_reference: bool = False

    @property
    def reference_passes(self) -> dict[str, int]:
        """The passes that ran on the reference path (``why`` -> entries of :meth:`reference`)."""
        if "_reference_passes" not in self.__dict__:
            self.__dict__["_reference_passes"] = {}
        return self.__dict__["_reference_passes"]

    @contextlib.contextmanager
    def reference(self, why: str = "a pass that needs the op modules") -> Iterator[None]:
        """``with supernet.reference(why):`` runs the reference forward (every op module is
        called, so forward hooks and parametrisations take effect) on the same parameters.

        Never silent: the first entry for each ``why`` prints one line, and every entry is
        counted in :attr:`reference_passes` (``why`` -> entries), which the Searcher records
        in the run manifest."""
        passes = self.reference_passes
        if why not in passes:
            print(f"note: {why} runs on the reference path (the fast path cannot serve it); recorded in "
                  f"the run manifest as reference_passes", file=sys.stderr, flush=True)
        passes[why] = passes.get(why, 0) + 1
        before, self.use_reference = self.use_reference, True
        try:
            yield
        finally:
            self.use_reference = before


def cell_plans(cell: nn.Module, edge_list: list[tuple[int, int]], primitives: tuple[str, ...],
                kinds: dict[str, str], n_sources: int, active: Optional[list[list[bool]]] = None) -> list[SourcePlan]:
    """Source plans of a cell, cached on the cell and rebuilt when its built ops, K or the
    step's active-op set change."""
    act = None if active is None else tuple(tuple(bool(v) for v in row) for row in active)
    sig = (tuple(tuple(e.active) for e in cell.edges), cell.edges[0].k, act)  # prune, widen, active ops
    cached = getattr(cell, "_fast_plans", None)
    if cached is None or cached[0] != sig:
        e0 = cell.edges[0]
        plans = source_plans(edge_list, cell.edges, primitives, kinds, n_sources, e0.C, e0.k, act)
        cell._fast_plans = (sig, plans)  # plain attribute: not a parameter, not in state_dict
    return cell._fast_plans[1]


def _coefficients(weights: torch.Tensor, edge_weights: Optional[torch.Tensor], per_edge: bool) -> torch.Tensor:
    """[E, O] mixing coefficients: op weight times edge weight, unless the edge weight is
    applied after the per-edge scatter (random mode)."""
    if edge_weights is None or per_edge:
        return weights
    return weights * edge_weights.unsqueeze(1)


def _assemble(proc: Optional[torch.Tensor], rest: Optional[torch.Tensor], mode: str, k: int,
              shape: tuple[int, int, int, int], like: torch.Tensor) -> torch.Tensor:
    """Node x_j from its processed part [N*H*W, c] and bypass part [N, C-c, H, W].

    ``first+shuffle``: the reference shuffles cat([y, rest]) with K groups on every edge;
    output channel q*K + g takes input g*c + q, so in NHWC memory the node is
    ``cat([proc[..., :, None], rest.view(..., K-1, c).transpose], -1)``: one strided copy
    per node instead of a cat and a shuffle per edge. ``first+shift``: cat([rest, y]).
    """
    N, C, H, W = shape
    c = C // k
    if proc is None:
        proc = like.new_zeros(N * H * W, c)  # every op of every entering edge is pruned
    if k == 1:
        return fo.unmat(proc, N, H, W)
    if mode == "first+shift":
        return torch.cat([rest, fo.unmat(proc, N, H, W)], 1)
    pr = proc.reshape(N, H, W, c, 1)
    rs = rest.permute(0, 2, 3, 1).reshape(N, H, W, k - 1, c).transpose(3, 4)
    return torch.cat([pr, rs], 4).reshape(N, H, W, C).permute(0, 3, 1, 2)


def _draws(cell: nn.Module, plans: list[SourcePlan], states: list[torch.Tensor], edge_list: list[tuple[int, int]],
           C: int, c: int, random: bool) -> tuple[Optional[list[torch.Tensor]], dict[int, torch.Tensor]]:
    """A cell's random draws in the reference's order: edge by edge, the channel permutation
    (``random`` mode) and then the sample of the edge's ``noise`` op (:class:`pcdarts.nn.ops.Noise`,
    its shape that of the op's input [N, c, H, W] at the edge's stride, from the op's generator).
    Returns (the permutations or None, edge -> noise sample in NCHW)."""
    noise_op: dict[int, int] = {}
    for plan in plans:
        noise_op.update(_noise_ops(plan))
    if not random and not noise_op:
        return None, {}
    x0 = states[0]
    s_in = plans[0].stride if plans else 1  # the intermediate nodes' resolution: the inputs' at their stride
    hw_nodes = ((x0.shape[2] + s_in - 1) // s_in, (x0.shape[3] + s_in - 1) // s_in)
    perms, noise = [], {}
    for e, (src, _) in enumerate(edge_list):
        if random:
            perms.append(torch.randperm(C, device=x0.device)[:c])
        if e in noise_op:
            op = cell.edges[e].ops[str(noise_op[e])]
            hw = tuple(states[src].shape[2:]) if src < len(states) else hw_nodes
            noise[e] = draw_noise(op.out_shape((x0.shape[0], c, *hw)), x0, op.generator)
    return (perms if random else None), noise


def _add_noise(y: Optional[torch.Tensor], plan: SourcePlan, noise: dict[int, torch.Tensor], A: torch.Tensor,
               rows: int) -> Optional[torch.Tensor]:
    """The block output ``y`` [rows, m*c] plus ``A[e, o] * noise[e]`` in the columns of every
    outgoing edge e that has the ``noise`` op o (the sample is independent of the source)."""
    ops = _noise_ops(plan)
    if not ops:
        return y
    like = next(iter(noise.values()))
    parts = [fo.mat(noise[e]) * A[e, ops[e]] if e in ops else like.new_zeros(rows, plan.c) for e in plan.out_edges]
    z = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
    return z if y is None else y + z


def _noise_ops(plan: SourcePlan) -> dict[int, int]:
    """Outgoing edge -> the index of its (active) ``noise`` op, for the edges that have one."""
    out = {}
    for g in plan.of_kind("noise"):
        _, o, slots = plan.groups[g]
        out.update({plan.out_edges[t]: o for t in slots})
    return out


def run_cell(cell: nn.Module, plans: list[SourcePlan], block: Any, states: list[torch.Tensor],
              node_edges: list[list[int]], edge_list: list[tuple[int, int]], weights: torch.Tensor,
              edge_weights: Optional[torch.Tensor], recompute: bool, aux_coef: Optional[object] = None
              ) -> list[torch.Tensor]:
    """Compute the intermediate nodes of a cell from its input nodes ``states``.

    Sources are processed in node order; node j is assembled as soon as every edge
    entering it has been computed, i.e. just before it becomes a source itself. With
    ``aux_coef`` every edge also adds ``aux_coef * edge.aux(source)`` to its target (the
    DARTS- auxiliary skip, outside the op and edge weights, as :class:`MixedEdge`).
    """
    e0 = cell.edges[0]
    C, k, mode = e0.C, e0.k, e0.channel_mode
    c = C // k
    random = mode == "random" and k > 1
    # the reference draws one randperm per edge (and the noise op's sample), in edge order, as
    # the cell runs; drawing them all up front in that order consumes the generators identically
    perms, noise = _draws(cell, plans, states, edge_list, C, c, random)
    A = _coefficients(weights, edge_weights, random)
    n_in = len(states)
    n_nodes = n_in + len(node_edges)
    proc: dict[int, Optional[torch.Tensor]] = {j: None for j in range(n_in, n_nodes)}
    rest: dict[int, Optional[torch.Tensor]] = {j: None for j in range(n_in, n_nodes)}
    shapes: dict[int, tuple[int, int, int, int]] = {}
    aux: dict[int, Optional[torch.Tensor]] = {j: None for j in range(n_in, n_nodes)}

    def add(d: dict[int, Optional[torch.Tensor]], j: int, t: torch.Tensor,
            scale: Optional[torch.Tensor] = None) -> None:
        """d[j] += t * scale (one fused op per term)."""
        if d[j] is None:
            d[j] = t if scale is None else t * scale
        else:
            d[j] = d[j] + t if scale is None else torch.addcmul(d[j], t, scale)

    for i in range(n_nodes):
        if i >= n_in:
            node = rest[i] if random else _assemble(proc[i], rest[i], mode, k, shapes[i], states[0])
            states.append(node if aux[i] is None else node + aux[i])
            proc[i] = rest[i] = aux[i] = None  # free
        if aux_coef is not None:
            for e, (src, j) in enumerate(edge_list):
                if src == i:
                    add(aux, j, cell.edges[e].aux_module()(states[i]) * aux_coef)
        if i >= len(plans):
            continue
        plan = plans[i]
        x = states[i]
        if not plan.out_edges:
            continue
        idx = torch.cat([perms[e] for e in plan.out_edges]) if random else None
        # split each node once: slicing it per consumer would make autograd build a
        # zero-filled (NCHW) gradient per slice; split's backward is one cat. The head (the
        # channels every op reads) is made contiguous: elementwise kernels on a strided
        # channel slice run ~10x slower on CPU (ReLU masks, mostly), and in the weight step
        # the node's other channels then need not stay alive for backward
        head, tail = (x, None) if random or k == 1 else torch.split(x, [c, C - c], 1)
        if head is not x:
            head = head.contiguous(memory_format=fo.CL)
        y = block(plan, cell.edges, x if random else head, A, idx, recompute)
        byp = None
        N = x.shape[0]
        H = (x.shape[2] + plan.stride - 1) // plan.stride
        W = (x.shape[3] + plan.stride - 1) // plan.stride
        y = _add_noise(y, plan, noise, A, N * H * W)
        ys_all = [None] * len(plan.out_edges) if y is None else y.split(c, 1)
        for t, (e, j) in enumerate(zip(plan.out_edges, plan.targets)):
            shapes[j] = (N, C, H, W)
            ys = ys_all[t]
            ew = None if edge_weights is None else edge_weights[e]
            if random:  # per edge, as the reference: processed channels back to their places
                if byp is None:
                    byp = bypass(x, plan.stride)
                ye = fo.unmat(ys, N, H, W) if ys is not None else byp.new_zeros(N, c, H, W)
                add(rest, j, byp.index_copy(1, perms[e], ye), ew)
                continue
            if ys is not None:
                add(proc, j, ys)
            if k > 1:
                if byp is None:
                    byp = bypass(tail, plan.stride)  # once per node, not per edge
                add(rest, j, byp, ew)
    return states


__all__ = ["FastOptions", "cell_plans", "run_cell"]
