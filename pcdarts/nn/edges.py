"""The Mixing record and the mixed edge with partial channels (docs/methods.md, "DARTS", "PC-DARTS").

:class:`MixedEdge` is the straightforward one-module-per-op implementation: the
**reference** that every faster path must reproduce. It never executes ``none``
(its contribution is exactly zero) nor masked ops (they are not even built).
No device logic here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pcdarts.nn.ops import FactorizedReduce, Identity, OpFactory

CHANNEL_MODES = ("first+shuffle", "first+shift", "random")


@dataclass
class Mixing:
    """What a method hands the supernet each step.

    Attributes:
        ops: cell type -> [E, O] op weights (already normalised, e.g. softmax(alpha)).
        edges: cell type -> [E] edge weights (PC-DARTS beta after the per-node softmax), or None.
        aux_skip: coefficient of the auxiliary skip connection added to every edge outside
            the op weights (DARTS-), or None. The supernet must have been built with
            ``aux_skip=True`` (identity on stride-1 edges, non-affine FactorizedReduce on
            stride-2 edges); the term is added after the edge weight.
        cells: optional per-cell op weights, cell index (position in ``supernet.cells``) ->
            [E, O]; they replace ``ops[cell type]`` for that cell.
        active: optional per cell type [E, O] booleans (a CPU tensor) of the ops to run this
            step (single-path and sampled steps); inactive ops are skipped like pruned ones.
    """

    ops: dict[str, torch.Tensor]
    edges: Optional[dict[str, torch.Tensor]] = None
    aux_skip: Optional[torch.Tensor | float] = None
    cells: Optional[dict[int, torch.Tensor]] = None
    active: Optional[dict[str, torch.Tensor]] = None

    def edge_weights(self, cell_type: str) -> Optional[torch.Tensor]:
        return None if self.edges is None else self.edges.get(cell_type)

    def weights_for(self, cell_type: str, index: int) -> torch.Tensor:
        """The [E, O] op weights of the cell at ``index`` (its own, else its type's)."""
        if self.cells is not None and index in self.cells:
            return self.cells[index]
        return self.ops[cell_type]

    def active_for(self, cell_type: str) -> Optional[list[list[bool]]]:
        """The active-op booleans of a cell type as nested lists (None = every built op)."""
        if self.active is None or cell_type not in self.active:
            return None
        return self.active[cell_type].tolist()


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel blocks: output channel p takes input (p % g) * (C/g) + p // g."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def shuffle_permutation(C: int, groups: int) -> torch.Tensor:
    """The input-channel index of each output channel of :func:`channel_shuffle`."""
    p = torch.arange(C)
    return (p % groups) * (C // groups) + p // groups


def bypass(x: torch.Tensor, stride: int) -> torch.Tensor:
    """The untouched channels of a partial-channel edge: 2x2 max-pool on stride-2 edges."""
    if stride == 1:
        return x
    return F.max_pool2d(x, 2, 2, ceil_mode=True)


def normalise_edges(beta: torch.Tensor, node_edges: Sequence[Sequence[int]]) -> torch.Tensor:
    """Softmax of the edge logits over the edges entering each node (PC-DARTS). [E] -> [E]."""
    flat = [e for group in node_edges for e in group]
    if flat == list(range(beta.shape[0])):  # both spaces: consecutive blocks, sliced without index tensors
        bounds = [0]
        for group in node_edges:
            bounds.append(bounds[-1] + len(group))
        return torch.cat([torch.softmax(beta[a:b], dim=0) for a, b in zip(bounds[:-1], bounds[1:])])
    out = torch.empty_like(beta)  # any other grouping (an index tensor per group: a host-to-device copy)
    for group in node_edges:
        idx = torch.as_tensor(list(group), device=beta.device)
        out = out.index_copy(0, idx, torch.softmax(beta.index_select(0, idx), dim=0))
    return out


class MixedEdge(nn.Module):
    """sum_o w_o * o(x) over the active ops, with optional partial channels (K > 1).

    Args:
        C: channels of the edge input and output.
        stride: 1, or 2 for edges leaving the inputs of a reduction cell.
        primitives: op names in canonical order (the O axis of the weights).
        factories: op name -> factory(C, stride, affine).
        k: partial-channel factor; ops see C/K channels, the rest bypass (K=1 is DARTS).
        channel_mode: ``first+shuffle`` | ``first+shift`` | ``random`` (docs/methods.md, "PC-DARTS").
        mask: per-op booleans; False ops are neither built nor run. ``none`` is never built.
        aux_skip: also build the auxiliary skip module ``aux`` (identity, or a non-affine
            FactorizedReduce on stride-2 edges) that ``aux_coef`` scales (DARTS-).
    """

    def __init__(self, C: int, stride: int, primitives: Sequence[str], factories: dict[str, OpFactory],
                 k: int = 1, channel_mode: str = "first+shuffle", mask: Optional[Sequence[bool]] = None,
                 aux_skip: bool = False) -> None:
        super().__init__()
        if C % k:
            raise ValueError(f"K={k} must divide the edge's channels C={C}")
        if channel_mode not in CHANNEL_MODES:
            raise ValueError(f"channel_mode must be one of {CHANNEL_MODES}, got {channel_mode!r}")
        self.C, self.stride, self.k, self.channel_mode = C, stride, k, channel_mode
        self.primitives = tuple(primitives)
        self.factories = factories  # plain callables (not modules): what widen() rebuilds ops with
        self.ops = nn.ModuleDict()
        mask = [True] * len(primitives) if mask is None else list(mask)
        for i, name in enumerate(primitives):
            if mask[i] and name != "none":
                self.ops[str(i)] = factories[name](C // k, stride, False)
        self.active = [int(i) for i in self.ops.keys()]
        self.aux: Optional[nn.Module] = None
        if aux_skip:  # stride 2: the space's own non-affine FactorizedReduce (its BN options), on all C channels
            reduce = factories.get("skip_connect")
            self.aux = Identity() if stride == 1 else (reduce(C, stride, False) if reduce is not None
                                                       else FactorizedReduce(C, C, affine=False))

    def prune(self, keep: Sequence[bool]) -> None:
        """Drop the ops whose ``keep`` entry is False (they are freed, never run again)."""
        for i in list(self.active):
            if not keep[i]:
                del self.ops[str(i)]
        self.active = [int(i) for i in self.ops.keys()]

    @torch.no_grad()
    def widen(self, k: int,
              generator: Optional[torch.Generator] = None) -> list[tuple[nn.Parameter, nn.Parameter, list]]:
        """Partial-channel factor K -> ``k`` (< K): every op is rebuilt on C/k channels and
        its old weights copied in, each new channel a copy of a random old one (the
        official net2wider rule, DrNAS; one index per channel count within an op, so a
        conv's duplicated outputs feed the matching inputs of the next layer and its BN).

        Returns (old parameter, new parameter, [(dim, index), ...]) for each parameter, so an
        optimiser's state can be widened the same way (:func:`widen_tensor`).
        """
        if k >= self.k or self.C % k:
            raise ValueError(f"widen: the new K={k} must be smaller than K={self.k} and divide C={self.C}")
        c_new = self.C // k
        moved = []
        for key in list(self.ops.keys()):
            old = self.ops[key]
            new = self.factories[self.primitives[int(key)]](c_new, self.stride, False)
            ref = next(iter(old.parameters()), None)
            if ref is None:
                ref = next(iter(old.buffers()), None)
            if ref is not None:
                new = new.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
            index: dict[tuple[int, int], torch.Tensor] = {}
            old_state = old.state_dict()
            old_params = dict(old.named_parameters())
            for name, t in new.state_dict().items():
                src = old_state[name]
                plan = []
                for d, (a, b) in enumerate(zip(src.shape, t.shape)):
                    if a != b:
                        if (a, b) not in index:
                            index[(a, b)] = torch.randint(0, a, (b - a,), generator=generator,
                                                          device=generator.device if generator else "cpu")
                        plan.append((d, index[(a, b)].to(src.device)))
                t.copy_(widen_tensor(src, plan))
                if name in old_params:
                    moved.append((old_params[name], dict(new.named_parameters())[name], plan))
            self.ops[key] = new
        self.k = k
        return moved

    def _mix(self, x: torch.Tensor, weights: torch.Tensor, active: Optional[Sequence[bool]] = None) -> torch.Tensor:
        out = None
        for i in self.active:
            if active is not None and not active[i]:
                continue
            y = weights[i] * self.ops[str(i)](x)
            out = y if out is None else out + y
        if out is None:  # every op pruned: the edge carries zeros
            out = x[:, :, :: self.stride, :: self.stride] * 0.0
        return out

    def forward(self, x: torch.Tensor, weights: torch.Tensor,
                edge_weight: Optional[torch.Tensor] = None, aux_coef: Optional[object] = None,
                active: Optional[Sequence[bool]] = None) -> torch.Tensor:
        """Args: x [N, C, H, W]; weights [O] op weights; edge_weight scalar or None;
        aux_coef: coefficient of the auxiliary skip (needs ``aux_skip=True``), or None;
        active: [O] booleans of the ops to run this step (None = every built op)."""
        k = self.k
        if k == 1:
            out = self._mix(x, weights, active)
        elif self.channel_mode == "random":
            # a fresh random subset of C/K channels per edge per step; processed channels
            # return to their own positions, the rest pass through untouched
            idx = torch.randperm(self.C, device=x.device)[: self.C // k]
            y = self._mix(x.index_select(1, idx), weights, active)
            out = bypass(x, self.stride).index_copy(1, idx, y)
        else:
            c = self.C // k
            y = self._mix(x[:, :c], weights, active)
            rest = bypass(x[:, c:], self.stride)
            if self.channel_mode == "first+shuffle":
                out = channel_shuffle(torch.cat([y, rest], dim=1), k)
            else:  # first+shift: the processed block moves to the end
                out = torch.cat([rest, y], dim=1)
        if edge_weight is not None:
            out = out * edge_weight
        if aux_coef is not None:
            out = out + aux_coef * self.aux_module()(x)
        return out

    def aux_module(self) -> nn.Module:
        if self.aux is None:
            raise ValueError("the mixing has an auxiliary skip but the supernet was built without one "
                             "(build it with aux_skip=True: the method's supernet_options)")
        return self.aux


def widen_tensor(t: torch.Tensor, plan: list) -> torch.Tensor:
    """``t`` with each ``(dim, index)`` of ``plan`` appending ``t.index_select(dim, index)``."""
    for d, idx in plan:
        t = torch.cat([t, t.index_select(d, idx)], dim=d)
    return t


def widen_edges(supernet: nn.Module, k: int, generator: Optional[torch.Generator] = None) -> list:
    """Widen every mixed edge of ``supernet`` to partial-channel factor ``k`` (see
    :meth:`MixedEdge.widen`); returns the (old, new, plan) triples of all of them."""
    moved = []
    for m in supernet.modules():
        if isinstance(m, MixedEdge):
            moved += m.widen(k, generator)
    return moved
