"""The pooling ops of all edges leaving a node as one autograd node (fast path, training).

Every edge leaving a node pools the same c channels, and in training mode the BatchNorm
after pooling (affine=False, batch statistics) gives the same output on every edge. So
``max_pool -> BN`` and ``avg_pool -> BN`` run once per node and their outputs are mixed
into every outgoing edge with that edge's coefficients (one GEMM, see
:func:`kernels.mix_matrix`). The custom backward keeps only the node (alive anyway) and
the BN statistics: the pooled tensors, the max-pool indices (int64, twice the size of
the output) and the BN outputs are recomputed, which costs two cheap pooling passes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch.autograd.function import once_differentiable
import torch.nn as nn
import torch.nn.functional as F

from pcdarts.nn.fast import kernels as fo

aten = torch.ops.aten


@dataclass
class PoolSpec:
    """pools: the pooling modules (one per kind, e.g. max then avg); bns: per kind, the BN
    modules of every edge that has that op (None: no BN, as in NB201); c: channels."""

    pools: list[nn.Module]
    bns: Optional[list[list[nn.BatchNorm2d]]]
    c: int


def _pool(x: torch.Tensor, pool: nn.Module, with_indices: bool) -> Any:
    k, s, p = pool.kernel_size, pool.stride, pool.padding
    if isinstance(pool, nn.MaxPool2d):
        if with_indices:
            return aten.max_pool2d_with_indices(x, _pair(k), _pair(s), _pair(p), _pair(pool.dilation), pool.ceil_mode)
        return F.max_pool2d(x, k, s, p, pool.dilation, pool.ceil_mode)
    return F.avg_pool2d(x, k, s, p, pool.ceil_mode, pool.count_include_pad, pool.divisor_override)


def _pool_backward(g: torch.Tensor, x: torch.Tensor, pool: nn.Module, indices: Optional[torch.Tensor]) -> torch.Tensor:
    k, s, p = _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding)
    if isinstance(pool, nn.MaxPool2d):
        return aten.max_pool2d_with_indices_backward(g, x, k, s, p, _pair(pool.dilation), pool.ceil_mode, indices)
    return aten.avg_pool2d_backward(g, x, k, s, p, pool.ceil_mode, pool.count_include_pad, pool.divisor_override)


def _pair(v: Any) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


# below this many channels the pooling kernels (vectorised over channels in channels_last)
# run on the batch folded into the channels: [N, c, H, W] -> [1, N*c, H, W] (measured on
# CPU: 3x3 max-pooling of [32, 4, 32, 32] goes from ~1.3 ms to ~0.2 ms including copies)
PLANES_BELOW = 16


def _to_planes(x: torch.Tensor) -> torch.Tensor:
    """[N, c, H, W] -> [1, N*c, H, W] channels_last (memory order H, W, N, c; one copy)."""
    N, c, H, W = x.shape
    return x.permute(2, 3, 0, 1).reshape(1, H, W, N * c).permute(0, 3, 1, 2)


def _blocks_from_planes(t: torch.Tensor, N: int, kinds: int = 1) -> torch.Tensor:
    """Inverse of :func:`_to_planes` for ``kinds`` blocks of N*c planes side by side (e.g.
    max then avg): [1, kinds*N*c, H, W] -> [N, kinds*c, H, W] channels_last (one copy)."""
    _, C, H, W = t.shape
    c = C // (N * kinds)
    v = t.permute(0, 2, 3, 1).reshape(H, W, kinds, N, c).permute(3, 0, 1, 2, 4)  # [N, H, W, kinds, c]
    return v.reshape(N, H, W, kinds * c).permute(0, 3, 1, 2)


class _PoolMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, S: torch.Tensor, spec: PoolSpec) -> torch.Tensor:  # type: ignore[override]
        N, K = x.shape[0], len(spec.pools)
        planes = x.shape[1] < PLANES_BELOW
        xin = _to_planes(x) if planes else x
        pooled = [_pool(xin, p, False) for p in spec.pools]
        z = torch.cat(pooled, 1) if K > 1 else pooled[0]
        if planes:
            z = _blocks_from_planes(z, N, K)
        stats = None
        if spec.bns is not None:
            bn0 = spec.bns[0][0]
            C = z.shape[1]
            sdt = torch.float32 if z.dtype in (torch.float16, torch.bfloat16) else z.dtype
            mean, var = z.new_zeros(C, dtype=sdt), z.new_ones(C, dtype=sdt)
            y, save_mean, save_invstd = aten.native_batch_norm(z, None, None, mean, var, True, 1.0, bn0.eps)
            stats = (save_mean, save_invstd, bn0.eps)
            if bn0.running_mean is not None:
                _update_running(spec.bns, mean, var, spec.c)
            z = y
        ctx.save_for_backward(x, S)
        ctx.spec, ctx.stats, ctx.shape, ctx.planes = spec, stats, z.shape, planes
        return fo.mat(z) @ fo.kron_eye(S, spec.c)

    @staticmethod
    @once_differentiable  # backward is hand-written: a second derivative must raise, not be wrong
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:  # type: ignore[override]
        x, S = ctx.saved_tensors
        spec: PoolSpec = ctx.spec
        c, planes, K = spec.c, ctx.planes, len(spec.pools)
        N, C, H, W = ctx.shape
        xin = _to_planes(x) if planes else x
        outs = [_pool(xin, p, True) if isinstance(p, nn.MaxPool2d) else (_pool(xin, p, False), None)
                for p in spec.pools]
        z = torch.cat([o[0] for o in outs], 1) if K > 1 else outs[0][0]
        if planes:
            z = _blocks_from_planes(z, N, K)
        M = fo.kron_eye(S, c)
        gy = (g @ M.t()).view(N, H, W, C).permute(0, 3, 1, 2)
        gS = None
        if ctx.needs_input_grad[1]:
            y = z
            if ctx.stats is not None:
                mean, invstd, _ = ctx.stats
                y = torch.sub(z, mean.view(1, -1, 1, 1).to(z.dtype)).mul_(invstd.view(1, -1, 1, 1).to(z.dtype))
            G = fo.mat(y).t() @ g  # [kinds*c, slots*c]; dS[a, b] = trace of block (a, b)
            gS = G.view(S.shape[0], c, S.shape[1], c).diagonal(dim1=1, dim2=3).sum(-1)
        gx = None
        if ctx.needs_input_grad[0]:
            if ctx.stats is not None:
                mean, invstd, eps = ctx.stats
                gy = aten.native_batch_norm_backward(gy, z, None, None, None, mean, invstd, True, eps,
                                                     [True, False, False])[0]
            w = x.shape[1]  # channels per pooling kind
            for k, (p, (_, ind)) in enumerate(zip(spec.pools, outs)):
                gk = gy[:, k * w:(k + 1) * w]
                gk = _pool_backward(_to_planes(gk) if planes else gk, xin, p, ind)
                gx = gk if gx is None else gx + gk
            if planes:
                gx = _blocks_from_planes(gx, N).contiguous(memory_format=fo.CL)
        return gx, gS, None


def _update_running(groups: Sequence[Sequence[nn.BatchNorm2d]], mean: torch.Tensor, var: torch.Tensor,
                    c: int) -> None:
    """Every module of group k gets the reference's update from the batch statistics of block k."""
    with torch.no_grad():
        for k, group in enumerate(groups):
            m, v = mean[k * c:(k + 1) * c], var[k * c:(k + 1) * c]
            torch._foreach_add_([b.num_batches_tracked for b in group], 1)
            for b in group:
                f = fo.bn_factor(b)
                b.running_mean.mul_(1 - f).add_(m, alpha=f)
                b.running_var.mul_(1 - f).add_(v, alpha=f)


def pool_mix(x: torch.Tensor, S: torch.Tensor, spec: PoolSpec) -> torch.Tensor:
    """Pooling (+ shared BN) of the node's c channels mixed into every outgoing edge.

    Args:
        x: [N, c, H, W] the channels every outgoing edge reads.
        S: [kinds, slots] coefficient of pooling kind k in outgoing edge t (0 if absent).
        spec: see :class:`PoolSpec`.

    Returns:
        [N*H'*W', slots*c] contributions in slot order (see :mod:`pcdarts.nn.fast.blocks`).
    """
    dt = fo.autocast_dtype(x)
    if dt is None:
        return _PoolMix.apply(x, S, spec)
    x, S = fo.cast_floats([x, S], dt)
    with torch.autocast(x.device.type, enabled=False):
        return _PoolMix.apply(x, S, spec)


__all__ = ["PoolSpec", "pool_mix"]
