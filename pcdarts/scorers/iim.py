"""Information-based Importance Measurement, IIM (IS-DARTS, docs/methods.md, "IS-DARTS").

Every candidate op's output map X [B, C, H, W] is read as independent normal pixels whose
mean and variance are taken **across channels** at each (h, w). The per-element "Fisher"
term is then averaged: per sample over [C, H, W], as a running mean over every sample of
the pass, and over the cells of a type. The paper's importance is IIM = 1 / F (a high
value is an informative map); pruning removes the ops of largest F (lowest IIM).

Two formulas (``formula``):

* ``official`` (the released code, the default): ``F = 3 (x - mu)^2 / sigma^6`` with the
  unbiased std over channels; NaN -> +inf *before* any averaging, so a pixel whose channels
  are all equal (``none``, a constant map) makes the op's value +inf for good.
* ``textbook``: the observed information of N(mu, v = sigma^2) with respect to v,
  ``(x - mu)^2 / sigma^6 - 1 / (2 sigma^4)``, with sigma floored at :data:`TEXTBOOK_EPS`
  (a known paper/code mismatch). A pixel with sigma exactly 0 still gives +inf (the
  rule of the official code), so ``none`` and constant maps are removed first either way.

This module holds the pure statistic (:func:`fisher_elements`, :func:`per_sample_fisher`),
the hook-based pass over a supernet (:func:`iim_statistics`, which also fills in the ops
that are not built: ``none``'s all-zero map gives +inf) and the registered ``iim`` scorer.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Optional

import torch
import torch.nn as nn

from pcdarts.nn.edges import Mixing
from pcdarts.registry import SCORERS

FORMULAS = ("official", "textbook")
TEXTBOOK_EPS = 1e-5   # sigma floor of the textbook formula (sigma^6 = 1e-30 still fits float32)
DEFAULT_SAMPLES = 200  # images of the registered scorer's pass (the paper's NB201 count)


def fisher_elements(x: torch.Tensor, formula: str = "official") -> torch.Tensor:
    """The per-element Fisher term of a feature map [B, C, H, W] (float32, same shape):
    mean and unbiased std over channels per pixel; NaN (and sigma = 0) -> +inf."""
    if formula not in FORMULAS:
        raise ValueError(f"IIM formula must be one of {', '.join(FORMULAS)}, got {formula!r}")
    x = x.float()
    mu = x.mean(1, keepdim=True)
    sigma = x.std(1, keepdim=True)  # unbiased (N - 1), as torch.std in the official hook
    d2 = (x - mu).pow(2)
    if formula == "official":
        f = 3.0 * d2 / sigma.pow(6)
    else:
        s = sigma.clamp_min(TEXTBOOK_EPS)
        f = d2 / s.pow(6) - 0.5 / s.pow(4)
        f = torch.where(sigma == 0, torch.full_like(f, float("inf")), f)
    return torch.where(torch.isnan(f), torch.full_like(f, float("inf")), f)


def per_sample_fisher(x: torch.Tensor, formula: str = "official") -> torch.Tensor:
    """[B]: the mean of :func:`fisher_elements` over [C, H, W] of each sample."""
    return fisher_elements(x, formula).mean(dim=(1, 2, 3))


def importance(fisher: torch.Tensor) -> torch.Tensor:
    """IIM = 1 / F (the paper's quantity up to a constant): higher = more informative,
    +inf F -> 0. Ranking by lowest IIM equals ranking by highest F."""
    return fisher.reciprocal()


def _unwrap(supernet: nn.Module) -> nn.Module:
    """The supernet module itself (not a torch.compile or DDP wrapper), so hooks fire."""
    net = getattr(supernet, "_orig_mod", supernet)
    return getattr(net, "module", net)


@torch.no_grad()
def iim_statistics(supernet: nn.Module, mixing: Mixing, batches: Iterable[tuple[torch.Tensor, Any]], *,
                   formula: str = "official", num_samples: Optional[int] = None) -> dict[str, torch.Tensor]:
    """F per cell type ([E, O], float64 on the CPU) from one pass over ``batches``.

    A forward hook on every built candidate op (``supernet.candidate_ops()``) adds the
    per-sample values of its output (:func:`per_sample_fisher`); the value of an op is
    their mean over all samples (the running mean of the official code), then the mean
    over the cells of its type. The network runs in eval mode, without gradients and in
    float32, on the reference forward (``supernet.reference()`` of the fast supernets, so
    every op module is called); its train mode is restored and the hooks removed after.
    Ops that are not built get +inf: ``none`` (its output is all zeros, which the formula
    maps to +inf) and pruned ops (whose values callers ignore).

    Args:
        num_samples: use only the first ``num_samples`` images of ``batches`` (None = all).
    """
    if formula not in FORMULAS:
        raise ValueError(f"IIM formula must be one of {', '.join(FORMULAS)}, got {formula!r}")
    net = _unwrap(supernet)
    sums: dict[tuple[str, int, int, int], torch.Tensor] = {}
    counts: dict[tuple[str, int, int, int], int] = {}
    handles = []

    def make_hook(key: tuple[str, int, int, int]) -> Any:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            v = per_sample_fisher(output, formula).double().sum()
            sums[key] = v if key not in sums else sums[key] + v
            counts[key] = counts.get(key, 0) + output.shape[0]
        return hook

    keys = []
    for ct, c, e, o, module in net.candidate_ops():
        keys.append((ct, c, e, o))
        handles.append(module.register_forward_hook(make_hook((ct, c, e, o))))
    was_training = net.training
    reference = (net.reference("IS-DARTS's IIM statistics (hooks on the op modules)") if hasattr(net, "reference")
                 else contextlib.nullcontext())
    seen = 0
    try:
        net.eval()
        with reference:
            for x, *_ in batches:
                if num_samples is not None:
                    if seen >= num_samples:
                        break
                    x = x[: num_samples - seen]
                seen += x.shape[0]
                net(x.float(), mixing)
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    if seen == 0:
        raise ValueError("iim_statistics: no images to measure (empty batches)")
    shapes = {ct: tuple(m.shape) for ct, m in net.masks.items()}
    per_cell: dict[str, dict[int, torch.Tensor]] = {}
    for ct, c, e, o in keys:
        cell = per_cell.setdefault(ct, {}).setdefault(c, torch.full(shapes[ct], float("inf"), dtype=torch.float64))
        cell[e, o] = (sums[(ct, c, e, o)] / counts[(ct, c, e, o)]).cpu()
    out = {}
    for ct, shape in shapes.items():
        cells = list(per_cell.get(ct, {}).values())
        out[ct] = torch.stack(cells).mean(0) if cells else torch.full(shape, float("inf"), dtype=torch.float64)
    return out


def sample_images(ctx: Any, num_samples: Optional[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``num_samples`` images of the fixed un-augmented view of the train split
    (None = all of it), as batches from ``ctx.sample_batches``."""
    if num_samples is None:
        return ctx.sample_batches(2**62, "train")
    first = ctx.sample_batches(1, "train")
    if not first:
        return []
    per_batch = first[0][0].shape[0]
    return ctx.sample_batches(-(-int(num_samples) // per_batch), "train")


@SCORERS.register("iim", description="IIM = 1/F of each op's output maps (IS-DARTS), over 200 training images")
def iim_scorer(method: Any, ctx: Any = None) -> dict[str, torch.Tensor]:
    """The registered form: IIM (1/F, official formula) of every op at the method's current
    mixing, over the first :data:`DEFAULT_SAMPLES` images of the train split; pruned and
    ``none`` ops score 0. Needs a running search (``ctx``)."""
    if ctx is None:
        raise ValueError("the iim scorer measures the supernet on data, so it runs only during a search "
                         "(it cannot rescore a finished run's checkpoint)")
    with torch.no_grad():
        mixing = method.mixing()
    fisher = iim_statistics(ctx.supernet, mixing, sample_images(ctx, DEFAULT_SAMPLES), num_samples=DEFAULT_SAMPLES)
    return {ct: importance(f).float() for ct, f in fisher.items()}


__all__ = ["FORMULAS", "TEXTBOOK_EPS", "DEFAULT_SAMPLES", "fisher_elements", "per_sample_fisher", "importance",
           "iim_statistics", "sample_images", "iim_scorer"]
