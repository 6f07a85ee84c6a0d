"""The method interface: the architecture state, its optimiser, and the Mixing it emits each step.

A method owns its architecture parameters (registered ``nn.Parameter``s kept out of
the weight optimiser, weight decay and gradient clipping), implements ``arch_step``
and a small closed set of hooks. Each method registers with its own frozen config
dataclass whose defaults are the authors' values. No data loading or search-loop
logic here.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Optional, Sequence

import torch
import torch.nn as nn

from pcdarts.nn.edges import Mixing


@dataclass
class WeightStepInfo:
    """Read-only view of the weight optimiser that second-order DARTS needs for its virtual step."""

    lr: float
    momentum: float
    weight_decay: float
    momentum_buffers: list[Optional[torch.Tensor]]


@dataclass
class SearchContext:
    """What hooks and arch steps may use; built by the Searcher.

    Attributes:
        supernet: the (possibly DDP-wrapped) supernet; call as ``supernet(x, mixing)``.
        objective: ``objective(supernet, batch, mixing) -> (loss, metrics)`` (an
            :class:`pcdarts.objectives.base.Objective`); metrics hold ``n`` and, for
            classification, ``correct``.
        weight_params: the supernet weights, in optimiser order.
        weight_step_info: returns the current :class:`WeightStepInfo`.
        autocast: context-manager factory for mixed precision (a no-op on CPU).
        epoch: the current epoch (0-based).
        epochs: the search's total epochs; steps_per_epoch: weight steps per epoch.
        sample_batches: ``sample_batches(n, split)`` -> the first ``n`` batches of a fixed,
            un-augmented, unshuffled view of the ``"train"`` or ``"arch"`` split, for scorers
            that need data; it never moves the training loaders.
        generator: the generator every architecture random draw should use (Dirichlet
            samples, random masks), seeded from the run seed and kept in the checkpoint.
        prune: ``prune(masks)`` removes the ops whose mask entry (cell type -> [E, O]) is
            False from the supernet mid-search: the Searcher frees them, rebuilds the weight
            optimiser (momentum carried for the surviving weights) and keeps the schedule
            on the global epoch; the masks go into the checkpoint, so a resume continues exactly.
        widen: ``widen(k)`` lowers the partial-channel factor to ``k`` mid-search (every op
            rebuilt on C/k channels with its weights copied in, momentum widened alike).
        all_reduce_grads: averages architecture gradients across processes (no-op on one).
    """

    supernet: nn.Module
    objective: Callable[..., tuple[torch.Tensor, dict[str, Any]]]
    weight_params: list[nn.Parameter]
    weight_step_info: Callable[[], WeightStepInfo]
    autocast: Callable[[], ContextManager[Any]] = contextlib.nullcontext
    epoch: int = 0
    epochs: int = 1
    steps_per_epoch: int = 1
    generator: Optional[torch.Generator] = None
    sample_batches: Callable[[int, str], list[tuple[torch.Tensor, torch.Tensor]]] = lambda n, split: []
    prune: Callable[[dict[str, torch.Tensor]], None] = lambda masks: None
    widen: Callable[[int], None] = lambda k: None
    all_reduce_grads: Callable[[Sequence[torch.Tensor]], None] = lambda grads: None


def apply_arch_grads(ctx: SearchContext, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                     grads: Sequence[torch.Tensor], grad_clip: float = 0.0) -> None:
    """The architecture update every gradient-based method makes: the gradients averaged across
    processes (``ctx.all_reduce_grads``), set as ``.grad``, their norm clipped to ``grad_clip``
    (0 = off), one optimiser step, gradients cleared."""
    grads = list(grads)
    ctx.all_reduce_grads(grads)
    for p, g in zip(params, grads):
        p.grad = g.detach().clone()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class Method:
    """Base class. Subclasses set ``Config`` and override what differs."""

    Config: type = object
    # a multi-level method owns its step: the Searcher calls step() with a batch of each
    # named data stream it declares, instead of arch_step + weight step
    owns_step = False
    data_streams: tuple[str, ...] = ("train", "arch")
    # the generator of every architecture random draw; the one assembly sets it (None = torch's default)
    generator: Optional[torch.Generator] = None
    has_arch = True          # has architecture parameters updated by arch_step
    needs_arch_split = True  # needs a held-out split to train them
    # whether the op weights of arch_weights() can move during a search (learned or measured):
    # their entropy over the live ops is then reported (arch_entropy) and a run whose weights
    # stayed uniform is told so; False for weights fixed by construction (IS-DARTS's 1/|O|)
    op_weights_move = True

    def __init__(self, cfg: Any, space: Any, space_cfg: Any, device: torch.device | str = "cpu") -> None:
        self.cfg, self.space, self.space_cfg = cfg, space, space_cfg
        self.node_edges = space.node_edges(space_cfg)
        self.arch = nn.Module()  # a Module, so the arch state has a state_dict and a device
        self.arch.to(device)

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Checks of the whole search config (``cfg``) that involve this method's fields and
        other sections (e.g. a K that must divide space.C); raise ConfigError. Called by
        ``config.validate``."""

    @classmethod
    def default_k(cls, cfg: Any) -> int:
        """The partial-channel factor this method uses when ``space.k`` is not set."""
        return 1

    @classmethod
    def supernet_options(cls, cfg: Any) -> dict[str, Any]:
        """Extra keyword arguments of ``space.build_supernet`` this method needs (e.g.
        ``{"aux_skip": True}`` for DARTS-); the one assembly (:mod:`pcdarts.search.build`) passes them on."""
        return {}

    def prepare_supernet(self, supernet: nn.Module, input_shape: tuple[int, int, int]) -> None:
        """Transform the freshly built supernet in place before anything reads its structure
        (e.g. remove the ops that are not candidates, reparametrise weights: MSR-DARTS's
        spectral norm). The one assembly (:func:`pcdarts.search.build.build_components`,
        used by the Searcher, the planner, ``derive`` and ``ws-analysis --edge-check``) calls it
        once, right after the supernet (on its device) and the method exist and before the weight
        optimiser is built and a checkpoint is loaded, so both see the final structure. ``input_shape``
        is (channels, height, width) of one input image. Default: nothing."""

    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """The supernet's op masks (cell type -> [E, O] booleans, False = removed) when the
        search starts: the one assembly calls it once, after :meth:`prepare_supernet` and the
        zero-shot pruning of ``search.prune`` (docs/methods.md, "Zero-shot pruning"), on new and
        resumed runs alike, before a checkpoint is loaded. A method whose mixing spans every op
        (a softmax over alpha) leaves the removed ones out of it; one with masks of its own ANDs
        them in.
        Default: nothing (every removed op is simply never run)."""

    # ---- architecture state ------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.arch.parameters())

    def mixing(self) -> Mixing:
        raise NotImplementedError

    def weight_mixing(self, ctx: "SearchContext", batch: tuple[torch.Tensor, torch.Tensor]) -> Mixing:
        """The mixing the weight step trains the supernet weights at, on its ``batch``; it
        must carry no graph to the architecture state. Default: :meth:`mixing` under
        ``no_grad``. A method that trains the weights at other mixing weights than its
        architecture's (SDARTS: softmax(alpha) perturbed within a radius) overrides it. Any
        random draw comes from :attr:`generator`, so a resumed run repeats it. ``ctx.supernet``
        is the bare supernet (never the DDP wrapper), so extra passes here (an attack) take
        no part in the weight gradients; average what they compute with ``ctx.all_reduce_grads``."""
        with torch.no_grad():
            return self.mixing()

    def is_arch_active(self, epoch: int) -> bool:
        """Whether the architecture is trained in ``epoch`` (and an arch batch is drawn)."""
        return self.has_arch

    def scores(self, ctx: Optional["SearchContext"] = None) -> dict[str, torch.Tensor]:
        """Final [E, O] scores per cell type for ``space.derive`` (``ctx`` lets a scorer read
        the supernet and data; None outside a search)."""
        raise NotImplementedError

    def divergence_hint(self) -> str:
        """What to change when the architecture step's loss or weights went non-finite."""
        return "the architecture learning rate is probably too high; lower it and start again"

    def scale_lr(self, factor: float) -> None:
        """Multiply the architecture learning rate(s) by ``factor``: the Searcher's rollback
        after a non-finite loss (``search.rollback``) halves them. Default: every param group
        of every torch optimiser held as an attribute of the method; a method whose lr lives
        elsewhere overrides this. A per-epoch arch-lr schedule sets its own lr again at the
        next epoch start."""
        for value in vars(self).values():
            if isinstance(value, torch.optim.Optimizer):
                for group in value.param_groups:
                    group["lr"] *= factor

    def derive_rule(self) -> Optional[str]:
        """The space's derive rule this method uses (None = the space's default)."""
        return None

    def arch_weights(self) -> dict[str, Any]:
        """JSON-friendly architecture weights for history.jsonl: ``{"arch_weights": {cell type: [E][O]},
        "edge_weights": {cell type: [E]}}`` (the latter only with edge normalisation)."""
        return {}

    def epoch_record(self, ctx: SearchContext) -> dict[str, Any]:
        """Extra JSON-friendly fields of the epoch's history.jsonl record (and TensorBoard
        scalars): what the method measured over the epoch beyond the Searcher's own meters,
        e.g. the loss of its own models (LBT's ``student_loss``). The Searcher calls it at the
        end of every epoch, after :meth:`on_epoch_end`, on every process alike (a method may
        combine its per-process sums there with ``ctx.all_reduce_grads``); whatever it sums
        must be in :meth:`state_dict` for a mid-epoch resume. Default: nothing."""
        return {}

    # ---- hooks (the closed set) ----------------------------------------------
    def on_search_start(self, ctx: SearchContext) -> None:
        pass

    def on_epoch_start(self, epoch: int, ctx: SearchContext) -> None:
        pass

    def on_epoch_end(self, epoch: int, ctx: SearchContext) -> None:
        pass

    def extra_loss(self, ctx: SearchContext, step: str) -> Optional[torch.Tensor]:
        """A term added to the loss of a step (``step`` is ``"weight"`` or ``"arch"``, so a
        regulariser can apply to the architecture step only); None = nothing."""
        return None

    def loss(self, ctx: SearchContext, batch: tuple[torch.Tensor, torch.Tensor],
             mixing: Mixing, step: str = "arch") -> tuple[torch.Tensor, dict[str, Any]]:
        """(loss, metrics) of the supernet at ``mixing`` on ``batch``: the objective plus
        :meth:`extra_loss`. The one loss of both steps: the weight step passes a detached
        mixing, the architecture step a live one."""
        with ctx.autocast():
            loss, metrics = ctx.objective(ctx.supernet, batch, mixing)
        extra = self.extra_loss(ctx, step)
        if extra is not None:
            loss = loss + extra
        return loss, metrics

    def arch_step(self, ctx: SearchContext, train_batch: tuple[torch.Tensor, torch.Tensor],
                  arch_batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One update of the architecture state; returns detached metrics (loss, correct)."""
        return {}

    def step(self, ctx: SearchContext, batches: dict[str, tuple[torch.Tensor, torch.Tensor]],
             weight_step: Callable[[tuple[torch.Tensor, torch.Tensor]], dict[str, Any]]) -> dict[str, Any]:
        """One whole search step of a method with ``owns_step``: ``batches[name]`` for each of
        its ``data_streams``; ``weight_step(batch)`` runs the Searcher's weight step (SGD on
        the supernet weights, meters, divergence watch) and returns the objective's metrics.
        Returns detached architecture metrics like :meth:`arch_step` (or ``{}``)."""
        raise NotImplementedError(f"{type(self).__name__} sets owns_step but has no step()")

    def state_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.arch.load_state_dict(state["arch"])


__all__ = ["Method", "SearchContext", "WeightStepInfo", "apply_arch_grads"]
