"""The one assembly of a search's components, and the loading of a run directory into them.

:func:`build_components` builds, always in this order:

1. the space (``space.name``);
2. the supernet, with the method's supernet options (``Method.supernet_options``, e.g. DARTS-'s
   auxiliary skip), the partial-channel factor in force and, for a run being continued, the op
   masks and K of its checkpoint, on its device (:func:`pcdarts.spaces.build.make_supernet`);
3. the method, with its real config (``cfg.method``) and the architecture generator of the run
   (seeded ``run.seed + 2``; every architecture random draw comes from it);
4. ``method.prepare_supernet`` (e.g. MSR-DARTS's spectral norms), before anything reads the
   supernet's structure;
5. the masks: a new run with ``search.prune`` is pruned zero-shot (given ``sample_batches``),
   then the method learns the supernet's masks (:func:`pcdarts.search.prune.prune_at_start`);
6. the objective (it may size itself from the prepared, pruned supernet);
7. the weight parameters: the trainable parameters of the supernet and of the objective.

Its callers: the :class:`~pcdarts.search.searcher.Searcher` (hence the benchmarks, which run real
Searchers), the memory planner's measured step, and :func:`load_run`, which ``pcdarts derive`` and
``pcdarts ws-analysis --edge-check`` use. Nothing else builds a supernet or calls
``prepare_supernet``; the weight-sharing analysis builds its single-path supernets through the
same supernet stage (:mod:`pcdarts.spaces.build`, in a layer it may import).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import torch.nn as nn

from pcdarts import runs
from pcdarts.methods import Method
from pcdarts.nn.impl import resolve_impl
from pcdarts.objectives.base import Objective, ObjectiveSetup, build_objective
from pcdarts.registry import METHODS
from pcdarts.search.config import Config, load_config_file
from pcdarts.search.prune import PruneReport, prune_at_start
from pcdarts.spaces import SearchSpace, get_space
from pcdarts.spaces.build import make_supernet

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Components:
    """What :func:`build_components` builds (see the module docstring for the order).

    Attributes:
        cfg: the config they were built from.
        space, supernet, method, objective: the search's parts (the bare supernet, on ``device``).
        weight_params: the weights the weight optimiser trains (supernet's and objective's).
        k: the partial-channel factor the supernet was built with.
        impl: the supernet's path in force (``fast`` or ``reference``; ``auto`` resolved).
        generator: the architecture generator (also ``method.generator``).
        input_shape: (channels, height, width) of one input image; num_classes: the data's.
        device: where everything lives.
        prune_report: the zero-shot pruning of a new run (``search.prune``), else None.
    """

    cfg: Config
    space: SearchSpace
    supernet: nn.Module
    method: Method
    objective: Objective
    weight_params: list[nn.Parameter]
    k: int
    impl: str
    generator: torch.Generator
    input_shape: tuple[int, int, int]
    num_classes: int
    device: torch.device
    prune_report: Optional[PruneReport] = None

    def derive(self, ctx: Any = None) -> Any:
        """The genotype of the method's current scores over the supernet's live ops."""
        return self.space.derive(self.method.scores(ctx), getattr(self.supernet, "masks", None),
                                 self.method.derive_rule())


def checkpoint_structure(checkpoint: Optional[dict[str, Any]], cfg: Config
                         ) -> tuple[Optional[dict[str, torch.Tensor]], int]:
    """(op masks, K) of a search checkpoint (None, ``cfg.k`` without one): the structure a
    continued run's supernet is built with (ops pruned, K widened mid-search)."""
    if checkpoint is None:
        return None, cfg.k
    return checkpoint.get("masks") or None, int(checkpoint.get("structure", {}).get("k", cfg.k))


def build_components(cfg: Config, *, input_shape: tuple[int, int, int], num_classes: int,
                     device: Union[torch.device, str] = "cpu", checkpoint: Optional[dict[str, Any]] = None,
                     sample_batches: Optional[Callable[[int, str], list[Batch]]] = None) -> Components:
    """The search's components of ``cfg`` for data of ``input_shape`` and ``num_classes``.

    Args:
        cfg: the search config (method and objective with their own configs).
        input_shape: (channels, height, width) of one input image.
        num_classes: classes of the data (1 for an unlabelled set).
        device: where to build.
        checkpoint: a search checkpoint whose structure (op masks, K) the supernet takes; its
            states are not loaded here (the Searcher loads them with its optimisers, :func:`load_run`
            with :func:`load_state`).
        sample_batches: ``sample_batches(n, split)``, the first ``n`` fixed batches of a split: a
            new run (no ``checkpoint``) with ``search.prune`` is pruned zero-shot on them. None:
            no pruning (the masks are the checkpoint's, or none).
    """
    device = torch.device(device)
    space = get_space(cfg.space.name)
    method_cls = METHODS.get(cfg.method_name)
    masks, k = checkpoint_structure(checkpoint, cfg)
    supernet = make_supernet(space, cfg.space, k=k, num_classes=num_classes, in_channels=input_shape[0],
                             device=device, masks=masks, options=method_cls.supernet_options(cfg.method))
    method: Method = method_cls(cfg.method, space, cfg.space, device)
    generator = torch.Generator(device=device).manual_seed(cfg.run.seed + 2)
    method.generator = generator
    method.prepare_supernet(supernet, tuple(input_shape))
    report = prune_at_start(supernet, method, cfg, sample_batches if checkpoint is None else None)
    objective = build_objective(cfg.objective_name, cfg.objective, ObjectiveSetup(
        supernet, space, cfg.space, tuple(input_shape), num_classes, device, cfg.run.seed))
    weights = [p for m in (supernet, objective) for p in m.parameters() if p.requires_grad]
    return Components(cfg, space, supernet, method, objective, weights, k, resolve_impl(cfg.space.impl, device.type),
                      generator, tuple(input_shape), num_classes, device, report)


def load_state(parts: Components, checkpoint: dict[str, Any]) -> None:
    """A search checkpoint's supernet, method and objective state and architecture generator into ``parts``."""
    parts.supernet.load_state_dict(checkpoint["supernet"])
    parts.method.load_state_dict(checkpoint["method"])
    parts.objective.load_state_dict(checkpoint.get("objective", {}))
    if "arch_rng" in checkpoint:
        parts.generator.set_state(checkpoint["arch_rng"])


def run_shape(run_dir: Path, checkpoint: Optional[dict[str, Any]] = None,
              cfg: Optional[Config] = None) -> tuple[tuple[int, int, int], int]:
    """(input shape, classes) of a search run's data: from its ``manifest.json`` (``network``);
    a run without it (older versions) from the checkpoint's stem and classifier and the config."""
    try:
        shape = json.loads((run_dir / "manifest.json").read_text()).get("network") or {}
    except (OSError, ValueError):
        shape = {}
    if {"num_classes", "in_channels", "input_size"} <= set(shape):
        side = int(shape["input_size"])
        return (int(shape["in_channels"]), side, side), int(shape["num_classes"])
    state = (checkpoint or {}).get("supernet", {})
    convs = [v for v in state.values() if getattr(v, "dim", lambda: 0)() == 4]
    in_channels = int(convs[0].shape[1]) if convs else 3
    num_classes = int(state["classifier.weight"].shape[0]) if "classifier.weight" in state else 10
    side = int(cfg.data.input_size) if cfg is not None and cfg.data.input_size else 32
    return (in_channels, side, side), num_classes


@dataclass
class LoadedRun:
    """A search run directory loaded by :func:`load_run`: its path, config, components (with
    the checkpoint's state) and the checkpoint itself (epoch, step, history position)."""

    path: Path
    cfg: Config
    parts: Components
    checkpoint: dict[str, Any] = field(repr=False, default_factory=dict)


def load_run(run_dir: Union[str, Path], *, device: Union[torch.device, str] = "cpu",
             command: str = "pcdarts derive", trust_checkpoint: bool = False) -> LoadedRun:
    """A finished or interrupted search run directory, loaded: the config from its
    ``config.yaml``, the data shape from its manifest, the components built by
    :func:`build_components` with the checkpoint's structure (masks, K), then the checkpoint's
    supernet, method and objective state and architecture generator loaded into them.

    ``command`` names the command in the one-line error of a directory that is not a search run
    or a checkpoint that cannot be read; ``trust_checkpoint`` lets a checkpoint that needs it be
    unpickled in full (``--trust-checkpoint``: an older format, from a source the user trusts).
    """
    path = runs.check_resumable(run_dir, "search", command)
    cfg = load_config_file(path / "config.yaml")
    checkpoint = runs.load_checkpoint(path / runs.CHECKPOINT, "search", command, trust=trust_checkpoint)
    input_shape, num_classes = run_shape(path, checkpoint, cfg)
    parts = build_components(cfg, input_shape=input_shape, num_classes=num_classes, device=device,
                             checkpoint=checkpoint)
    load_state(parts, checkpoint)
    return LoadedRun(path, cfg, parts, checkpoint)


__all__ = ["Components", "LoadedRun", "build_components", "checkpoint_structure", "load_run", "load_state",
           "run_shape"]
