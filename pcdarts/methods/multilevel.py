"""The multi-level optimisation engine of the learning-by-X methods (docs/methods.md, "Learning-by-X engine").

A multi-level method declares its lower levels as :class:`Level`s: the parameters a level
trains (the supernet weights and/or the method's own extra models: a student, an audience,
task heads), its loss, and the data stream its minibatch comes from; and an upper loss of
the architecture. One search step (the method owns it through the Searcher's
``owns_step`` seam, :meth:`pcdarts.methods.base.Method.step`, so the Searcher stays one loop):

1. **architecture step**: each lower level's optimum is approximated by one virtual SGD step
   from where the previous levels left it (``W' = W - xi * grad``, the real optimiser's lr,
   momentum and weight decay, as in DARTS second order); the hypergradient of the upper
   loss flows back through that chain with finite-difference Hessian-vector products
   (:func:`pcdarts.methods.hypergrad.unrolled_grads`, the generalisation of DARTS's helper);
   Adam on alpha, exactly as DARTS (``order: 1`` drops the chain: every xi = 0);
2. **real updates**, one minibatch per level, in level order: a level that trains the
   supernet runs the Searcher's weight step (SGD, clipping, meters, divergence watch) on its
   loss; the method's own models take an SGD step of their own optimiser.

The extra models and their optimiser belong to the method: built on the supernet's device
in :meth:`prepare_supernet` (their initial weights drawn from the search's architecture
generator), kept in the method's ``state_dict`` (so a resume is exact) and never in the
Searcher's weight optimiser. Their SGD follows the weight lr's cosine schedule unless
``aux_lr`` is set. The learning-by-X methods need class logits: the objective must be
cross-entropy.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from pcdarts.errors import ConfigError
from pcdarts.methods.base import Method, SearchContext, WeightStepInfo, apply_arch_grads
from pcdarts.methods.darts import Darts, DartsConfig
from pcdarts.methods.hypergrad import UnrolledStep, unrolled_grads
from pcdarts.nn.edges import Mixing
from pcdarts.ranges import Count, Fraction, Rate
from pcdarts.runs.loop import sgd
from pcdarts.utils import at_least_float32

Batch = tuple[torch.Tensor, torch.Tensor]
LevelLoss = Callable[[SearchContext, Batch, Mixing, bool], tuple[torch.Tensor, dict[str, Any]]]


@dataclass(frozen=True)
class MultiLevelConfig(DartsConfig):
    """What every learning-by-X method shares: DARTS's architecture optimiser (Adam on alpha,
    ``arch_lr``, ``arch_betas``, ``arch_weight_decay``, ``hvp_eps``, ...) plus the SGD of the
    method's own models.

    Attributes:
        order: 2 = the unrolled chain of one-step approximations (docs/methods.md, "Learning-by-X engine"); 1 = first
            order (every xi = 0: the upper loss's gradient at the current weights; cheap).
        aux_lr: the SGD lr of the method's own models; None = the supernet weight lr of the
            step (the same cosine schedule) [UNVERIFIED: the papers' students use DARTS's settings].
        aux_momentum, aux_weight_decay, aux_grad_clip: their SGD momentum, weight decay and
            gradient-norm clip (DARTS's weight settings: 0.9, 3e-4, 5).
    """

    order: Count = 2
    aux_lr: Optional[Rate] = None
    aux_momentum: Fraction = 0.9
    aux_weight_decay: Rate = 3e-4
    aux_grad_clip: Rate = 5.0


@dataclass
class Level:
    """One lower level: what it trains, on what loss, from which data stream.

    Attributes:
        name: for messages.
        loss: ``loss(ctx, batch, mixing, outer) -> (loss, metrics)`` at the current values of
            every parameter; ``outer`` False = only the gradient of this level's own
            parameters is needed (a loss may then skip graphs to the architecture).
        stream: the data stream of its minibatch (``train`` or ``arch``).
        params: the method's own parameters it trains (a student, a head).
        trains_supernet: it also trains the supernet weights (real update: the Searcher's
            weight step on :attr:`loss`).
        select: ``batch -> batch``, the part of the stream's minibatch this level reads.
        restart, prox: see :class:`pcdarts.methods.hypergrad.UnrolledStep` (IL's proximity coupling).
        log_as: the history fields of its real updates' mean loss per epoch, ``<log_as>_loss``
            (and ``<log_as>_acc`` when the loss's metrics count ``correct``); levels with the
            same name are pooled; None = not logged (the supernet's own loss is ``train_loss``).
    """

    name: str
    loss: LevelLoss
    stream: str = "train"
    params: list[nn.Parameter] = field(default_factory=list)
    trains_supernet: bool = False
    select: Callable[[Batch], Batch] = lambda batch: batch
    restart: bool = False
    prox: float = 0.0
    log_as: Optional[str] = None


def unwrap(supernet: nn.Module) -> nn.Module:
    """The supernet module itself (not a torch.compile or DDP wrapper, nor the Searcher's
    :class:`~pcdarts.objectives.base.SupernetCall` adapter that DDP wraps under torchrun)."""
    from pcdarts.objectives.base import SupernetCall
    net = getattr(supernet, "_orig_mod", supernet)
    net = getattr(net, "module", net)
    return net.supernet if isinstance(net, SupernetCall) else net


@torch.no_grad()
def init_module_(module: nn.Module, generator: Optional[torch.Generator]) -> nn.Module:
    """PyTorch's default initialisation of every conv / linear / batch-norm layer of
    ``module``, with the draws taken from ``generator`` (None = torch's default)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                fan_in = m.weight[0].numel()
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()
    return module


def build_module(factory: Callable[[], nn.Module], device: torch.device | str,
                 generator: Optional[torch.Generator]) -> nn.Module:
    """``factory()`` built without touching the global RNG (on the meta device), moved to
    ``device`` and initialised from ``generator``."""
    with torch.device("meta"):
        module = factory()
    return init_module_(module.to_empty(device=device), generator)


def small_cnn(in_channels: int, num_classes: int, channels: int, layers: int) -> nn.Sequential:
    """A fixed small CNN (the LBT student, the LeaSE audience): ``layers`` blocks of
    conv3x3-BN-ReLU (the first at stride 1 with ``channels`` channels, each later one at
    stride 2 with twice the channels), global average pooling, one linear layer."""
    blocks: list[nn.Module] = []
    c_in, c = in_channels, channels
    for i in range(layers):
        blocks += [nn.Conv2d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1, bias=False), nn.BatchNorm2d(c),
                   nn.ReLU(inplace=True)]
        c_in, c = c, 2 * c
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """Mean cross-entropy (at least float32) and top-1 hits, like the search objective."""
    return F.cross_entropy(at_least_float32(logits), y), {"correct": (logits.detach().argmax(1) == y).sum(),
                                                         "n": y.numel()}


class MultiLevelMethod(Darts):
    """The engine (module docstring). Subclasses give :meth:`build_models`, :meth:`levels`
    and :meth:`upper`; softmax(alpha) mixing, the genotype and Adam are DARTS's."""

    Config = MultiLevelConfig
    owns_step = True
    data_streams = ("train", "arch")

    def __init__(self, cfg: MultiLevelConfig, space: Any, space_cfg: Any,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(cfg, space, space_cfg, device)
        self.models: Optional[nn.ModuleDict] = None  # built by prepare_supernet
        self.aux_optimizer: Optional[torch.optim.SGD] = None
        self._aux_scale = 1.0  # search.rollback's halvings of an explicit aux_lr
        self._pending: Optional[dict[str, Any]] = None  # a state loaded before the models exist
        self._weight_level: Optional[Level] = None  # the level whose loss the Searcher's weight step runs
        # per logged level (Level.log_as): [loss x n, correct, n] of this epoch's real updates, on the device
        self._epoch_sums: dict[str, torch.Tensor] = {}
        self._epoch_acc: dict[str, bool] = {}

    # ---- what a multi-level method defines ------------------------------------------
    def build_models(self, supernet: nn.Module, input_shape: tuple[int, int, int],
                     num_classes: int) -> dict[str, Callable[[], nn.Module]]:
        """Factories of the method's own models (name -> ``() -> nn.Module``)."""
        return {}

    def levels(self, ctx: SearchContext) -> list[Level]:
        """The lower levels, in the order they train."""
        raise NotImplementedError

    def upper(self, ctx: SearchContext, batches: dict[str, Batch], mixing: Mixing) -> tuple[torch.Tensor, dict]:
        """The upper loss of the architecture at the current (virtual) parameters and its
        metrics (``n``, ``correct``: the supernet's, for the search log)."""
        raise NotImplementedError

    # ---- the supernet's own loss (the DARTS one) ----------------------------------------
    def supernet_loss(self, ctx: SearchContext, batch: Batch, mixing: Mixing,
                      step: str = "weight") -> tuple[torch.Tensor, dict[str, Any]]:
        return Method.loss(self, ctx, batch, mixing, step)

    def supernet_level(self, name: str) -> Level:
        """The level that trains the supernet weights with its own loss on the train stream."""
        return Level(name, lambda ctx, b, mix, outer: self.supernet_loss(ctx, b, mix), stream="train",
                     trains_supernet=True)

    def model_level(self, name: str, loss: Callable[..., tuple[torch.Tensor, dict[str, Any]]]) -> Level:
        """The level that trains the method's model ``name`` with ``loss`` on the train stream
        (its loss logged per epoch as ``<name>_loss``)."""
        return Level(name, loss, stream="train", params=list(self.model(name).parameters()), log_as=name)

    def model_then_supernet(self, ctx: SearchContext, batches: dict[str, Batch], mixing: Mixing, name: str,
                            supernet_weight: float) -> tuple[torch.Tensor, dict[str, Any]]:
        """The upper loss of a supernet + one model method (LBT's student, LeaSE's audience):
        ``L(model'; D_val) + supernet_weight * L(A, W'; D_val)`` on the arch stream; metrics:
        the supernet's."""
        x, y = batches["arch"]
        model_loss, _ = cross_entropy(self.forward_model(ctx, name, x), y)
        supernet, metrics = self.supernet_loss(ctx, (x, y), mixing, "arch")
        return model_loss + supernet_weight * supernet, metrics

    def loss(self, ctx: SearchContext, batch: Batch, mixing: Mixing,
             step: str = "arch") -> tuple[torch.Tensor, dict[str, Any]]:
        """The Searcher's weight step runs the loss of the level being updated."""
        if step == "weight" and self._weight_level is not None:
            out = self._weight_level.loss(ctx, batch, mixing, False)
            self._observe(self._weight_level, *out)
            return out
        return super().loss(ctx, batch, mixing, step)

    # ---- the levels' losses per epoch (Method.epoch_record) ---------------------------------
    def _observe(self, level: Level, loss: torch.Tensor, metrics: dict[str, Any]) -> None:
        """Add one real update's loss (and hits) to its level's sums of the epoch (no host sync)."""
        if level.log_as is None:
            return
        n = metrics.get("n", 0)
        sums = self._epoch_sums.get(level.log_as)
        if sums is None:
            sums = self._epoch_sums[level.log_as] = torch.zeros(3, dtype=torch.float64, device=loss.device)
        sums[0] += loss.detach().double() * n
        if "correct" in metrics:
            sums[1] += metrics["correct"]
            self._epoch_acc[level.log_as] = True
        sums[2] += n

    def on_epoch_start(self, epoch: int, ctx: SearchContext) -> None:
        super().on_epoch_start(epoch, ctx)
        self._epoch_sums, self._epoch_acc = {}, {}

    def epoch_record(self, ctx: SearchContext) -> dict[str, Any]:
        """``<log_as>_loss`` (and ``_acc``, in %) of every logged level: the mean over the
        epoch's real updates, summed over the processes."""
        names = list(dict.fromkeys(lv.log_as for lv in self.levels(ctx) if lv.log_as is not None))
        if not names:
            return {}
        device = next(self.arch.parameters()).device
        sums = torch.stack([self._epoch_sums.get(n, torch.zeros(3, dtype=torch.float64, device=device)).to(device)
                            for n in names])
        ctx.all_reduce_grads([sums])  # a mean over the processes: the ratios are those of the sums
        out: dict[str, Any] = {}
        for name, (loss, correct, n) in zip(names, sums.tolist()):
            if n > 0:
                out[f"{name}_loss"] = loss / n
                if self._epoch_acc.get(name):
                    out[f"{name}_acc"] = 100.0 * correct / n
        return out

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        super().check_config(cfg)
        objective = getattr(cfg, "objective_name", "cross-entropy")
        if objective != "cross-entropy":
            raise ConfigError(f"method {cfg.method_name!r} needs class logits (teacher, explainer and task "
                              f"losses are cross-entropies); use --objective cross-entropy, not {objective!r}")

    # ---- the method's own models ----------------------------------------------------------
    def prepare_supernet(self, supernet: nn.Module, input_shape: tuple[int, int, int]) -> None:
        """Builds the method's own models on the supernet's device (initial weights from the
        architecture generator) and their SGD; applies a state loaded before they existed."""
        super().prepare_supernet(supernet, input_shape)
        net = unwrap(supernet)
        device = next(net.parameters()).device
        num_classes = int(net.classifier.out_features)
        factories = self.build_models(net, input_shape, num_classes)
        self.models = nn.ModuleDict({name: build_module(f, device, self.generator) for name, f in factories.items()})
        params = list(self.models.parameters())
        # its lr is set before each step (aux_lr)
        self.aux_optimizer = sgd(params, lr=0.0, momentum=self.cfg.aux_momentum,
                                 weight_decay=self.cfg.aux_weight_decay) if params else None
        if self._pending is not None:
            self._load_models(self._pending)
            self._pending = None

    def aux_lr(self, ctx: SearchContext) -> float:
        if self.cfg.aux_lr is None:
            return ctx.weight_step_info().lr
        return self.cfg.aux_lr * self._aux_scale

    def aux_step_info(self, ctx: SearchContext, params: list[nn.Parameter]) -> WeightStepInfo:
        """The virtual step of the method's own parameters: their optimiser's settings."""
        assert self.aux_optimizer is not None
        bufs = [self.aux_optimizer.state.get(p, {}).get("momentum_buffer") for p in params]
        return WeightStepInfo(lr=self.aux_lr(ctx), momentum=self.cfg.aux_momentum,
                              weight_decay=self.cfg.aux_weight_decay, momentum_buffers=bufs)

    def scale_lr(self, factor: float) -> None:
        super().scale_lr(factor)
        self._aux_scale *= factor

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        if self.models is not None:
            out["models"] = self.models.state_dict()
            if self.aux_optimizer is not None:
                out["aux_optimizer"] = self.aux_optimizer.state_dict()
        elif self._pending is not None:
            out.update({k: v for k, v in self._pending.items() if k in ("models", "aux_optimizer")})
        out["aux_scale"] = self._aux_scale
        out["epoch_sums"] = {k: v.detach().cpu().clone() for k, v in self._epoch_sums.items()}
        out["epoch_acc"] = dict(self._epoch_acc)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._aux_scale = float(state.get("aux_scale", 1.0))
        device = next(self.arch.parameters()).device
        self._epoch_sums = {k: v.to(device) for k, v in state.get("epoch_sums", {}).items()}
        self._epoch_acc = dict(state.get("epoch_acc", {}))
        if self.models is None:  # e.g. ``pcdarts derive``: no supernet, so no models (not needed there)
            self._pending = state
        else:
            self._load_models(state)

    def _load_models(self, state: dict[str, Any]) -> None:
        assert self.models is not None
        if "models" in state:
            self.models.load_state_dict(state["models"])
        if self.aux_optimizer is not None and "aux_optimizer" in state:
            self.aux_optimizer.load_state_dict(state["aux_optimizer"])

    # ---- the step -------------------------------------------------------------------------
    def step(self, ctx: SearchContext, batches: dict[str, Batch],
             weight_step: Callable[[Batch], dict[str, Any]]) -> dict[str, Any]:
        """The architecture step (while the architecture trains), then one real update per level."""
        out: dict[str, Any] = {}
        if self.is_arch_active(ctx.epoch):
            out = self._arch_step(ctx, batches)
        for level in self.levels(ctx):
            self._train_level(ctx, level, level.select(batches[level.stream]), weight_step)
        return out

    def arch_step(self, ctx: SearchContext, train_batch: Batch, arch_batch: Batch) -> dict[str, torch.Tensor]:
        """The architecture step alone (what the memory planner measures)."""
        return self._arch_step(ctx, {"train": train_batch, "arch": arch_batch})

    def _arch_step(self, ctx: SearchContext, batches: dict[str, Batch]) -> dict[str, Any]:
        params = self.arch_parameters()
        if self.cfg.order == 1:
            loss, metrics = self.upper(ctx, batches, self.mixing())
            grads = list(torch.autograd.grad(loss, params, allow_unused=True))
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        else:
            steps = [self._unrolled(ctx, level, level.select(batches[level.stream])) for level in self.levels(ctx)]
            grads, loss, metrics = unrolled_grads(steps, lambda: self.upper(ctx, batches, self.mixing()), params,
                                                  hvp_eps=self.cfg.hvp_eps, protect=[unwrap(ctx.supernet), self.models])
        apply_arch_grads(ctx, self.optimizer, params, grads, self.cfg.arch_grad_clip)
        return {"loss": loss.detach(), **metrics}

    def _unrolled(self, ctx: SearchContext, level: Level, batch: Batch) -> UnrolledStep:
        """The level as one step of the unrolled chain: the weight optimiser's settings for
        the supernet weights, the method's optimiser's for its own parameters."""
        infos: list[tuple[list[nn.Parameter], WeightStepInfo]] = []
        if level.trains_supernet:
            infos.append((list(ctx.weight_params), ctx.weight_step_info()))
        if level.params:
            infos.append((list(level.params), self.aux_step_info(ctx, level.params)))
        params = [p for ps, _ in infos for p in ps]

        def per_tensor(attr: str) -> list[float]:
            return [float(getattr(info, attr)) for ps, info in infos for _ in ps]

        bufs = [b for _, info in infos for b in info.momentum_buffers]
        return UnrolledStep(params, lambda outer: level.loss(ctx, batch, self.mixing(), outer)[0],
                            lr=per_tensor("lr"), momentum=per_tensor("momentum"),
                            weight_decay=per_tensor("weight_decay"), momentum_buffers=bufs,
                            restart=level.restart, prox=level.prox)

    def _train_level(self, ctx: SearchContext, level: Level, batch: Batch,
                     weight_step: Callable[[Batch], dict[str, Any]]) -> None:
        """One real SGD update of the level's parameters on its minibatch."""
        if batch[1].numel() == 0:
            return  # none of its examples in this minibatch
        for p in level.params:
            p.grad = None
        if level.trains_supernet:
            self._weight_level = level
            try:
                weight_step(batch)  # the Searcher's step: backward reaches the level's own params too
            finally:
                self._weight_level = None
        elif level.params:
            with torch.no_grad():
                mixing = self.mixing()
            loss, metrics = level.loss(ctx, batch, mixing, False)
            self._observe(level, loss, metrics)
            if loss.requires_grad:
                grads = torch.autograd.grad(loss, level.params, allow_unused=True)
                for p, g in zip(level.params, grads):
                    p.grad = g
        own = [p for p in level.params if p.grad is not None]
        if not own or self.aux_optimizer is None:
            return
        ctx.all_reduce_grads([p.grad for p in own])
        if self.cfg.aux_grad_clip > 0:
            nn.utils.clip_grad_norm_(own, self.cfg.aux_grad_clip)
        for group in self.aux_optimizer.param_groups:
            group["lr"] = self.aux_lr(ctx)
        self.aux_optimizer.step()
        self.aux_optimizer.zero_grad(set_to_none=True)

    def model(self, name: str) -> nn.Module:
        assert self.models is not None, "the method's models are built by prepare_supernet"
        return self.models[name]

    def forward_model(self, ctx: SearchContext, name: str, x: torch.Tensor) -> torch.Tensor:
        """Logits of one of the method's models (under the search's autocast)."""
        with ctx.autocast():
            return self.model(name)(x)


@contextlib.contextmanager
def maybe_no_grad(enabled: bool):
    """``torch.no_grad()`` when ``enabled``, else nothing."""
    with torch.no_grad() if enabled else contextlib.nullcontext():
        yield


__all__ = ["MultiLevelConfig", "MultiLevelMethod", "Level", "small_cnn", "build_module", "init_module_",
           "cross_entropy", "unwrap", "maybe_no_grad"]
