"""One autograd node for a convolution op of all edges leaving a node (fast path).

The chain ``ReLU -> conv [-> 1x1] -> BN [-> ReLU -> dw -> 1x1 -> BN] -> * a`` of ``n``
edges (``sep_conv``, ``dil_conv``, NB201's ``nor_conv``, and FactorizedReduce) runs as
grouped calls inside one :class:`torch.autograd.Function` whose backward is written out
with the same ATen kernels autograd would call. That buys what generic autograd cannot:

* memory: the node keeps only its input (which is alive anyway: it is a slice of a
  cell node) and the BN statistics, instead of six to eight activations per op; in
  backward it reruns its convolutions. The weight step needs the depthwise outputs and
  the ReLU outputs for the weight gradients anyway, so on CPU the rerun costs nothing
  measurable (``recompute=False`` also keeps the last BN input);
* compute: the backward asks the autograd engine which inputs it will actually use: in
  the architecture step (``autograd.grad`` w.r.t. the mixing weights) no weight
  gradient is computed, in the weight step no mixing-weight gradient;
* the cell's preprocessing (:func:`preprocess`) reads the previous cell's node list, so
  the 4C-channel cell output is never concatenated nor kept, and it keeps only its own
  output (with affine=False BN the gradient follows from the normalised output).

Gradients equal autograd's up to floating-point summation order; ``tests/nn/fast/test_cells.py``
checks them against the reference mixed edge. Under autocast (CUDA bf16) the inputs are
cast up front and the node runs with autocast off, since its backward calls kernels
directly.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch.autograd.function import once_differentiable
import torch.nn as nn
import torch.nn.functional as F

from pcdarts.nn.fast import kernels as fo

aten = torch.ops.aten

# the CPU kernel rewrites of ConvSpec, each switchable for benchmarks and ablations: both
# compute the same sums as the plain ATen call they replace
REWRITES = {"even_phase": True, "flipped_forward": True}


@dataclass(frozen=True)
class ConvSpec:
    """Hyper-parameters of one convolution of the chain, and how the CPU computes it.

    Two exact rewrites replace kernels that are slow on the CPU (mkldnn, channels_last;
    measured in ``benchmarks/README.md``, "What the fast path does"); both compute the same sums:

    * **even phase** (``stride == dilation > 1``, padding a multiple of it, even input):
      every tap reads a pixel of the input's phase (0, 0), so the conv *is* an undilated
      stride-1 conv of ``x[:, :, ::s, ::s]`` with padding ``p / s``. The input gradient
      is that conv's, scattered back into the phase (zeros elsewhere). In the reduction
      cells' ``dil_conv`` (stride 2, dilation 2) this turns 4-16 ms of mkldnn's dilated
      stride-2 backward into 0.2-0.5 ms.
    * **flipped forward** (stride 1, one input channel per group): the input gradient of
      a depthwise conv is the forward depthwise conv of the output gradient with the
      kernel flipped, padding ``d (k - 1) - p``; mkldnn's forward depthwise kernel is
      2-20x faster than its backward-data kernel (dilated and 5x5 kernels most).
    """

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def __call__(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self._even_phase(x.shape, x.device):
            s = self.stride
            return F.conv2d(_phase(x, s), w, None, 1, self._phase_padding(), 1, self.groups)
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    def _even_phase(self, x_shape: Sequence[int], device: torch.device) -> bool:
        s, d, p = self.stride, self.dilation, self.padding
        return (REWRITES["even_phase"] and device.type == "cpu" and s == d and s[0] > 1 and s[1] > 1
                and p[0] % s[0] == 0 and p[1] % s[1] == 0 and x_shape[2] % s[0] == 0 and x_shape[3] % s[1] == 0)

    def _phase_padding(self) -> tuple[int, int]:
        return (self.padding[0] // self.stride[0], self.padding[1] // self.stride[1])

    def backward(self, g: torch.Tensor, x: Optional[torch.Tensor], x_shape: torch.Size, w: torch.Tensor,
                 need_in: bool, need_w: bool) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        if not (need_in or need_w):
            return None, None
        if self._even_phase(x_shape, g.device):
            return self._phase_backward(g, x, x_shape, w, need_in, need_w)
        gi = self._flipped_forward(g, w) if need_in and self._flip_input_grad(w, g) else None
        need_in = need_in and gi is None
        if not (need_in or need_w):
            return gi, None
        if x is None:  # only its shape and layout are read when the weight gradient is not wanted
            x = torch.empty(x_shape, dtype=g.dtype, device=g.device, memory_format=fo.CL)
        gi_aten, gw = self._backward(g, x, w, need_in, need_w)
        return (gi if gi is not None else gi_aten), gw

    def _flip_input_grad(self, w: torch.Tensor, g: torch.Tensor) -> bool:
        """The input gradient as a forward conv: stride 1, depthwise (one input channel per
        group, as many outputs), a kernel larger than 1x1, on the CPU."""
        k, d, p = w.shape[2:], self.dilation, self.padding
        return (REWRITES["flipped_forward"] and g.device.type == "cpu" and self.stride == (1, 1) and w.shape[1] == 1
                and w.shape[0] == self.groups
                and (k[0] > 1 or k[1] > 1) and d[0] * (k[0] - 1) >= p[0] and d[1] * (k[1] - 1) >= p[1])

    def _flipped_forward(self, g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        k, d, p = w.shape[2:], self.dilation, self.padding
        pad = (d[0] * (k[0] - 1) - p[0], d[1] * (k[1] - 1) - p[1])
        return F.conv2d(g, w.flip(2, 3), None, 1, pad, d, self.groups)

    def _phase_backward(self, g: torch.Tensor, x: Optional[torch.Tensor], x_shape: torch.Size, w: torch.Tensor,
                        need_in: bool, need_w: bool) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        s = self.stride
        if x is None:
            N, C, H, W = x_shape
            xs = torch.empty((N, C, H // s[0], W // s[1]), dtype=g.dtype, device=g.device, memory_format=fo.CL)
        else:
            xs = _phase(x, s)
        sub = ConvSpec((1, 1), self._phase_padding(), (1, 1), self.groups)
        gs, gw = sub.backward(g, xs, xs.shape, w, need_in, need_w)
        gi = None
        if gs is not None:
            gi = torch.empty(x_shape, dtype=gs.dtype, device=gs.device, memory_format=fo.CL).zero_()
            gi[:, :, ::s[0], ::s[1]] = gs
        return gi, gw

    def _backward(self, g: torch.Tensor, x: torch.Tensor, w: torch.Tensor, need_in: bool,
                  need_w: bool) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """ATen's convolution backward of this conv."""
        if need_w and g.dtype == torch.bfloat16 and g.device.type == "cpu" and max(self.dilation) > 1:
            # the CPU's bf16 weight gradient of a dilated channels_last conv has NaNs at some shapes
            # (torch 2.13, e.g. depthwise [16, 2, 32, 32]; tests/nn/fast/test_cells.py): that one in float32
            gi = self._backward(g, x, w, True, False)[0] if need_in else None
            return gi, self._backward(g.float(), x.float(), w.float(), False, True)[1].to(w.dtype)
        gi, gw, _ = aten.convolution_backward(g, x, w, None, list(self.stride), list(self.padding),
                                              list(self.dilation), False, [0, 0], self.groups,
                                              [need_in, need_w, False])
        return gi, gw


def _phase(x: torch.Tensor, s: tuple[int, int]) -> torch.Tensor:
    """The pixels (0, 0) of every s x s block, [N, C, H/s, W/s], channels_last."""
    return x[:, :, ::s[0], ::s[1]].contiguous(memory_format=fo.CL)


class _Preprocess(torch.autograd.Function):
    """``BN(conv1x1(ReLU(cat(nodes))))`` (or on the :func:`kernels.grids` of it).

    The input is the previous cell's node list: the concatenated cell output is never
    kept. Only the output (the next cell's input node, alive anyway) is saved: with
    affine=False it is the normalised input, from which the BN gradient follows directly.
    """

    @staticmethod
    def forward(ctx: Any, bn_grids: tuple[nn.BatchNorm2d, bool], w: torch.Tensor,  # type: ignore[override]
                *nodes: torch.Tensor) -> torch.Tensor:
        bn, use_grids = bn_grids
        h = _cat_relu(nodes, use_grids)
        ctx.h_shape = h.shape
        y, st = _bn_forward(F.conv2d(h, w), [bn])
        ctx.st, ctx.use_grids = st, use_grids
        ctx.save_for_backward(w, y, *nodes)
        return y

    @staticmethod
    @once_differentiable  # backward is hand-written: a second derivative must raise, not be wrong
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:  # type: ignore[override]
        w, y, *nodes = ctx.saved_tensors
        train, invstd = ctx.st[0], ctx.st[2]
        iv = invstd.view(1, -1, 1, 1).to(gy.dtype)
        if train:  # BN backward from the normalised output y: iv * (g - E[g] - y * E[g * y])
            gp = (gy - gy.mean((0, 2, 3), keepdim=True) - y * (gy * y).mean((0, 2, 3), keepdim=True)) * iv
        else:
            gp = gy * iv
        need_w = ctx.needs_input_grad[1]
        need_x = any(ctx.needs_input_grad[2:])
        h = _cat_relu(nodes, ctx.use_grids) if need_w else None
        conv = ConvSpec((1, 1), (0, 0), (1, 1), 1)
        gh, gw = conv.backward(gp, h, ctx.h_shape, w, need_x, need_w)
        gxs: list[Optional[torch.Tensor]] = [None] * len(nodes)
        if need_x:
            if ctx.use_grids:
                gh = fo.grids_backward(gh, (gh.shape[0], sum(n.shape[1] for n in nodes), *nodes[0].shape[2:]))
            gxs = [aten.threshold_backward(g, n, 0) for g, n in zip(gh.split([n.shape[1] for n in nodes], 1), nodes)]
        return (None, gw, *gxs)


def _cat_relu(nodes: Sequence[torch.Tensor], use_grids: bool) -> torch.Tensor:
    h = torch.cat(list(nodes), 1).relu_() if len(nodes) > 1 else torch.relu(nodes[0])
    return fo.grids(h) if use_grids else h


def preprocess(module: nn.Module, nodes: Sequence[torch.Tensor]) -> torch.Tensor:
    """A cell's input preprocessing (``ReLUConvBN`` 1x1 or ``FactorizedReduce``) of the
    concatenation of ``nodes`` (the previous cell's intermediate nodes, or the stem)."""
    if hasattr(module, "conv_1"):  # FactorizedReduce: grids + one conv (kernels.fr_weight)
        bn, use_grids, w = module.bn, True, fo.fr_weight([module])
    else:
        conv, bn = module.op[1], module.op[2]
        assert conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1 and not bn.affine
        use_grids, w = False, conv.weight
    dt = fo.autocast_dtype(nodes[0])
    if dt is None:
        return _Preprocess.apply((bn, use_grids), w, *nodes)
    w, *nodes = fo.cast_floats([w, *nodes], dt)
    with torch.autocast(nodes[0].device.type, enabled=False):
        return _Preprocess.apply((bn, use_grids), w, *nodes)


@dataclass
class ChainSpec:
    """Static description of one chain (see :func:`conv_chain`).

    Attributes:
        prep: ``shared`` (input = the c channels all edges read), ``replicate`` (those,
            copied once per edge), ``gather`` (each edge's channels ``idx`` of the node) or
            ``grids`` (the two pixel grids of FactorizedReduce, :func:`kernels.grids`).
        n: number of edges; c: channels per edge.
        stage_a: convs before the first BN; stage_b: convs after ReLU(BN) (sep_conv only).
        bns: BatchNorm modules per BN (one list per BN, one module per edge).
        idx: gather index (``gather`` only).
        recompute: keep only the input and rerun every conv in backward (least memory);
            otherwise the last BN input is kept as well.
    """

    prep: str
    n: int
    c: int
    stage_a: list[ConvSpec]
    stage_b: list[ConvSpec]
    bns: list[list[nn.BatchNorm2d]]
    idx: Optional[torch.Tensor] = None
    recompute: bool = False


# ---------------------------------------------------------------- BatchNorm pieces

def _bn_forward(p: torch.Tensor, bns: Sequence[nn.BatchNorm2d]) -> tuple[torch.Tensor, tuple[Any, ...]]:
    """BN(affine=False) of the grouped modules: output and what backward needs.

    Running statistics are updated like :func:`kernels.group_batch_norm`
    (:func:`kernels.train_running_stats`).
    """
    bn0 = bns[0]
    eps = bn0.eps
    track = bn0.running_mean is not None
    if bn0.training or not track:
        if track:
            y, mean, invstd = fo.train_running_stats(
                bns, lambda rm, rv, f: aten.native_batch_norm(p, None, None, rm, rv, True, f, eps))
        else:
            y, mean, invstd = aten.native_batch_norm(p, None, None, None, None, True, 0.0, eps)
        return y, (True, mean, invstd, None, None, eps)
    rm = torch.cat([b.running_mean for b in bns])
    rv = torch.cat([b.running_var for b in bns])
    y = aten.native_batch_norm(p, None, None, rm, rv, False, 0.0, eps)[0]
    return y, (False, rm, torch.rsqrt(rv + eps), rm, rv, eps)


def _bn_apply(p: torch.Tensor, st: tuple[Any, ...]) -> torch.Tensor:
    """Recompute the BN output from its input and the saved statistics (one new tensor)."""
    _, mean, invstd = st[:3]
    return torch.sub(p, mean.view(1, -1, 1, 1).to(p.dtype)).mul_(invstd.view(1, -1, 1, 1).to(p.dtype))


def _bn_backward(g: torch.Tensor, p: torch.Tensor, st: tuple[Any, ...]) -> torch.Tensor:
    train, mean, invstd, rm, rv, eps = st
    if train:
        return aten.native_batch_norm_backward(g, p, None, None, None, mean, invstd, True, eps,
                                               [True, False, False])[0]
    return aten.native_batch_norm_backward(g, p, None, rm, rv, None, None, False, eps, [True, False, False])[0]


# ---------------------------------------------------------------- the chain

def _prep(x: torch.Tensor, spec: ChainSpec) -> torch.Tensor:
    """ReLU of the op input, arranged the way the first conv reads it (copy first, then an
    in-place ReLU: one allocation)."""
    if spec.prep == "gather":
        return fo.gather_channels(x, spec.idx).relu_()
    if spec.prep == "grids":
        return fo.grids(torch.relu(x))
    if spec.prep == "replicate" and spec.n > 1:
        return fo.replicate(x, spec.n).relu_()
    return torch.relu(x)


def _prep_backward(gh: torch.Tensor, x: torch.Tensor, spec: ChainSpec) -> torch.Tensor:
    if spec.prep == "replicate" and spec.n > 1:  # the n copies' gradients add up
        N, _, H, W = gh.shape
        gh = gh.permute(0, 2, 3, 1).reshape(N, H, W, spec.n, spec.c).sum(3).permute(0, 3, 1, 2)
    elif spec.prep == "grids":
        gh = fo.grids_backward(gh, x.shape)
    elif spec.prep == "gather":
        gx = torch.zeros_like(x, memory_format=fo.CL)
        gx.permute(0, 2, 3, 1).index_add_(3, spec.idx, gh.permute(0, 2, 3, 1))
        gh = gx
    return aten.threshold_backward(gh, x, 0)  # ReLU: pass where the input was positive


def _stage_forward(a: torch.Tensor, convs: list[ConvSpec], ws: Sequence[torch.Tensor]
                   ) -> tuple[torch.Tensor, list[torch.Size]]:
    shapes = []
    for conv, w in zip(convs, ws):
        shapes.append(a.shape)
        a = conv(a, w)
    return a, shapes


def _stage_backward(g: torch.Tensor, inp: Optional[torch.Tensor], shapes: list[torch.Size],
                    convs: list[ConvSpec], ws: Sequence[torch.Tensor], need_in: bool, need_w: Sequence[bool],
                    mid: Optional[torch.Tensor] = None) -> tuple[Optional[torch.Tensor], list[Optional[torch.Tensor]]]:
    """Backward of a chain of 1 or 2 convs; the intermediate activation (``mid``, if not
    given) is recomputed only when a weight gradient needs it."""
    acts: list[Optional[torch.Tensor]] = [inp]
    if len(convs) == 2:
        acts.append(mid if mid is not None else (convs[0](inp, ws[0]) if need_w[1] else None))
    gws: list[Optional[torch.Tensor]] = [None] * len(convs)
    for i in reversed(range(len(convs))):
        gi, gws[i] = convs[i].backward(g, acts[i], shapes[i], ws[i], need_in or i > 0, need_w[i])
        g = gi
    return g, gws


class _ConvChain(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coef: torch.Tensor, spec_nodes: tuple[ChainSpec, Any],  # type: ignore[override]
                *ws: torch.Tensor) -> torch.Tensor:
        spec, ctx.nodes = spec_nodes
        na = len(spec.stage_a)
        wa, wb = ws[:na], ws[na:]
        p1, shapes_a = _stage_forward(_prep(x, spec), spec.stage_a, wa)
        y, st1 = _bn_forward(p1, spec.bns[0])
        st2, shapes_b = None, []
        if spec.stage_b:
            # keep only the last BN input: the first (p1) is recomputed in backward from x
            # (a depthwise and a 1x1 conv, of which the weight step needs the first anyway)
            del p1
            p2, shapes_b = _stage_forward(y.relu_(), spec.stage_b, wb)
            y, st2 = _bn_forward(p2, spec.bns[1])
            saved = [x, coef, *ws] + ([] if spec.recompute else [p2])
        else:
            saved = [x, coef, *ws] + ([] if spec.recompute else [p1])
        ctx.save_for_backward(*saved)
        ctx.spec, ctx.st, ctx.shapes = spec, (st1, st2), (shapes_a, shapes_b)
        return y if coef is None else y.mul_(coef.view(1, -1, 1, 1))

    @staticmethod
    @once_differentiable  # backward is hand-written: a second derivative must raise, not be wrong
    def backward(ctx: Any, gz: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:  # type: ignore[override]
        spec: ChainSpec = ctx.spec
        st1, st2 = ctx.st
        shapes_a, shapes_b = ctx.shapes
        na, nb = len(spec.stage_a), len(spec.stage_b)
        saved = ctx.saved_tensors
        x, coef = saved[0], saved[1]
        wa, wb = saved[2:2 + na], saved[2 + na:2 + na + nb]
        needs = _needed(ctx)
        need_x, need_coef = needs[0], needs[1]
        need_wa, need_wb = needs[3:3 + na], needs[3 + na:3 + na + nb]
        h = mid = mid_b = p1 = p2 = None
        if spec.recompute:  # nothing but x was kept: rerun the convs (the weight step needs most anyway)
            h = _prep(x, spec)
            if na == 2:
                mid = spec.stage_a[0](h, wa[0])
                p1 = spec.stage_a[1](mid, wa[1])
            else:
                p1 = spec.stage_a[0](h, wa[0])
            if nb:
                mid_b = spec.stage_b[0](_bn_apply(p1, st1).relu_(), wb[0])
                p2 = spec.stage_b[1](mid_b, wb[1])
        elif nb:
            p2 = saved[2 + na + nb]
        else:
            p1 = saved[2 + na + nb]
        p_last, st_last = (p2, st2) if nb else (p1, st1)
        g_coef = None
        if need_coef and coef is not None:  # d/d a_t = <gz, y_t>: the last BN output, recomputed
            g_coef = (gz * _bn_apply(p_last, st_last)).sum((0, 2, 3))
        g = _bn_backward(gz if coef is None else gz * coef.view(1, -1, 1, 1), p_last, st_last)
        p_last = p2 = None
        g_wb: list[Optional[torch.Tensor]] = []
        if nb:
            if p1 is None:
                h = _prep(x, spec)
                mid = spec.stage_a[0](h, wa[0])
                p1 = spec.stage_a[1](mid, wa[1])
            r = _bn_apply(p1, st1).relu_()
            g, g_wb = _stage_backward(g, r if any(need_wb) else None, shapes_b, spec.stage_b, wb, True, need_wb,
                                      mid_b)
            g = _bn_backward(aten.threshold_backward(g, r, 0), p1, st1)
            del p1, r, mid_b
        elif any(need_wa) and h is None:
            h = _prep(x, spec)
        g, g_wa = _stage_backward(g, h if any(need_wa) else None, shapes_a, spec.stage_a, wa, need_x, need_wa, mid)
        g_x = _prep_backward(g, x, spec) if need_x else None
        return (g_x, g_coef, None, *g_wa, *g_wb)


def _grad_node(t: torch.Tensor) -> Any:
    """The autograd node a gradient for ``t`` flows into (its grad_fn, or a leaf's AccumulateGrad)."""
    if not t.requires_grad:
        return None
    if t.grad_fn is not None:
        return t.grad_fn
    with torch.enable_grad():
        return t.view_as(t).grad_fn.next_functions[0][0]


def _needed(ctx: Any) -> list[bool]:
    """Which inputs need a gradient in *this* backward pass.

    ``needs_input_grad`` only says which inputs require grad. In the architecture step
    (``autograd.grad(loss, alphas)``) the weights require grad but no one asks for their
    gradient; the engine knows, so ask it and skip those kernels (and recomputations).
    """
    needs = list(ctx.needs_input_grad)
    if ctx.nodes is None:  # no grad at forward time, or traced by torch.compile
        return needs
    try:
        for i, node in enumerate(ctx.nodes):
            if needs[i] and node is not None:
                needs[i] = bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):  # private API; computing extra gradients is still correct
        pass
    return needs


def conv_chain(x: torch.Tensor, coef: Optional[torch.Tensor], spec: ChainSpec,
               weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``a * BN(...conv(ReLU(x))...)`` of n edges as one autograd node, [N, n*c, H', W'].

    Args:
        x: the op input (shared c channels, or the whole node for ``gather``).
        coef: [n*c] mixing coefficient of every output channel (a_t repeated c times), or
            None for a plain ``BN(conv(ReLU(x)))`` (cell preprocessing).
        spec: the chain (see :class:`ChainSpec`).
        weights: the (grouped) weights of ``spec.stage_a`` then ``spec.stage_b``.
    """
    dt = fo.autocast_dtype(x)
    if dt is not None:
        x, coef, *weights = fo.cast_floats([x, coef, *weights], dt)
    nodes = None
    if torch.is_grad_enabled() and not fo.compiling():  # traced: the compiled backward decides
        nodes = [_grad_node(x), None if coef is None else _grad_node(coef), None, *map(_grad_node, weights)]
    with torch.autocast(x.device.type, enabled=False) if dt is not None else contextlib.nullcontext():
        return _ConvChain.apply(x, coef, (spec, nodes), *weights)


__all__ = ["ConvSpec", "ChainSpec", "conv_chain", "preprocess"]
