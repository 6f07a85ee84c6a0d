"""The objective interface: supernet + batch + mixing -> (loss, metrics).

An objective owns its forward, so it can read more than logits (a reconstruction
objective reads the supernet's stage outputs through ``supernet.forward_features``).
It is an ``nn.Module``: its parameters (a decoder, say) join the weight optimiser and
its state goes into the checkpoint. Metrics are detached device tensors with at least
``n`` (samples); ``correct`` (top-1 hits) when accuracy means something.

Like a method, an objective registers with its own frozen config dataclass (``Config``,
the ``objective:`` section of a search config, defaults the authors' values) and is built
by :meth:`Objective.build` from that config and an :class:`ObjectiveSetup` (the supernet,
the input shape, the run seed: what a decoder or a mask generator needs to know).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from pcdarts import utils
from pcdarts.nn.edges import Mixing

Batch = tuple[torch.Tensor, torch.Tensor]


def stage_features(supernet: nn.Module, x: torch.Tensor, mixing: Mixing) -> list[torch.Tensor]:
    """The supernet's ``forward_features(x, mixing)`` outputs, whether ``supernet`` is the bare
    supernet or the module the Searcher's weight step calls under torchrun (a
    DistributedDataParallel wrapper of :class:`SupernetCall`, whose forward takes
    ``features=True``, so that DDP sees the call and averages the gradients)."""
    direct = getattr(supernet, "forward_features", None)
    if direct is not None:
        return direct(x, mixing)
    return supernet(x, mixing, features=True)


class SupernetCall(nn.Module):
    """``forward(x, mixing, features=False)``: the supernet's logits, or with ``features`` its
    ``forward_features`` outputs; what DistributedDataParallel wraps, so that an objective that
    reads stage outputs (:func:`stage_features`) still goes through DDP's forward."""

    def __init__(self, supernet: nn.Module) -> None:
        super().__init__()
        self.supernet = supernet

    def forward(self, x: torch.Tensor, mixing: Mixing, features: bool = False) -> Any:
        return self.supernet.forward_features(x, mixing) if features else self.supernet(x, mixing)


@dataclass(frozen=True)
class NoOptions:
    """The config of an objective without options (an ``objective:`` section with only ``name``)."""


@dataclass
class ObjectiveSetup:
    """What an objective may read when it is built (:meth:`Objective.build`).

    Attributes:
        supernet: the bare supernet on its device (not a DDP or compiled wrapper), already
            prepared by the method and pruned by ``search.prune``.
        space: the search space (:class:`pcdarts.spaces.SearchSpace`); space_cfg: its config.
        input_shape: (channels, height, width) of one input image.
        num_classes: classes of the data (1 for an unlabelled set).
        device: where the objective lives.
        seed: the run seed (``run.seed``); an objective that draws random numbers seeds its own
            generator from it and keeps the generator's state in its ``state_dict``.
    """

    supernet: nn.Module
    space: Any
    space_cfg: Any
    input_shape: tuple[int, int, int]
    num_classes: int
    device: torch.device
    seed: int = 0

    def uniform_mixing(self) -> Mixing:
        """Equal weights on every op of every edge (a mixing that needs no method and draws nothing)."""
        E, O = self.space.arch_shape(self.space_cfg)
        return Mixing(ops={ct: torch.full((E, O), 1.0 / O, device=self.device) for ct in self.space.cell_types})

    def feature_shapes(self) -> list[tuple[int, int, int]]:
        """(channels, height, width) of each output of ``supernet.forward_features``: one probe
        forward of two blank images at uniform mixing, in eval mode (no BN statistics move),
        without gradients and with torch's random state put back (random channel masks draw
        from it), so building an objective never changes the search."""
        net = self.supernet
        modes = [(m, m.training) for m in net.modules()]
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            net.eval()
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                x = torch.zeros((2, *self.input_shape), device=self.device)
                feats = net.forward_features(x, self.uniform_mixing())
        finally:
            for m, mode in modes:
                m.training = mode
        return [(int(f.shape[1]), int(f.shape[2]), int(f.shape[3])) for f in feats]


@dataclass
class EpochEnd:
    """What :meth:`Objective.on_epoch_end` may use (built by the Searcher on rank 0).

    Attributes:
        epoch: the epoch that just ended (0-based); epochs: the search's epochs.
        run_dir: the run directory.
        plots: ``run.plots``: draw pictures only when it is on.
        supernet: the bare supernet (training mode; an objective that runs it switches to
            eval mode and back, so that no BN statistic moves).
        batch: ``batch()`` -> the first batch of a fixed, un-augmented view of the architecture
            split (made on call; its labels are whatever the data has).
        mixing: ``mixing()`` -> the method's current mixing.
    """

    epoch: int
    epochs: int
    run_dir: Path
    plots: bool
    supernet: nn.Module
    batch: Callable[[], Batch]
    mixing: Callable[[], Mixing]


class Objective(nn.Module):
    """Base class of search objectives (register subclasses in ``OBJECTIVES``).

    Class attributes:
        Config: the frozen config dataclass of the ``objective:`` section (fields annotated
            with the range aliases of :mod:`pcdarts.ranges`; defaults the authors' values).
        needs_labels: whether the objective reads the labels; a set without labels
            (``--data unlabelled:DIR``) is refused for one that does.
    """

    Config: type = NoOptions
    needs_labels = True

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Checks of the whole search config (``cfg``) that involve this objective's fields
        (``cfg.objective``) and other sections; raise ConfigError. Called by ``config.validate``."""

    @classmethod
    def build(cls, cfg: Any, setup: ObjectiveSetup) -> "Objective":
        """The objective for the run: ``cfg`` is its ``Config`` instance, ``setup`` what it may
        read (:class:`ObjectiveSetup`). Default: ``cls()`` (an objective without options)."""
        return cls()

    def forward(self, supernet: nn.Module, batch: Batch, mixing: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def on_epoch_end(self, end: EpochEnd) -> None:
        """Called by the Searcher at each epoch end on rank 0, after the history line is written
        (e.g. to draw a picture into ``end.run_dir``). Every random state is put back after it
        (:func:`epoch_end`), so nothing here changes the search. Default: nothing."""


def build_objective(name: str, cfg: Any, setup: ObjectiveSetup) -> Objective:
    """The registered objective ``name`` built from its config, on ``setup.device``."""
    from pcdarts.registry import OBJECTIVES
    return OBJECTIVES.get(name).build(cfg, setup).to(setup.device)


def epoch_end(objective: Objective, end: EpochEnd, generators: Sequence[torch.Generator] = ()) -> None:
    """Run ``objective.on_epoch_end(end)`` without gradients, then put back torch's, numpy's
    and Python's random states and those of ``generators`` (the run's architecture generator):
    a hook that draws (a method's mixing, masks of a picture) leaves the search, and its
    exact resume, as they were."""
    if type(objective).on_epoch_end is Objective.on_epoch_end:
        return  # nothing to do: not even a state copy
    rng, saved = utils.rng_state(), [g.get_state() for g in generators]
    try:
        with torch.no_grad():
            objective.on_epoch_end(end)
    finally:
        utils.set_rng_state(rng)
        for g, state in zip(generators, saved):
            g.set_state(state)


__all__ = ["Objective", "Batch", "NoOptions", "ObjectiveSetup", "EpochEnd", "build_objective", "epoch_end"]

