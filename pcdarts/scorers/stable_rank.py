"""Stable rank of convolutions and the ``stable-rank`` scorer (MSR-DARTS; docs/methods.md, "MSR-DARTS").

``srank(A) = ||A||_F^2 / ||A||_2^2 = sum_k sigma_k^2 / sigma_max^2``: between 1 (rank one)
and rank(A) (all singular values equal). It is invariant to scaling, so a spectrally
normalised weight has the stable rank of its raw weight.

Two ways to turn a conv into a matrix (``mode``):

* ``operator`` (the official code's): the conv as the exact linear map on an H x W input
  with circular boundary. By Sedghi, Gupta & Long (2019) its singular values are those of
  the C_out x C_in matrices of 2-D Fourier coefficients of the kernel, one per frequency:
  the kernel is dilated (zeros between the taps), folded onto the H x W torus (a tap at
  row ``a`` acts at ``a mod H``; the official code crops instead, which differs only when
  the kernel is larger than the map, never for the 1x1 convs it scores), transformed, and
  a grouped (depthwise) conv is block diagonal at every frequency. All H*W frequencies
  are pooled and **not** divided by H*W (as the official code: the value grows with the resolution). For a
  1x1 conv every frequency has the same matrix W, so ``srank = H*W * srank(W)`` exactly.
* ``reshape``: the weight as a C_out x (C_in/groups * k * k) matrix.

Everything is computed in float64 on the CPU.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from pcdarts.registry import SCORERS

MODES = ("operator", "reshape")


def stable_rank_from_singular_values(sv: torch.Tensor) -> float:
    """sum sigma^2 / max sigma^2 of a set of singular values (any shape, pooled)."""
    s2 = sv.detach().double().flatten() ** 2
    top = float(s2.max())
    return float(s2.sum()) / top if top > 0 else float("nan")


def matrix_stable_rank(a: torch.Tensor) -> float:
    """Stable rank of a matrix (float64 SVD)."""
    return stable_rank_from_singular_values(torch.linalg.svdvals(a.detach().double().cpu()))


def dilate_kernel(weight: torch.Tensor, dilation: Sequence[int]) -> torch.Tensor:
    """[..., kh, kw] -> [..., d_h (kh - 1) + 1, d_w (kw - 1) + 1] with zeros between the taps."""
    dh, dw = int(dilation[0]), int(dilation[1])
    if dh == dw == 1:
        return weight
    kh, kw = weight.shape[-2:]
    out = weight.new_zeros(*weight.shape[:-2], dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    out[..., ::dh, ::dw] = weight
    return out


def fold_kernel(weight: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A [..., KH, KW] kernel as the [..., H, W] kernel of the same circular conv on an H x W
    torus: taps beyond the map wrap around (and add up), shorter kernels are zero padded."""
    H, W = int(size[0]), int(size[1])
    KH, KW = weight.shape[-2:]
    rows = torch.arange(KH) % H
    cols = torch.arange(KW) % W
    out = weight.new_zeros(*weight.shape[:-2], H, KW).index_add_(weight.dim() - 2, rows, weight)
    return out.new_zeros(*weight.shape[:-2], H, W).index_add_(weight.dim() - 1, cols, out)


def conv_operator_singular_values(weight: torch.Tensor, size: Sequence[int], *, groups: int = 1,
                                  dilation: Sequence[int] = (1, 1)) -> torch.Tensor:
    """All singular values of the stride-1 conv ``weight`` [C_out, C_in/groups, kh, kw] as the
    circular-boundary operator on an H x W input (Sedghi et al. 2019), float64, flat
    (H * W * groups * min(C_out/groups, C_in/groups) values)."""
    w = fold_kernel(dilate_kernel(weight.detach().double().cpu(), dilation), size)
    spectrum = torch.fft.fft2(w)  # [C_out, C_in/g, H, W] complex
    c_out, c_in = spectrum.shape[:2]
    H, W = spectrum.shape[-2:]
    # per frequency the operator is block diagonal: one (C_out/g x C_in/g) block per group
    blocks = spectrum.reshape(groups, c_out // groups, c_in, H, W).permute(3, 4, 0, 1, 2)
    return torch.linalg.svdvals(blocks).flatten()


def conv_stable_rank(weight: torch.Tensor, size: Optional[Sequence[int]] = None, *, mode: str = "operator",
                     groups: int = 1, dilation: Sequence[int] = (1, 1), stride: Sequence[int] = (1, 1)) -> float:
    """Stable rank of one conv weight (see the module docstring for the two modes).

    Args:
        weight: [C_out, C_in/groups, kh, kw].
        size: (H, W) the conv runs at (``operator`` mode only).
        mode: ``operator`` or ``reshape``.
        groups, dilation, stride: the conv's settings (the operator mode needs stride 1).
    """
    if mode == "reshape":
        return matrix_stable_rank(weight.reshape(weight.shape[0], -1))
    if mode != "operator":
        raise ValueError(f"stable-rank mode must be one of {', '.join(MODES)}, got {mode!r}")
    if tuple(int(s) for s in stride) != (1, 1):
        raise ValueError(f"the operator stable rank needs a stride-1 conv, got stride {tuple(stride)}; "
                         "use mode='reshape'")
    if size is None:
        raise ValueError("the operator stable rank needs the conv's input size (H, W)")
    if weight.shape[-2:] == (1, 1) and groups == 1:  # the same matrix at every frequency
        return int(size[0]) * int(size[1]) * matrix_stable_rank(weight.reshape(weight.shape[:2]))
    return stable_rank_from_singular_values(conv_operator_singular_values(weight, size, groups=groups,
                                                                          dilation=dilation))


def raw_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The conv's trained weight before any parametrisation (e.g. spectral normalisation,
    a positive scale: the stable rank is the same)."""
    if parametrize.is_parametrized(conv, "weight"):
        return conv.parametrizations.weight.original
    return conv.weight


def last_conv(op: nn.Module) -> nn.Conv2d:
    """The last Conv2d of an op (the one MSR-DARTS scores; the 1x1 of sep/dil convs)."""
    convs = [m for m in op.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(op).__name__} has no Conv2d: its stable rank is undefined")
    return convs[-1]


def convs_stable_ranks(convs: Iterable[tuple[nn.Conv2d, Sequence[int]]], mode: str = "operator") -> list[float]:
    """Stable ranks of many (conv, (H, W)) pairs; the 1x1 convs of one shape share one batched SVD."""
    items = list(convs)
    out: list[Optional[float]] = [None] * len(items)
    batches: dict[tuple[int, ...], list[int]] = {}
    for i, (conv, size) in enumerate(items):
        w = raw_weight(conv)
        if w.shape[-2:] == (1, 1) and conv.groups == 1 and tuple(conv.stride) == (1, 1):
            batches.setdefault(tuple(w.shape), []).append(i)
        else:
            out[i] = conv_stable_rank(w, size, mode=mode, groups=conv.groups, dilation=conv.dilation,
                                      stride=conv.stride)
    for shape, idx in batches.items():
        mats = torch.stack([raw_weight(items[i][0]).detach().reshape(shape[:2]) for i in idx]).double().cpu()
        s2 = torch.linalg.svdvals(mats) ** 2
        ranks = (s2.sum(1) / s2.max(1).values).tolist()
        for i, r in zip(idx, ranks):
            H, W = items[i][1]
            out[i] = r * H * W if mode == "operator" else r
    return [float(r) for r in out]  # type: ignore[arg-type]


def cell_stable_ranks(convs: dict[tuple[int, int, int], tuple[nn.Conv2d, Sequence[int]]], shape: tuple[int, int],
                      mode: str = "operator") -> dict[int, torch.Tensor]:
    """Per cell: the [E, O] float64 matrix of stable ranks of the ops' scored convs.

    Args:
        convs: (cell index, edge, op index) -> (the op's last conv, the (H, W) it is scored at).
        shape: (E, O); entries of ops that are not scored are +inf.
    """
    keys = list(convs)
    ranks = convs_stable_ranks((convs[k] for k in keys), mode)
    out: dict[int, torch.Tensor] = {}
    for (c, e, o), r in zip(keys, ranks):
        if c not in out:
            out[c] = torch.full(shape, float("inf"), dtype=torch.float64)
        out[c][e, o] = r
    return out


def mean_by_type(ranks: dict[int, torch.Tensor], cell_type_of: dict[int, str]) -> dict[str, torch.Tensor]:
    """The mean stable-rank matrix over the cells of each type (the CIFAR genotype of the official code)."""
    out: dict[str, torch.Tensor] = {}
    for ct in dict.fromkeys(cell_type_of.values()):
        out[ct] = torch.stack([r for c, r in sorted(ranks.items()) if cell_type_of[c] == ct]).mean(0)
    return out


@SCORERS.register("stable-rank", description="minus the mean stable rank (over the cells of a type) of each "
                                               "op's last conv: MSR-DARTS")
def stable_rank_scorer(method: Any, ctx: Any = None) -> dict[str, torch.Tensor]:
    """The registered form: ``-method.mean_stable_ranks(ctx)``, so the space's top-k rules keep
    the ops (and edges) of the *smallest* stable rank; ops that are not scored get -inf."""
    return {ct: -r for ct, r in method.mean_stable_ranks(ctx).items()}


__all__ = ["MODES", "stable_rank_from_singular_values", "matrix_stable_rank", "dilate_kernel", "fold_kernel",
           "conv_operator_singular_values", "conv_stable_rank", "raw_weight", "last_conv", "convs_stable_ranks",
           "cell_stable_ranks", "mean_by_type", "stable_rank_scorer"]
