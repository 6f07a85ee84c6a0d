"""The Searcher's supernet under change and under torchrun: ops removed (``prune``) and the
partial-channel factor lowered (``widen``) mid-search, the weight optimiser rebuilt over the
live weights with its momenta and schedule carried, and the DDP wrapper with the averaging of
what DDP does not own (batch-norm statistics, an objective's own gradients).

:class:`SupernetStructure` is a mixin of :class:`pcdarts.search.searcher.Searcher`; the
optimiser and schedule come from the Searcher's ``_new_optimizer`` / ``_new_schedule`` (the
search's SGD and cosine schedule).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pcdarts.distributed import all_reduce_mean, average_buffers, wrap_ddp
from pcdarts.nn.edges import widen_edges, widen_tensor
from pcdarts.objectives.base import SupernetCall


class SupernetStructure:
    """Structure changes and DDP of a search (mixed into the Searcher)."""

    def prune(self: Any, masks: dict[str, torch.Tensor]) -> None:
        """Remove ops from the supernet mid-search (the structure seam; see ``SearchContext.prune``)."""
        self._structure_changed()  # compiled search: the rest of this step and the next one run eagerly
        self.supernet.prune(masks)
        self._rebuild_optimizer()

    def widen(self: Any, k: int) -> None:
        """Lower the partial-channel factor to ``k`` mid-search (see ``SearchContext.widen``)."""
        self._structure_changed()
        moved = widen_edges(self.supernet, k, self.arch_generator)
        if self.device.type == "cuda":
            self.supernet.to(memory_format=torch.channels_last)
        self.k = k
        self._rebuild_optimizer(moved)

    def _data_parallel(self: Any) -> nn.Module:
        """The module the weight step calls: under torchrun the supernet wrapped in PyTorch's
        DistributedDataParallel (its weight gradients averaged across ranks in the backward
        pass; unused ops allowed, since pruned and inactive ops take no part), else the
        supernet (or its compiled wrapper) itself. Architecture steps, evaluation and scorers
        call the bare supernet; their gradients are averaged by ``ctx.all_reduce_grads``."""
        if not self.dist.is_distributed:
            return self.step_supernet
        # channels_last conv weights: DDP's contiguous buckets cost a copy, not correctness
        warnings.filterwarnings("ignore", message=r"(?s).*Grad strides do not match bucket view strides")
        # SupernetCall: an objective reading stage outputs (MAE) also goes through DDP's forward;
        # batch-norm statistics are averaged wherever they are read (self._agree_buffers)
        return wrap_ddp(SupernetCall(self.supernet), self.device, find_unused=True)

    def _agree_buffers(self: Any) -> None:
        """Under torchrun: the ranks' batch-norm running statistics (supernet and objective)
        averaged, before evaluation, scorers and the epoch end read them; no-op alone."""
        if self.dist.is_distributed:
            average_buffers(self.supernet)
            average_buffers(self.objective)

    def _average_objective_grads(self: Any) -> None:
        """Average the gradients of the objective's own parameters (outside DDP) across ranks."""
        grads = [p.grad for p in self.objective.parameters() if p.grad is not None]
        if grads:
            all_reduce_mean(grads)

    def _rebuild_optimizer(self: Any, moved: Sequence[tuple[Any, Any, list]] = ()) -> None:
        """A new weight optimiser over the live weights: momentum carried for survivors
        (widened like the weights for widened ones), the schedule kept on the global epoch;
        under torchrun DDP is rebuilt over the new parameters (every rank changes alike)."""
        old = self.optimizer
        self.weight_params[:] = self._live_weights()  # the context shares the list
        self.weight_supernet = self._data_parallel()
        self.optimizer = self._new_optimizer()
        for p in self.weight_params:
            if p in old.state:
                self.optimizer.state[p] = old.state[p]
        for p_old, p_new, plan in moved:
            buf = old.state.get(p_old, {}).get("momentum_buffer")
            if buf is not None:
                self.optimizer.state[p_new] = {"momentum_buffer": widen_tensor(buf, plan)}
        schedule = self.scheduler.state_dict()
        self.scheduler = self._new_schedule()
        self.scheduler.load_state_dict(schedule)  # the global epoch, not a restart
        for group, old_group in zip(self.optimizer.param_groups, old.param_groups):
            group["lr"] = old_group["lr"]

    def _live_weights(self: Any) -> list[nn.Parameter]:
        """The weights the weight optimiser trains: the supernet's and the objective's (a decoder)."""
        return [p for m in (self.supernet, self.objective) for p in m.parameters() if p.requires_grad]


__all__ = ["SupernetStructure"]
