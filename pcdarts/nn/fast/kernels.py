"""Building blocks of the fast supernet path (see :mod:`pcdarts.nn.fast.cells`).

Everything here works on ``channels_last`` tensors and computes *exactly* what the
reference modules compute (same parameters, same formulas); only the grouping of the
work differs. The helpers are pure functions of tensors and of the reference modules
(whose parameters and BatchNorm buffers they read and update):

* :func:`group_batch_norm` runs the BatchNorms of several ops as one call: BN is
  per channel, so BN of a channel concatenation equals the concatenation of the BNs.
* :func:`block_diag_1x1` / :func:`multiplier_pointwise` turn the 1x1 convolutions of
  several edges into one 1x1 convolution (see :mod:`pcdarts.nn.fast.conv`);
* :func:`grids` / :func:`fr_weight` compute FactorizedReduce of several edges as one
  convolution on the two complementary pixel grids.
* :func:`mix_matrix` / :func:`accumulate` express the mixing sum
  ``sum_o w_o * o(x)`` (times the edge weight) over many ops and edges as one GEMM on
  the ``[pixels, channels]`` view of a channels_last tensor.

No device logic and no search-loop logic here.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch.autograd.function import once_differentiable
import torch.nn as nn
import torch.nn.functional as F

CL = torch.channels_last

# ---------------------------------------------------------------- mixed precision

def autocast_dtype(t: torch.Tensor) -> Optional[torch.dtype]:
    """The autocast dtype in force for ``t``'s device, or None."""
    dev = t.device.type
    try:
        if torch.is_autocast_enabled(dev):
            return torch.get_autocast_dtype(dev)
    except (TypeError, RuntimeError):  # device types without autocast support
        pass
    return None


def cast_floats(tensors: Sequence[Optional[torch.Tensor]], dtype: torch.dtype) -> list[Optional[torch.Tensor]]:
    """Floating tensors to ``dtype`` (autograd-tracked casts, so gradients come back in the
    original dtype); others unchanged.

    The custom autograd nodes call ATen kernels directly, also in backward where autocast
    is not active, so under autocast their inputs are cast up front, as autocast would
    cast the inputs of a convolution, and the node itself runs with autocast disabled.
    """
    return [t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != dtype else t for t in tensors]


def compiling() -> bool:
    """True while ``torch.compile`` traces the code (autograd-engine introspection is then skipped)."""
    fn = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(fn()) if fn is not None else False


# ---------------------------------------------------------------- layout helpers

def mat(t: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] channels_last (or a channel slice of one) -> its [N*H*W, C] view (no copy)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def unmat(m: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """[N*H*W, C] (rows contiguous per pixel) -> [N, C, H, W] in channels_last, no copy."""
    return m.reshape(n, h, w, m.shape[-1]).permute(0, 3, 1, 2)


def replicate(h: torch.Tensor, m: int) -> torch.Tensor:
    """[N, c, H, W] -> [N, m*c, H, W] = cat([h] * m, 1); channels_last in, channels_last out."""
    if m == 1:
        return h
    return torch.cat([h] * m, 1)  # ~2x faster on CPU than an expand + reshape copy


def gather_channels(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[:, idx] in channels_last: gathering along the innermost memory dim keeps the layout."""
    return x.permute(0, 2, 3, 1).index_select(3, idx).permute(0, 3, 1, 2)


class _Grids(torch.autograd.Function):
    """[N, c, H, W] -> cat([x[:, :, ::2, ::2], x[:, :, 1::2, 1::2] zero-padded], 1).

    The two complementary pixel grids of FactorizedReduce. A custom backward writes the
    gradient into a channels_last zero tensor: autograd's slice backward would build an
    NCHW one and every later kernel would then mix memory formats (slow on CPU).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h, w = x.shape[2], x.shape[3]
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        even = x[:, :, ::2, ::2]
        odd = x[:, :, 1::2, 1::2]
        ctx.shape = x.shape
        if odd.shape[2] != h2 or odd.shape[3] != w2:  # odd sizes: FactorizedReduce pads the far side
            odd = F.pad(odd, (0, w2 - odd.shape[3], 0, h2 - odd.shape[2]))
        return torch.cat([even, odd], 1).contiguous(memory_format=CL)

    @staticmethod
    @once_differentiable  # backward is hand-written: a second derivative must raise, not be wrong
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grids_backward(g, ctx.shape)


def grids(x: torch.Tensor) -> torch.Tensor:
    """See :class:`_Grids`."""
    return _Grids.apply(x)


def grids_backward(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Gradient of :func:`grids` w.r.t. its input (channels_last)."""
    c, h, w = shape[1], shape[2], shape[3]
    gx = g.new_zeros(shape).contiguous(memory_format=CL)
    gx[:, :, ::2, ::2] = g[:, :c]
    gx[:, :, 1::2, 1::2] = g[:, c:, :h // 2, :w // 2]
    return gx


def fr_weight(frs: Sequence[nn.Module]) -> torch.Tensor:
    """One [n*c, 2c, 1, 1] weight for n FactorizedReduce ops on :func:`grids` input.

    A 1x1 stride-2 conv equals subsampling followed by a 1x1 conv, so rows [W1 | 0] and
    [0 | W2] per op give ``cat([conv_1(x), conv_2(shifted x)])`` of every op at once.
    """
    parts = []
    for f in frs:
        w1, w2 = f.conv_1.weight, f.conv_2.weight
        parts.append(torch.cat([torch.cat([w1, torch.zeros_like(w1)], 1), torch.cat([torch.zeros_like(w2), w2], 1)]))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


# ---------------------------------------------------------------- BatchNorm

def bn_factor(bn: nn.BatchNorm2d) -> float:
    """The running-stat update factor of ``bn`` (call after incrementing num_batches_tracked)."""
    if bn.momentum is not None:
        return float(bn.momentum)
    return 1.0 / float(bn.num_batches_tracked)  # cumulative average (after the increment)


def train_running_stats(bns: Sequence[nn.BatchNorm2d],
                        kernel: Callable[[torch.Tensor, torch.Tensor, float], Any]) -> Any:
    """Count the batch on every module, run ``kernel(running_mean, running_var, factor)`` (a
    training-mode BN call, which updates the buffers it is given) on the concatenated
    running buffers of ``bns`` and copy them back; returns what ``kernel`` returns."""
    bn0 = bns[0]
    with torch.no_grad():
        torch._foreach_add_([b.num_batches_tracked for b in bns], 1)
    factor = bn_factor(bn0)
    if len(bns) == 1:
        return kernel(bn0.running_mean, bn0.running_var, factor)
    rm = torch.cat([b.running_mean for b in bns])
    rv = torch.cat([b.running_var for b in bns])
    out = kernel(rm, rv, factor)
    sizes = [b.num_features for b in bns]
    with torch.no_grad():
        torch._foreach_copy_([b.running_mean for b in bns], list(rm.split(sizes)))
        torch._foreach_copy_([b.running_var for b in bns], list(rv.split(sizes)))
    return out


def group_batch_norm(x: torch.Tensor, bns: Sequence[nn.BatchNorm2d]) -> torch.Tensor:
    """BN of ``x`` whose channels are the concatenated channels of ``bns`` (in order).

    Equal to ``cat([bn(x_part) for ...])``: batch statistics are per channel. The
    running buffers are concatenated, updated by the one kernel call, and copied back.
    """
    bn0 = bns[0]
    affine = bn0.affine
    weight = bias = None
    if affine:
        weight = torch.cat([b.weight for b in bns]) if len(bns) > 1 else bn0.weight
        bias = torch.cat([b.bias for b in bns]) if len(bns) > 1 else bn0.bias
    if bn0.running_mean is None:  # track_running_stats=False: batch statistics, always
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, bn0.eps)
    if bn0.training:
        return train_running_stats(bns, lambda rm, rv, f: F.batch_norm(x, rm, rv, weight, bias, True, f, bn0.eps))
    rm = torch.cat([b.running_mean for b in bns]) if len(bns) > 1 else bn0.running_mean
    rv = torch.cat([b.running_var for b in bns]) if len(bns) > 1 else bn0.running_var
    return F.batch_norm(x, rm, rv, weight, bias, False, 0.0, bn0.eps)


# ---------------------------------------------------------------- convolutions

def block_diag_1x1(ws: Sequence[torch.Tensor]) -> torch.Tensor:
    """m 1x1 weights [c, c, 1, 1] -> one block-diagonal [m*c, m*c, 1, 1] weight.

    A dense GEMM with m x the FLOPs of a grouped conv, but m <= 4 here and one GEMM on
    a channels_last tensor beats a grouped 1x1 convolution with tiny groups on CPU.
    """
    if len(ws) == 1:
        return ws[0]
    return torch.block_diag(*[w.flatten(1) for w in ws]).unsqueeze(-1).unsqueeze(-1)


def multiplier_pointwise(ws: Sequence[torch.Tensor]) -> torch.Tensor:
    """1x1 weight [(t, o), (ch, u)] = delta(t, u) * W_t[o, ch] for a (channel, edge)-ordered input.

    A depthwise conv with channel multiplier m outputs channel ch*m + t for edge t; this
    dense 1x1 weight applies every edge's pointwise conv and returns (edge, channel) order.
    """
    wp = torch.stack([p.flatten(1) for p in ws])  # [m, o, ch]
    m, c = wp.shape[0], wp.shape[1]
    eye = torch.eye(m, dtype=wp.dtype, device=wp.device)
    return (wp.unsqueeze(-1) * eye[:, None, None, :]).reshape(m * c, c * m, 1, 1)


# ---------------------------------------------------------------- mixing

def mix_matrix(coef: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_cols: int,
               c: int) -> torch.Tensor:
    """The [n_rows*c, n_cols*c] matrix kron(S, I_c) with S[rows[i], cols[i]] = coef[i].

    ``z_mat @ M`` then adds coef[i] * block rows[i] of z into output block cols[i]:
    the weighted mixing sum of many ops and edges as one GEMM. Zero entries add
    exact zeros, so the result equals the plain weighted sum up to summation order.
    """
    return kron_eye(coef.new_zeros(n_rows, n_cols).index_put((rows, cols), coef, accumulate=True), c)


def kron_eye(S: torch.Tensor, c: int) -> torch.Tensor:
    """kron(S, I_c): [a, b] -> [a*c, b*c], block (i, j) = S[i, j] * I_c."""
    eye = torch.eye(c, dtype=S.dtype, device=S.device)
    return (S[:, None, :, None] * eye[None, :, None, :]).reshape(S.shape[0] * c, S.shape[1] * c)


def accumulate(out: Optional[torch.Tensor], z: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """out += mat(z) @ M in place (out None: just the product)."""
    zm = mat(z)
    if out is None:
        return zm @ M
    if out.dtype == zm.dtype == M.dtype:
        return out.addmm_(zm, M)
    return add_into(out, zm @ M)  # mixed dtypes (autocast): the product follows autocast


class _AddColumns(torch.autograd.Function):
    """``out[:, cols] += z`` in place, keeping only ``cols`` for the backward: autograd's own
    ``index_add_`` keeps ``z`` (the op outputs of a group whose op not every outgoing edge has,
    after pruning), which the conv chains were built to recompute instead."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, z: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cols)
        ctx.mark_dirty(out)
        return out.index_add_(1, cols, z)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        (cols,) = ctx.saved_tensors
        return g, g.index_select(1, cols), None


def add_columns(out: torch.Tensor, z: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``out[:, cols] += z`` in place (``out`` [R, K], ``z`` [R, len(cols)]), saving only ``cols``."""
    return _AddColumns.apply(out, z.to(out.dtype), cols)


def add_into(out: Optional[torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """``out += z`` in place when the dtypes allow it (``out`` is a fresh sum nobody saved
    for backward; fewer big temporaries also means less heap fragmentation on CPU)."""
    if out is None:
        return z
    dt = torch.promote_types(out.dtype, z.dtype)
    if out.dtype != dt:
        out = out.to(dt)
    return out.add_(z)


__all__ = ["add_columns",
           "CL", "autocast_dtype", "cast_floats", "mat", "unmat", "replicate", "gather_channels", "grids",
           "grids_backward", "fr_weight", "bn_factor", "train_running_stats",
           "group_batch_norm", "block_diag_1x1", "multiplier_pointwise", "mix_matrix", "kron_eye", "accumulate",
           "add_into"]
