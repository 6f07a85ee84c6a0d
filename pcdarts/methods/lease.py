"""LeaSE, learning by self-explanation (Hosseini & Xie, 2021; docs/methods.md, "LeaSE"), on the multi-level engine.

Four levels: the explainer (architecture A, supernet weights W) learns on D_tr; it explains
its predictions on the train stream's images (an input-gradient saliency map of the
explainer at W'); the audience V (a fixed small CNN) learns from the explanation-weighted
images; the explainer re-learns A on the audience's validation loss plus its own,
``min_A L(V'; D_val) + gamma L(A, W'; D_val)``. Levels 2 and 3 are one: the explanation is
a differentiable function of (A, W') inside the audience's loss, so the audience's
validation loss reaches the architecture through it (second derivatives of the explainer).

Explanations (``explanation``) [mem: "per-pixel attribution or saliency"; the paper's
summary says an adversarial-attack approach]: ``saliency`` = |d logit_y / dx| (the largest
over channels, vanilla gradient), ``grad-input`` = |x * d logit_y / dx| summed over channels,
each scaled to a maximum of 1 per image, and the audience reads ``x * ((1 - mix) + mix *
map)`` (``explanation_mix``); ``adversarial`` = the audience reads ``x + adversarial_eps * g /
max|g|`` with g = d loss / dx (a differentiable FGSM-like step). The audience is validated
on the plain validation images.

The explanation differentiates through an input gradient (a double backward). The fast
supernet path's hand-written backward passes are not twice differentiable (on the DARTS
space they give wrong second derivatives without an error), so the explanation pass always
runs the reference forward (``supernet.reference()``, the same parameters and modules);
every other pass runs on the fast path.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pcdarts.errors import ConfigError
from pcdarts.methods.base import SearchContext
from pcdarts.methods.multilevel import (Batch, Level, MultiLevelConfig, MultiLevelMethod, cross_entropy, small_cnn,
                                        unwrap)
from pcdarts.nn.edges import Mixing
from pcdarts.ranges import Count, Fraction, Positive, Rate
from pcdarts.registry import METHODS
from pcdarts.utils import at_least_float32

EXPLANATIONS = ("saliency", "grad-input", "adversarial")


@dataclass(frozen=True)
class LeaSEConfig(MultiLevelConfig):
    """LeaSE (docs/methods.md, "LeaSE"). Architecture optimiser and unrolling: DARTS second order's.

    Attributes:
        explainer_weight: gamma, the weight of the explainer's own validation loss [UNVERIFIED: 1].
        explanation: ``saliency``, ``grad-input`` or ``adversarial`` (module docstring) [UNVERIFIED].
        explanation_mix: how much a saliency map weights the audience's input (1 = the input
            times the map; 0 = the plain input, no explanation) [UNVERIFIED].
        adversarial_eps: the step of ``adversarial`` explanations (in normalised input units) [UNVERIFIED].
        audience_channels, audience_layers: the fixed small audience CNN
            (:func:`~pcdarts.methods.multilevel.small_cnn`) [UNVERIFIED: the paper's audience].
    """

    explainer_weight: Rate = 1.0
    explanation: str = "saliency"
    explanation_mix: Fraction = 1.0
    adversarial_eps: Positive = 0.1
    audience_channels: Count = 16
    audience_layers: Count = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.explanation not in EXPLANATIONS:
            raise ConfigError(f"method.explanation must be one of {', '.join(EXPLANATIONS)}, got {self.explanation!r}")


@METHODS.register("lease",
                  description="LeaSE: learning by self-explanation (the supernet's saliency teaches an audience)")
class LeaSE(MultiLevelMethod):
    """Explainer = the supernet (A, W); audience = a small CNN on explanation-weighted inputs."""

    Config = LeaSEConfig

    def build_models(self, supernet: nn.Module, input_shape: tuple[int, int, int],
                     num_classes: int) -> dict[str, Callable[[], nn.Module]]:
        c = self.cfg
        return {"audience": lambda: small_cnn(input_shape[0], num_classes, c.audience_channels, c.audience_layers)}

    def explain(self, ctx: SearchContext, batch: Batch, mixing: Mixing, graph: bool) -> torch.Tensor:
        """The audience's input: the batch's images weighted (or moved) by the explainer's
        explanation; differentiable in the architecture and the weights when ``graph``."""
        x, y = batch
        net = unwrap(ctx.supernet)
        reference = (net.reference("LeaSE's explanation (a double backward)") if hasattr(net, "reference")
                     else contextlib.nullcontext())
        xg = x.detach().requires_grad_()
        with torch.enable_grad(), reference, ctx.autocast():
            logits = at_least_float32(net(xg, mixing))
            if self.cfg.explanation == "adversarial":
                score = F.cross_entropy(logits, y)
            else:
                score = logits.gather(1, y[:, None]).sum()
            (g,) = torch.autograd.grad(score, xg, create_graph=graph)
        if not graph:
            g = g.detach()
        kind = self.cfg.explanation
        if kind == "adversarial":
            return x + self.cfg.adversarial_eps * g / (g.abs().amax((1, 2, 3), keepdim=True) + 1e-12)
        s = g.abs().amax(1, keepdim=True) if kind == "saliency" else (g * x).abs().sum(1, keepdim=True)
        s = s / (s.amax((2, 3), keepdim=True) + 1e-12)
        mix = self.cfg.explanation_mix
        return x * ((1 - mix) + mix * s)

    def audience_loss(self, ctx: SearchContext, batch: Batch, mixing: Mixing,
                      outer: bool) -> tuple[torch.Tensor, dict[str, Any]]:
        """The audience's loss on the explained images of the batch."""
        return cross_entropy(self.forward_model(ctx, "audience", self.explain(ctx, batch, mixing, outer)), batch[1])

    def levels(self, ctx: SearchContext) -> list[Level]:
        return [self.supernet_level("explainer"), self.model_level("audience", self.audience_loss)]

    def upper(self, ctx: SearchContext, batches: dict[str, Batch], mixing: Mixing) -> tuple[torch.Tensor, dict]:
        """``L(V'; D_val) + gamma L(A, W'; D_val)``; metrics: the explainer's."""
        return self.model_then_supernet(ctx, batches, mixing, "audience", self.cfg.explainer_weight)


__all__ = ["LeaSE", "LeaSEConfig"]
