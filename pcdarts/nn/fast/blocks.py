"""Per-source blocks of the fast supernet path: all ops of all edges leaving one node.

Every edge leaving node i reads the same input (the first C/K channels of x_i in the
``first+*`` channel modes), so the work of those edges is grouped by op:

* pooling and, in training, its BatchNorm (same input, same batch statistics) run once
  per node and are mixed into every outgoing edge (:func:`pool.pool_mix`);
* each conv op (``sep_conv``, ``dil_conv``, NB201's ``nor_conv``) of all outgoing edges
  is one :func:`conv.conv_chain` node: grouped depthwise convs (input replicated per
  edge, or a depthwise conv with channel multiplier, see :data:`DW_STRATEGY`), one
  block-structured 1x1 conv, one BatchNorm per BN layer, scaled by the mixing weights;
* the identity ``skip_connect`` is mixed in with one GEMM (:func:`kernels.mix_matrix`),
  ``FactorizedReduce`` (stride 2) is one chain on the two pixel grids.

A block returns the mixed outputs of all its outgoing edges as one ``[N*H*W, m*c]``
matrix (edge t in columns ``t*c:(t+1)*c``), i.e. ``sum_o a[e, o] * op_o(x)`` with
``a`` = op weight (times the edge weight, except in random mode). In the ``random``
channel mode every edge gathers its own channels (``idx``), which only changes how
inputs are gathered; pooling then runs per edge. Masked ops and ``none`` are not in the
plan, so they never run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pcdarts.nn.fast import kernels as fo
from pcdarts.nn.fast.conv import ChainSpec, ConvSpec, conv_chain
from pcdarts.nn.fast.pool import PoolSpec, pool_mix

# op name -> how the fast path computes it (``noise``, RobustDARTS's S4, reads nothing of its
# source: :func:`pcdarts.nn.fast.cells.run_cell` draws and mixes it, the blocks skip it)
DARTS_KINDS = {"max_pool_3x3": "pool", "avg_pool_3x3": "pool", "skip_connect": "skip",
               "sep_conv_3x3": "sep", "sep_conv_5x5": "sep", "dil_conv_3x3": "dil", "dil_conv_5x5": "dil",
               "noise": "noise"}
NB201_KINDS = {"skip_connect": "skip", "nor_conv_1x1": "conv", "nor_conv_3x3": "conv", "avg_pool_3x3": "pool"}

# depthwise form per (kernel, dilation) for a shared input: ``replicate`` (mkldnn's plain
# depthwise kernel on the input copied once per edge) or ``multiplier`` (one depthwise conv
# with channel multiplier n). Measured on CPU, channels_last, the whole step: ``replicate`` for
# every kernel of the spaces. The dilated kernels used ``multiplier`` until the input gradient
# of a stride-1 depthwise conv became a flipped forward conv and the stride-2 dilated ones an
# even-phase conv (conv.ConvSpec); since then ``multiplier`` is ~3% slower per step (2.47 vs
# 2.40 s, benchmarks/README.md). Kernels not listed use ``replicate``; the table is the knob
# for re-measuring (tests/nn/fast/test_cells.py runs the supernet with either form).
DW_STRATEGY: dict[tuple[int, int], str] = {}


def dw_strategy(conv: nn.Conv2d) -> str:
    return DW_STRATEGY.get((conv.kernel_size[0], conv.dilation[0]), "replicate")


@dataclass
class SourcePlan:
    """What the edges leaving one node compute.

    Attributes:
        stride: 1, or 2 for the inputs of a reduction cell.
        c: channels the ops see (C/K).
        out_edges: cell edge indices leaving the node (slot t = position in this list).
        targets: the node each out edge enters.
        groups: (kind, op index, slots having the op) for every op that is built.
        n_ops: number of primitives (the O of the [E, O] coefficients).
    """

    stride: int
    c: int
    out_edges: list[int]
    targets: list[int]
    groups: list[tuple[str, int, list[int]]]
    n_ops: int = 0
    _index: dict[Any, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    def index(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Long tensors used for gathering coefficients and channels, cached per device.

        ``flat{g}`` indexes the flattened [E, O] coefficient matrix at (edge, op) of every
        slot of group g; ``flatc{g}`` repeats each entry c times (one per channel).
        """
        key = str(device)
        if key not in self._index:
            d: dict[str, torch.Tensor] = {}
            for g, (kind, o, slots) in enumerate(self.groups):
                edges = [self.out_edges[t] for t in slots]
                d[f"slots{g}"] = torch.tensor(slots, dtype=torch.long, device=device)
                d[f"arange{g}"] = torch.arange(len(slots), device=device)
                flat = [e * self.n_ops + o for e in edges]
                d[f"flat{g}"] = torch.tensor(flat, dtype=torch.long, device=device)
                d[f"flatc{g}"] = torch.tensor([f for f in flat for _ in range(self.c)], dtype=torch.long,
                                              device=device)
            pools = self.of_kind("pool")  # the shared pooling block: row r = pooling kind r
            d["pool_rows"] = torch.tensor([r for r, g in enumerate(pools) for _ in self.groups[g][2]],
                                          dtype=torch.long, device=device)
            d["pool_cols"] = torch.tensor([t for g in pools for t in self.groups[g][2]], dtype=torch.long,
                                          device=device)
            d["pool_flat"] = torch.tensor([self.out_edges[t] * self.n_ops + self.groups[g][1]
                                           for g in pools for t in self.groups[g][2]], dtype=torch.long,
                                          device=device)
            self._index[key] = d
        return self._index[key]

    def of_kind(self, *kinds: str) -> list[int]:
        return [g for g, (kind, _, _) in enumerate(self.groups) if kind in kinds]


def source_plans(edge_list: list[tuple[int, int]], edges: nn.ModuleList, primitives: tuple[str, ...],
                 kinds: dict[str, str], n_sources: int, C: int, k: int,
                 active: Optional[Sequence[Sequence[bool]]] = None) -> list[SourcePlan]:
    """One plan per source node from the cell's (source, target) edge list and built ops
    (only the ``active`` ones of this step, when given)."""
    plans = []
    for i in range(n_sources):
        # plain loops, no comprehensions over enumerate: torch.compile traces this on a first call
        out_edges = []
        for e in range(len(edge_list)):
            if edge_list[e][0] == i:
                out_edges.append(e)
        groups = []
        for o in range(len(primitives)):
            name = primitives[o]
            slots = []
            for t in range(len(out_edges)):
                e = out_edges[t]
                if o in edges[e].active and (active is None or active[e][o]):
                    slots.append(t)
            if not slots:
                continue  # none (never built) and pruned ops
            if name not in kinds:
                raise NotImplementedError(
                    f"the fast supernet path has no kernel for the primitive {name!r} (it knows "
                    f"{', '.join(sorted(kinds))}); build the supernet with space.impl=reference")
            groups.append((kinds[name], o, slots))
        stride = edges[out_edges[0]].stride if out_edges else 1
        plans.append(SourcePlan(stride, C // k, out_edges, [edge_list[e][1] for e in out_edges], groups,
                                len(primitives)))
    return plans


def _ops(plan: SourcePlan, edges: nn.ModuleList, g: int) -> list[nn.Module]:
    _, o, slots = plan.groups[g]
    return [edges[plan.out_edges[t]].ops[str(o)] for t in slots]


def _edge_channels(idx: torch.Tensor, slots: torch.Tensor, c: int) -> torch.Tensor:
    """The channels picked by the edges at ``slots`` (random mode), concatenated."""
    return idx.view(-1, c).index_select(0, slots).reshape(-1)


def _mix(out: Optional[torch.Tensor], z: torch.Tensor, A: torch.Tensor, plan: SourcePlan,
         entries: list[tuple[int, int]], shared_rows: bool) -> torch.Tensor:
    """Add the op-group outputs ``z`` (blocks of c channels) weighted by ``A`` into ``out``.

    ``entries`` lists (group, row offset) pairs: group g's slots use rows starting at the
    offset, one row per slot, or the same row for all slots when ``shared_rows`` (one
    block feeding every outgoing edge, e.g. the identity).
    """
    rows, cols, coefs = [], [], []
    ix = plan.index(A.device)
    for g, r0 in entries:
        rows.append(torch.full_like(ix[f"slots{g}"], r0) if shared_rows else ix[f"arange{g}"] + r0)
        cols.append(ix[f"slots{g}"])
        coefs.append(A.reshape(-1).index_select(0, ix[f"flat{g}"]))
    n_rows = z.shape[1] // plan.c
    M = fo.mix_matrix(torch.cat(coefs), torch.cat(rows), torch.cat(cols), n_rows, len(plan.out_edges), plan.c)
    return fo.accumulate(out, z, M)


def _pools(plan: SourcePlan, edges: nn.ModuleList, x: torch.Tensor, A: torch.Tensor, idx: Optional[torch.Tensor],
           out: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    gs = plan.of_kind("pool")
    if not gs:
        return out
    mods = [_ops(plan, edges, g) for g in gs]
    bns = [[getattr(m, "bn", None) for m in ms] for ms in mods]
    has_bn = bns[0][0] is not None
    shared = idx is None and (not has_bn or bns[0][0].training)
    if shared:  # one pooled tensor (and one BN) per op, read by every outgoing edge
        ix = plan.index(A.device)
        vals = A.reshape(-1).index_select(0, ix["pool_flat"])
        S = vals.new_zeros(len(gs), len(plan.out_edges)).index_put((ix["pool_rows"], ix["pool_cols"]), vals)
        y = pool_mix(x, S, PoolSpec([ms[0].pool for ms in mods], bns if has_bn else None, plan.c))
        return fo.add_into(out, y)
    # one block per edge: each edge has its own channels (random) or running stats (eval)
    parts, entries, r = [], [], 0
    for g, ms in zip(gs, mods):
        ix = plan.index(A.device)
        if idx is not None:
            parts.append(fo.gather_channels(ms[0].pool(x), _edge_channels(idx, ix[f"slots{g}"], plan.c)))
        else:
            parts.append(fo.replicate(ms[0].pool(x), len(ms)))
        entries.append((g, r))
        r += len(ms)
    z = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
    if has_bn:
        z = fo.group_batch_norm(z, [b for group in bns for b in group])
    return _mix(out, z, A, plan, entries, shared_rows=False)


def _skip(plan: SourcePlan, edges: nn.ModuleList, x: torch.Tensor, A: torch.Tensor, idx: Optional[torch.Tensor],
          out: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    gs = plan.of_kind("skip")
    if not gs:
        return out
    g = gs[0]
    ix = plan.index(A.device)
    if plan.stride == 1:  # identity
        if idx is None:
            return _mix(out, x, A, plan, [(g, 0)], shared_rows=True)
        z = fo.gather_channels(x, _edge_channels(idx, ix[f"slots{g}"], plan.c))
        return _mix(out, z, A, plan, [(g, 0)], shared_rows=False)
    # FactorizedReduce of every edge: one conv on the two pixel grids (kernels.fr_weight)
    frs = _ops(plan, edges, g)
    n, c = len(frs), plan.c
    w = fo.fr_weight(frs)
    if idx is None:  # one chain node: grids of the shared ReLU input, conv, BN, mixing
        spec = ChainSpec("grids", n, c, [_spec(None, 1)], [], [[f.bn for f in frs]], recompute=True)
        return _chain(out, plan, g, x, A, None, spec, [w])
    else:  # per-edge inputs: reorder ([even], [odd]) x edges to edges x ([even], [odd]); grouped conv
        gr = fo.grids(fo.gather_channels(torch.relu(x), _edge_channels(idx, ix[f"slots{g}"], c)))
        N, _, H2, W2 = gr.shape
        pair = gr.permute(0, 2, 3, 1).reshape(N, H2, W2, 2, n, c).transpose(3, 4).reshape(N, H2, W2, 2 * n * c)
        y = F.conv2d(pair.permute(0, 3, 1, 2), w, groups=n)
    y = fo.group_batch_norm(y, [f.bn for f in frs])
    return _mix(out, y, A, plan, [(g, 0)], shared_rows=False)


def darts_block(plan: SourcePlan, edges: nn.ModuleList, x: torch.Tensor, A: torch.Tensor,
                idx: Optional[torch.Tensor], recompute: bool = True) -> Optional[torch.Tensor]:
    """Mixed outputs of every edge leaving one node of a DARTS cell, [N*H'*W', m*c].

    Args:
        x: the ops' input: the first c channels of the node (``first+*`` modes) or the
            whole node [N, C, H, W] (random mode), channels_last.
        A: [E, O] mixing coefficients (op weight, times the edge weight where it applies).
        idx: random mode: the c channels of each outgoing edge, concatenated in slot order.
        recompute: the conv chains keep only their input (see :class:`conv.ChainSpec`).
    """
    c = plan.c
    out = _pools(plan, edges, x, A, idx, None)
    out = _skip(plan, edges, x, A, idx, out)
    for g in plan.of_kind("sep", "dil"):
        seqs = [m.op for m in _ops(plan, edges, g)]
        n = len(seqs)
        dw, pw = [s[1] for s in seqs], [s[2].weight for s in seqs]
        if idx is not None:
            prep = "gather"
        else:
            prep = "replicate" if n == 1 or dw_strategy(dw[0]) == "replicate" else "shared"
        if prep == "shared":  # depthwise with channel multiplier n: output order (channel, edge)
            w1 = torch.stack([d.weight for d in dw], 1).flatten(0, 1)
            w2 = fo.multiplier_pointwise(pw)
            stage_a = [_spec(dw[0], c), _spec(None, 1)]
        else:
            w1 = torch.cat([d.weight for d in dw]) if n > 1 else dw[0].weight
            w2 = fo.block_diag_1x1(pw)
            stage_a = [_spec(dw[0], n * c), _spec(None, 1)]
        weights, stage_b, bns = [w1, w2], [], [[s[3] for s in seqs]]
        if plan.groups[g][0] == "sep":  # ReLU, depthwise, pointwise, BN again (stride 1)
            dw2 = [s[5] for s in seqs]
            weights += [torch.cat([d.weight for d in dw2]) if n > 1 else dw2[0].weight,
                        fo.block_diag_1x1([s[6].weight for s in seqs])]
            stage_b = [_spec(dw2[0], n * c), _spec(None, 1)]
            bns.append([s[7] for s in seqs])
        out = _chain(out, plan, g, x, A, idx, ChainSpec(prep, n, c, stage_a, stage_b, bns, recompute=recompute),
                     weights)
    return out


def _spec(conv: Optional[nn.Conv2d], groups: int) -> ConvSpec:
    if conv is None:  # 1x1, stride 1
        return ConvSpec((1, 1), (0, 0), (1, 1), groups)
    return ConvSpec(tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation), groups)


def _chain(out: Optional[torch.Tensor], plan: SourcePlan, g: int, x: torch.Tensor, A: torch.Tensor,
           idx: Optional[torch.Tensor], spec: ChainSpec, weights: list[torch.Tensor]) -> torch.Tensor:
    """Run one conv op group as a :func:`conv.conv_chain` node and add it into ``out``."""
    ix = plan.index(A.device)
    slots = plan.groups[g][2]
    c = plan.c
    if idx is not None:
        spec.idx = _edge_channels(idx, ix[f"slots{g}"], c)
    coef = A.reshape(-1).index_select(0, ix[f"flatc{g}"])  # a[edge, op] once per channel
    z = fo.mat(conv_chain(x, coef, spec, weights))
    m = len(plan.out_edges)
    # accumulate in place: ``out`` is a fresh sum nobody saved for backward (fewer big
    # temporaries also means less heap fragmentation on CPU)
    if len(slots) == m:  # every outgoing edge has the op: channels already in slot order
        return fo.add_into(out, z)
    if out is None:
        out = z.new_zeros(z.shape[0], m * c)
    cols = (ix[f"slots{g}"].unsqueeze(1) * c + torch.arange(c, device=z.device)).reshape(-1)
    if out.dtype != z.dtype:
        out = out.to(torch.promote_types(out.dtype, z.dtype))
    return fo.add_columns(out, z, cols)


def nb201_block(plan: SourcePlan, edges: nn.ModuleList, x: torch.Tensor, A: torch.Tensor,
                idx: Optional[torch.Tensor], recompute: bool = True) -> Optional[torch.Tensor]:
    """Mixed outputs of every edge leaving one node of an NB201 cell (see :func:`darts_block`).

    ``nor_conv_k`` is ReLU -> k x k conv -> BN: with a shared input the convs of all
    outgoing edges are one conv with stacked weights (output already in edge order).
    """
    c = plan.c
    out = _pools(plan, edges, x, A, idx, None)
    out = _skip(plan, edges, x, A, idx, out)
    for g in plan.of_kind("conv"):
        seqs = [m.op for m in _ops(plan, edges, g)]
        conv, n = seqs[0][1], len(seqs)
        w = torch.cat([s[1].weight for s in seqs]) if n > 1 else conv.weight
        # shared input: one dense conv with stacked weights; gathered inputs: grouped conv
        spec = ChainSpec("shared" if idx is None else "gather", n, c, [_spec(conv, 1 if idx is None else n)], [],
                         [[s[2] for s in seqs]], recompute=recompute)
        out = _chain(out, plan, g, x, A, idx, spec, [w])
    return out


__all__ = ["SourcePlan", "source_plans", "darts_block", "nb201_block", "DARTS_KINDS", "NB201_KINDS",
           "DW_STRATEGY", "dw_strategy"]
