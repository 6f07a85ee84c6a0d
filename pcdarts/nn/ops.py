"""Candidate operations of the DARTS and NAS-Bench-201 spaces (docs/methods.md, "Search spaces").

Every factory has the signature ``factory(C, stride, affine) -> nn.Module`` and maps C
channels to C channels. The ``none`` op exists for discrete networks and for shape
tests; mixed edges never execute it (its contribution is exactly zero). ``noise`` (the
RobustDARTS S4 op, :class:`Noise`) is in the DARTS tables too, so its cells train with
the DARTS evaluation network; the DARTS space itself never offers it.
No device logic here.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pcdarts.genotype.primitives import DARTS_PRIMITIVES, NB201_PRIMITIVES  # noqa: E402,F401  (re-exported)

OpFactory = Callable[[int, int, bool], nn.Module]


class Zero(nn.Module):
    """The ``none`` op: zeros at the output resolution (every ``stride``-th pixel)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


def draw_noise(shape: tuple[int, ...], like: torch.Tensor, generator: Optional[torch.Generator] = None
               ) -> torch.Tensor:
    """N(0, 1) samples of ``shape`` with ``like``'s dtype and device (a contiguous NCHW tensor,
    filled in memory order), from ``generator`` (None = the device's default generator, whose
    state a search checkpoint keeps). The one draw of the reference op and of the fast path."""
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)


class Noise(nn.Module):
    """The ``noise`` op of RobustDARTS's space S4 (Zela et al., ICLR 2020; ``NoiseOp(stride, 0, 1)``
    in the official ``src/operations.py``): a fresh N(0, 1) tensor of the shape of the input
    seen at the op's stride (``x[:, :, ::stride, ::stride]``: same channels, ceil(H/stride) x
    ceil(W/stride)), independent of the input's values, drawn at every call (training and
    evaluation alike, as the official op). No parameters, no gradient to the input.

    Attributes:
        generator: the generator the samples come from; None = the device's default one.
    """

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.generator: Optional[torch.Generator] = None

    def out_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The output shape for an input ``shape`` [N, C, H, W]."""
        n, c, h, w = shape
        s = self.stride
        return (n, c, (h + s - 1) // s, (w + s - 1) // s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return draw_noise(self.out_shape(x.shape), x, self.generator)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ReLUConvBN(nn.Module):
    """ReLU -> k x k conv (no bias) -> BN."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int,
                 affine: bool = True, dilation: int = 1, track_running_stats: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class DilConv(nn.Module):
    """ReLU -> depthwise k x k (dilation d) -> 1x1 -> BN."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel, stride=stride, padding=padding, dilation=dilation,
                      groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class SepConv(nn.Module):
    """Two DilConv(dilation=1) blocks; only the first carries the stride."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int,
                 affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            DilConv(C_in, C_in, kernel, stride, padding, 1, affine, track_running_stats).op,
            DilConv(C_in, C_out, kernel, 1, padding, 1, affine, track_running_stats).op,
        )
        # flatten to ReLU, dw, pw, BN, ReLU, dw, pw, BN (the familiar layout)
        self.op = nn.Sequential(*self.op[0], *self.op[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class FactorizedReduce(nn.Module):
    """ReLU, two 1x1 stride-2 convs on complementary pixel grids, concat, BN.

    Used for stride-2 ``skip_connect`` and for preprocessing a cell input that
    comes from before a reduction cell.
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        # the second branch sees the grid shifted by one pixel in H and W; odd sizes
        # are padded on the far side so both branches agree on the output size
        shifted = x[:, :, 1:, 1:]
        if x.shape[2] % 2 or x.shape[3] % 2:
            shifted = F.pad(shifted, (0, x.shape[3] % 2, 0, x.shape[2] % 2))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


class PoolBN(nn.Module):
    """Pooling followed by BatchNorm(affine=False): the DARTS search-network rule (``bn=False``:
    pooling alone, as the IS-DARTS and DrNAS search cells)."""

    def __init__(self, kind: str, C: int, stride: int, bn: bool, track_running_stats: bool = True) -> None:
        super().__init__()
        if kind == "max":
            self.pool: nn.Module = nn.MaxPool2d(3, stride=stride, padding=1)
        else:
            self.pool = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        self.bn = nn.BatchNorm2d(C, affine=False, track_running_stats=track_running_stats) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        return self.bn(x) if self.bn is not None else x


def darts_ops(pool_bn: bool, track_running_stats: bool = True) -> dict[str, OpFactory]:
    """DARTS op factories. ``pool_bn`` adds BN(affine=False) after pooling (search network);
    ``track_running_stats`` False: every BN of the ops uses batch statistics, also in eval mode."""
    t = track_running_stats
    return {
        "none": lambda C, s, affine: Zero(s),
        "max_pool_3x3": lambda C, s, affine: PoolBN("max", C, s, pool_bn, t),
        "avg_pool_3x3": lambda C, s, affine: PoolBN("avg", C, s, pool_bn, t),
        "skip_connect": lambda C, s, affine: Identity() if s == 1 else FactorizedReduce(C, C, affine, t),
        "sep_conv_3x3": lambda C, s, affine: SepConv(C, C, 3, s, 1, affine, t),
        "sep_conv_5x5": lambda C, s, affine: SepConv(C, C, 5, s, 2, affine, t),
        "dil_conv_3x3": lambda C, s, affine: DilConv(C, C, 3, s, 2, 2, affine, t),
        "dil_conv_5x5": lambda C, s, affine: DilConv(C, C, 5, s, 4, 2, affine, t),
        "noise": lambda C, s, affine: Noise(s),
    }


class NB201Pool(nn.Module):
    """3x3 average pooling (zeros not counted); no BN after it in NB201."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


def nb201_ops(track_running_stats: bool = True) -> dict[str, OpFactory]:
    """NAS-Bench-201 op factories (cells only ever use stride 1)."""
    return {
        "none": lambda C, s, affine: Zero(s),
        "skip_connect": lambda C, s, affine: Identity() if s == 1 else FactorizedReduce(C, C, affine),
        "nor_conv_1x1": lambda C, s, affine: ReLUConvBN(C, C, 1, s, 0, affine,
                                                        track_running_stats=track_running_stats),
        "nor_conv_3x3": lambda C, s, affine: ReLUConvBN(C, C, 3, s, 1, affine,
                                                        track_running_stats=track_running_stats),
        "avg_pool_3x3": lambda C, s, affine: NB201Pool(s),
    }


class ResNetReduction(nn.Module):
    """The NAS-Bench-201 residual reduction block (C_in -> C_out, stride 2).

    Main path: ReLU-Conv3x3(s2)-BN, ReLU-Conv3x3-BN. Shortcut: AvgPool 2x2 s2 then Conv1x1.
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1, affine, track_running_stats=track_running_stats)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1, affine, track_running_stats=track_running_stats)
        self.shortcut = nn.Sequential(
            nn.AvgPool2d(2, stride=2, padding=0),
            nn.Conv2d(C_in, C_out, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x)) + self.shortcut(x)


OPS: dict[str, dict[str, OpFactory]] = {
    "darts": darts_ops(pool_bn=False),
    "darts_search": darts_ops(pool_bn=True),
    "nb201": nb201_ops(),
}
