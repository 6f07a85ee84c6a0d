"""SDARTS, Smooth DARTS (Chen & Hsieh, ICML 2020): the weight step at perturbed op weights.

DARTS (first order by default) whose weight step trains the supernet at the op weights
``softmax(alpha) + delta`` instead of ``softmax(alpha)``, which smooths the loss landscape
in alpha (and regularises its Hessian). The architecture step is DARTS's, unperturbed;
alpha itself is never changed by the perturbation.

* ``sdarts-rs`` (random smoothing): ``delta ~ U[-eps, eps]`` per entry, one draw per step.
* ``sdarts-adv`` (adversarial): ``delta`` from a few steps of L-inf PGD that maximise the
  training loss on the weight batch within ``|delta| <= eps``.

As in the official code (``xiangning-chen/SmoothDARTS``: ``sota/cnn/train_search.py``,
``nasbench201/train_search.py``, ``attacker/perturb.py``), every default below: the
perturbation is added to softmax(alpha) and each row clipped back onto the simplex
(clamped to [0, 1] and renormalised); eps grows linearly from 0.03 at epoch 0 towards 0.3;
the attack takes 7 signed-gradient steps of 2 eps / 7 from a random start, in eval mode,
and is dropped when it ended at a lower loss than the unperturbed weights; ops whose
perturbed weight is exactly 0 are not run. Every draw comes from the method's generator
(``Method.generator``), so a resumed run repeats it. docs/methods.md lists where paper
and code differ.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from pcdarts.errors import ConfigError
from pcdarts.methods.base import SearchContext
from pcdarts.methods.darts import Darts, DartsConfig
from pcdarts.nn.edges import Mixing
from pcdarts.ranges import Count, Positive, Rate
from pcdarts.registry import METHODS

ATTACKS = ("random", "pgd")
EPSILON_SCHEDULES = ("linear", "constant")
PROJECTIONS = ("clip", "none")

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class SDartsConfig(DartsConfig):
    """SDARTS on top of DARTS (the :class:`DartsConfig` fields are the architecture step's:
    first order, Adam 3e-4, (0.5, 0.999), wd 1e-3, no warm-up, as in the official code).

    Attributes:
        attack: ``random`` (SDARTS-RS) or ``pgd`` (SDARTS-ADV); the method's name sets it.
        epsilon: the largest perturbation radius (L-inf, on the op weights): 0.3.
        epsilon_start: the radius at epoch 0 under the ``linear`` schedule: 0.03.
        epsilon_schedule: ``linear``: ``epsilon_start + (epsilon - epsilon_start) * e / E`` in
            epoch e of E (the official code; it never reaches ``epsilon`` itself), or
            ``constant``: ``epsilon`` throughout.
        project: ``clip``: each perturbed row clamped to [0, 1] and divided by its sum (a row
            clamped to all zeros becomes one-hot at its largest entry), after the random draw
            and after every attack step (the official code's ``clip``); ``none``: the weights
            ``softmax(alpha) + delta`` as they are (the paper's objective).
        skip_zero_ops: ops whose perturbed weight is exactly 0 are not run in the step (nor
            in the attack's passes), so their weights get no gradient, weight decay or
            momentum and their BN statistics do not move: the official DARTS-space cell
            (``if w != 0``). The official NB201 cell runs them (the nb201 presets set false).
        pgd_steps: attack steps (7).
        pgd_step_size: the step of each attack step; None = ``2 * eps / pgd_steps``.
        pgd_random_start: start the attack from a uniform draw in the radius (projected).
        pgd_eval_mode: run the attack's passes in eval mode (BN on its running statistics,
            which the attack then leaves alone), as the official code does.
        pgd_revert: use the unperturbed weights when the attack ends at a lower training
            loss than they give (the official code's check).
    """

    attack: str = "random"
    epsilon: Rate = 0.3
    epsilon_start: Rate = 0.03
    epsilon_schedule: str = "linear"
    project: str = "clip"
    skip_zero_ops: bool = True
    pgd_steps: Count = 7
    pgd_step_size: Optional[Positive] = None
    pgd_random_start: bool = True
    pgd_eval_mode: bool = True
    pgd_revert: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, allowed in (("attack", ATTACKS), ("epsilon_schedule", EPSILON_SCHEDULES),
                              ("project", PROJECTIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"method.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class SDartsAdvConfig(SDartsConfig):
    """SDARTS-ADV: the PGD attack (7 steps of 2 eps / 7, random start)."""

    attack: str = "pgd"


def clip_rows(w: torch.Tensor, live: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The official code's projection of perturbed [E, O] op weights onto the simplex: each row
    clamped to [0, 1] and divided by its sum; a row clamped to all zeros becomes one-hot at
    its largest entry. Entries not ``live`` (removed ops) are 0."""
    if live is not None:
        w = w.masked_fill(~live, float("-inf"))
    top = F.one_hot(w.argmax(-1), w.shape[-1]).to(w.dtype)
    c = w.clamp(0, 1)
    c = torch.where(c.sum(-1, keepdim=True) > 0, c, top)
    return c / c.sum(-1, keepdim=True)


@METHODS.register("sdarts-rs", description="SDARTS-RS: the weight step at softmax(alpha) + uniform noise")
class SDarts(Darts):
    """DARTS whose weight step runs at perturbed op weights (:meth:`weight_mixing`)."""

    Config = SDartsConfig

    def epsilon_at(self, epoch: int, epochs: int) -> float:
        """The perturbation radius of ``epoch`` (0-based) of ``epochs``."""
        cfg = self.cfg
        if cfg.epsilon_schedule == "constant":
            return float(cfg.epsilon)
        return float(cfg.epsilon_start + (cfg.epsilon - cfg.epsilon_start) * epoch / epochs)

    def weight_mixing(self, ctx: SearchContext, batch: Batch) -> Mixing:
        return self.perturb(ctx, batch)[1]

    def perturb(self, ctx: SearchContext, batch: Batch) -> tuple[dict[str, torch.Tensor], Mixing]:
        """(delta per cell type, the weight step's mixing). ``|delta| <= eps`` entrywise (0 on
        removed ops); the mixing's op weights are ``project(softmax(alpha) + delta)``, or
        softmax(alpha) itself when a reverted attack set delta to 0. Edge weights (PC-DARTS
        beta) and everything else of the mixing are left as they are."""
        with torch.no_grad():
            base = self.mixing()
        eps = self.epsilon_at(ctx.epoch, ctx.epochs)
        if self.cfg.attack == "pgd":
            delta, ops = self._attack(ctx, batch, base, eps)
        else:
            with torch.no_grad():
                delta = self._uniform(base.ops, eps)
                ops = {ct: self._project(w + delta[ct], ct) for ct, w in base.ops.items()}
        return delta, self._at(base, ops)

    # ---- pieces -------------------------------------------------------------
    def _live(self, ct: str) -> Optional[torch.Tensor]:
        return None if self.op_masks is None else self.op_masks.get(ct)

    def _project(self, w: torch.Tensor, ct: str) -> torch.Tensor:
        return clip_rows(w, self._live(ct)) if self.cfg.project == "clip" else w

    def _uniform(self, ops: dict[str, torch.Tensor], eps: float) -> dict[str, torch.Tensor]:
        """U[-eps, eps] per entry from the method's generator, 0 on removed ops."""
        out = {}
        for ct, w in ops.items():
            d = torch.empty_like(w).uniform_(-eps, eps, generator=self.generator)
            live = self._live(ct)
            out[ct] = d if live is None else d * live
        return out

    def _at(self, base: Mixing, ops: dict[str, torch.Tensor]) -> Mixing:
        """``base`` with these op weights (and, with ``skip_zero_ops``, only their nonzero ops active)."""
        active = {ct: (w != 0).cpu() for ct, w in ops.items()} if self.cfg.skip_zero_ops else base.active
        return dataclasses.replace(base, ops=ops, active=active)

    def _attack(self, ctx: SearchContext, batch: Batch, base: Mixing,
                eps: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """L-inf PGD on the op weights that maximises the weight step's loss on ``batch``:
        from ``s = softmax(alpha)`` (or a projected uniform start), each step moves the point
        by ``step * sign(grad)``, clamps its offset from ``s`` to the radius and projects."""
        cfg = self.cfg
        s = {ct: w.detach() for ct, w in base.ops.items()}
        step = cfg.pgd_step_size if cfg.pgd_step_size is not None else 2 * eps / cfg.pgd_steps
        modules = [m for m in (ctx.supernet, ctx.objective) if isinstance(m, nn.Module)]
        modes = [m.training for m in modules]
        if cfg.pgd_eval_mode:
            for m in modules:
                m.eval()
        try:
            with torch.no_grad():
                before = self.loss(ctx, batch, self._at(base, s), "weight")[0].detach()
                if cfg.pgd_random_start:
                    delta = self._uniform(s, eps)
                    point = {ct: self._project(w + delta[ct], ct) for ct, w in s.items()}
                else:
                    delta = {ct: torch.zeros_like(w) for ct, w in s.items()}
                    point = dict(s)
            for _ in range(cfg.pgd_steps):
                leaves = {ct: w.detach().requires_grad_() for ct, w in point.items()}
                loss = self.loss(ctx, batch, self._at(base, leaves), "weight")[0]
                grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
                grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, leaves.values())]
                ctx.all_reduce_grads(grads)  # one attack for the global batch under torchrun
                with torch.no_grad():
                    for (ct, w), g in zip(point.items(), grads):
                        delta[ct] = (w + step * g.sign() - s[ct]).clamp(-eps, eps)
                    point = {ct: self._project(w + delta[ct], ct) for ct, w in s.items()}
            with torch.no_grad():
                after = self.loss(ctx, batch, self._at(base, point), "weight")[0].detach()
        finally:
            for m, training in zip(modules, modes):
                m.train(training)
        if cfg.pgd_revert:
            losses = torch.stack([before, after])
            ctx.all_reduce_grads([losses])
            weaker = losses[0] > losses[1]  # a tensor: no host sync
            delta = {ct: torch.where(weaker, torch.zeros_like(d), d) for ct, d in delta.items()}
            point = {ct: torch.where(weaker, s[ct], w) for ct, w in point.items()}
        return delta, point


@METHODS.register("sdarts-adv", description="SDARTS-ADV: the weight step at softmax(alpha) + a PGD attack")
class SDartsAdv(SDarts):
    """SDARTS with the adversarial perturbation (``attack: pgd``)."""

    Config = SDartsAdvConfig


__all__ = ["SDarts", "SDartsAdv", "SDartsConfig", "SDartsAdvConfig", "clip_rows"]
