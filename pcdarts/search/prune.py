"""Zero-shot pruning of the search space before a one-shot search ("Half Search Space is All
You Need", Rumiantsev & Coates 2025; docs/methods.md, "Zero-shot pruning").

A pre-search stage, independent of the method: ``search.prune = "PROXY[:FRACTION]"`` (e.g.
``naswot:0.5``; ``pcdarts search --prune naswot:0.5``) scores every candidate op of every
comparison subset of the freshly built supernet with a zero-cost proxy
(:mod:`pcdarts.scorers.zero_cost`), removes the lowest-ranked ``FRACTION`` of each subset
(default half) with ``supernet.prune`` (so they are never built, run or trained: the
memory saving), and hands the masks to the method (:meth:`pcdarts.methods.Method.set_masks`),
which leaves them out of its mixing: ``Mix(x) = sum_o I(o) e^a_o o(x) / sum_o' I(o') e^a_o'``.
It runs once, at the start of a new run, after ``method.prepare_supernet`` (so a method that
keeps only some ops, MSR-DARTS, is pruned among its own candidates) and before the weight
optimiser exists; a resumed run takes its masks from the checkpoint.

Choices (the paper's details are unverified; each is documented here):

* **Subsets: per edge** on every space (NB201 and the DARTS space alike): the paper encodes the
  pruned space as an indicator per op per mixed edge and the toolkit design keeps k ops per
  edge. Per edge keeps every edge alive, so a DARTS node always has inputs to derive from.
* **Candidates**: the live ops of an edge that the space's derivation can select (probed by
  :func:`selectable_ops`): on the DARTS-type spaces ``none`` is never derived and never
  built, so it is neither scored nor removed (it stays in DARTS's softmax as in plain
  DARTS); on NB201 ``none`` is a real choice and competes like the others.
* **Count**: ``round_half_up(FRACTION * n)`` of the ``n`` candidates of a subset, at most
  ``n - 1`` (DARTS space at 0.5: 4 of the 7 ops that can be derived; NB201: 3 of 5).
* **Scores** (``search.prune_mode``): the supernet at the uniform mixing over its live ops
  (what DARTS sees at initialisation, softmax of alpha ~ 0), in train mode, on the first
  ``search.prune_batch_size`` un-augmented images of the weight split; ops of one cell type
  are scored together (they share one architecture row). ``remove`` (default, TE-NAS style):
  the proxy of the supernet with that op removed from the edge; the ops whose removal leaves
  the **highest** score matter least and go first. ``keep``: the proxy of the supernet whose
  edge keeps only that op; the lowest go first. Ties: the lower op index goes first.
  Cost: one proxy evaluation per (cell type, edge, candidate): 196 on the DARTS space
  (2 x 14 x 7), 30 on NB201 (6 x 5). The proxies see real op modules (the supernet's
  reference path), never the fast path's fused kernels, so their hooks fire.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from pcdarts.distributed import all_reduce_mean, dist_info
from pcdarts.search.config import DEFAULT_FRACTION, PruneSpec, parse_prune  # noqa: F401  (parsed with the config)
from pcdarts.nn.edges import Mixing
from pcdarts.registry import PROXIES
from pcdarts.utils import progress_bar
from pcdarts.scorers import zero_cost  # noqa: F401  (registers the proxies)

PRUNE_MODES = ("remove", "keep")
Batch = tuple[torch.Tensor, torch.Tensor]


def removal_count(n: int, fraction: float) -> int:
    """Ops a subset of ``n`` candidates loses: ``round_half_up(fraction * n)``, at most ``n - 1``."""
    return max(0, min(n - 1, math.floor(fraction * n + 0.5)))


def selectable_ops(space: Any, space_cfg: Any) -> list[bool]:
    """Per primitive: can the space's (default) derivation select it? Probed with scores that
    favour that op on every edge (the DARTS rules never pick ``none``; NB201's argmax does)."""
    from pcdarts.analysis.stats import genotype_ops  # late: stats builds networks
    E, O = space.arch_shape(space_cfg)
    out = []
    for o, name in enumerate(space.primitives):
        s = torch.zeros(E, O)
        s[:, o] = 1.0
        out.append(name in genotype_ops(space.derive({ct: s for ct in space.cell_types})))
    return out


class SupernetAt(nn.Module):
    """A supernet at a fixed :class:`Mixing`, as a plain ``net(x) -> logits`` module for the
    zero-cost proxies; a fast supernet runs its reference path (real op modules, so the
    proxies' hooks fire)."""

    def __init__(self, supernet: nn.Module, mixing: Mixing) -> None:
        super().__init__()
        self.supernet = supernet
        self.mixing = mixing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reference = getattr(self.supernet, "reference", None)
        with reference("zero-cost proxy scoring (hooks on the op modules)") if reference else contextlib.nullcontext():
            return self.supernet(x, self.mixing)


def live_mixing(masks: dict[str, torch.Tensor], device: Any) -> Mixing:
    """Uniform op weights over the live ops of each edge (those of ``masks``), which alone run."""
    ops = {ct: (m.float() / m.float().sum(-1, keepdim=True).clamp(min=1.0)).to(device) for ct, m in masks.items()}
    return Mixing(ops=ops, active={ct: m.bool().cpu() for ct, m in masks.items()})


def op_scores(supernet: nn.Module, batch: Batch, proxy: str, candidates: dict[str, torch.Tensor], *,
              mode: str = "remove", seed: int = 0, progress: bool = False) -> dict[str, torch.Tensor]:
    """Per cell type, [E, O] float64 importance of every candidate op (NaN elsewhere); higher =
    keep. ``remove``: minus the proxy of the supernet without the op on that edge (of every cell
    of the type); ``keep``: the proxy of the supernet whose edge keeps only the op."""
    if mode not in PRUNE_MODES:
        raise ValueError(f"mode must be one of {PRUNE_MODES}, got {mode!r}")
    fn = PROXIES.get(proxy)
    live = {ct: m.bool().cpu().clone() for ct, m in supernet.masks.items()}
    device = next(supernet.parameters()).device
    todo = [(ct, e, o) for ct, c in candidates.items() for e, o in c.nonzero().tolist()]
    out = {ct: torch.full(tuple(m.shape), float("nan"), dtype=torch.float64) for ct, m in live.items()}
    bar = progress_bar(progress, len(todo), f"zero-shot pruning ({proxy}, {mode})", leave=False)
    try:
        for ct, e, o in todo:
            masks = {k: m.clone() for k, m in live.items()}
            if mode == "remove":
                masks[ct][e, o] = False
            else:
                masks[ct][e] = False
                masks[ct][e, o] = True
            value = float(fn(SupernetAt(supernet, live_mixing(masks, device)), batch, seed=seed))
            if math.isnan(value):
                value = float("-inf")
            out[ct][e, o] = -value if mode == "remove" else value
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out


def prune_masks(importance: dict[str, torch.Tensor], candidates: dict[str, torch.Tensor],
                live: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """The live masks after removing, on every edge, the :func:`removal_count` candidates of
    lowest importance (ties: the lower op index first)."""
    out = {}
    for ct, m in live.items():
        new = m.bool().cpu().clone()
        cand = candidates.get(ct)
        if cand is not None:
            for e in range(new.shape[0]):
                ops = [int(o) for o in cand[e].nonzero().flatten().tolist()]
                order = sorted(ops, key=lambda o: (float(importance[ct][e, o]), o))
                for o in order[:removal_count(len(ops), fraction)]:
                    new[e, o] = False
        out[ct] = new
    return out


@dataclass
class PruneReport:
    """What a zero-shot pruning pass did (printed by the Searcher, returned by :func:`zero_shot_prune`)."""

    spec: PruneSpec
    mode: str
    masks: dict[str, torch.Tensor]
    importance: dict[str, torch.Tensor]
    removed: int
    candidates: int
    live_before: int
    live_after: int
    evaluations: int
    seconds: float
    images: int
    cost_before: Optional["StepCost"] = None
    cost_after: Optional["StepCost"] = None

    def line(self) -> str:
        out = (f"zero-shot pruning ({self.spec.proxy}, {self.mode} mode, {self.images} images): removed "
               f"{self.removed} of {self.candidates} candidate ops; {self.live_after} of {self.live_before} live ops "
               f"remain ({self.evaluations} proxy evaluations, {self.seconds:.1f} s)")
        if self.cost_before is not None and self.cost_after is not None:
            out += "\n" + saving_line(self.cost_before, self.cost_after)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary for the run's manifest."""
        d: dict[str, Any] = {"prune": str(self.spec), "mode": self.mode, "removed": self.removed,
                             "candidates": self.candidates, "live_before": self.live_before,
                             "live_after": self.live_after, "seconds": round(self.seconds, 2)}
        if self.cost_before is not None and self.cost_after is not None:
            d["full"], d["pruned"] = self.cost_before.to_dict(), self.cost_after.to_dict()
        return d


@dataclass(frozen=True)
class StepCost:
    """What one training step of the supernet costs (:func:`measure_step`)."""

    seconds: float        # median wall time of a forward + backward
    activation_mib: float  # tensors saved for the backward (the step's activation memory)
    state_mib: float      # weights, their gradients and SGD momentum (3 x the parameters)
    images: int

    @property
    def memory_mib(self) -> float:
        return self.activation_mib + self.state_mib

    def to_dict(self) -> dict[str, float]:
        return {"step_s": round(self.seconds, 4), "activation_mib": round(self.activation_mib, 2),
                "state_mib": round(self.state_mib, 2), "images": self.images}


def measure_step(supernet: nn.Module, mixing: Mixing, batch: Batch, repeats: int = 3) -> StepCost:
    """Time and memory of a forward + backward of ``supernet`` (its own path: the fast one when
    configured) at ``mixing`` on ``batch``, in train mode, measured in this process: the median
    of ``repeats`` timed steps after one warm-up, and the bytes the autograd graph saves for the
    backward (counted by storage once, by saved-tensor hooks, so the figure is exact and the
    same on CPU and GPU). Gradients are cleared afterwards and batch-norm statistics restored."""
    from pcdarts.methods.hypergrad import restore, running_stats
    x = batch[0]
    params = [p for p in supernet.parameters() if p.requires_grad]
    saved_bn = running_stats(supernet)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    def one(record: bool = False) -> float:
        sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
        sync()
        t0 = time.perf_counter()
        ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if record else contextlib.nullcontext()
        with ctx:
            logits = supernet(x, mixing)
            loss = logits.float().logsumexp(1).mean()  # no labels: the set may have none (unlabelled:DIR)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        del grads, loss, logits
        sync()
        return time.perf_counter() - t0

    one(record=True)
    times = sorted(one() for _ in range(max(1, repeats)))
    restore(saved_bn)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    return StepCost(times[len(times) // 2], sum(storages.values()) / 2 ** 20, 3 * param_bytes / 2 ** 20,
                    int(x.shape[0]))


def compare_steps(a: nn.Module, mix_a: Mixing, b: nn.Module, mix_b: Mixing, batch: Batch,
                  rounds: int = 2) -> tuple[StepCost, StepCost]:
    """:func:`measure_step` of two supernets, interleaved over ``rounds`` (the machine's load
    affects both alike); each keeps its fastest round."""
    ca: list[StepCost] = []
    cb: list[StepCost] = []
    for _ in range(rounds):
        ca.append(measure_step(a, mix_a, batch, repeats=2))
        cb.append(measure_step(b, mix_b, batch, repeats=2))
    return min(ca, key=lambda c: c.seconds), min(cb, key=lambda c: c.seconds)


def saving_line(full: StepCost, pruned: StepCost) -> str:
    """One line: the pruned supernet's step time and memory against the full one's (ratios from one run)."""
    def pct(a: float, b: float) -> str:
        return f"{(b / a - 1) * 100:+.0f}%" if a > 0 else "n/a"
    return (f"pruned vs full supernet (one training step on {pruned.images} images, measured now): time "
            f"{pruned.seconds * 1e3:.0f} vs {full.seconds * 1e3:.0f} ms ({pct(full.seconds, pruned.seconds)}), "
            f"memory {pruned.memory_mib:.0f} vs {full.memory_mib:.0f} MiB ({pct(full.memory_mib, pruned.memory_mib)}; "
            f"activations {pct(full.activation_mib, pruned.activation_mib)}, "
            f"weights+grads+momentum {pct(full.state_mib, pruned.state_mib)})")


def zero_shot_prune(supernet: nn.Module, space: Any, space_cfg: Any, batch: Batch, spec: PruneSpec, *,
                    mode: str = "remove", seed: int = 0, progress: bool = False,
                    cost_batch: Optional[Batch] = None) -> PruneReport:
    """Score, choose and remove: ``supernet.prune`` with the new masks; returns the report.
    With ``cost_batch``, one training step of the full supernet (a copy kept for the purpose)
    and of the pruned one are measured on it, interleaved (:func:`compare_steps`), so the
    report states the saving."""
    t0 = time.time()
    live = {ct: m.bool().cpu().clone() for ct, m in supernet.masks.items()}
    device = next(supernet.parameters()).device
    full = copy.deepcopy(supernet) if cost_batch is not None else None  # measured against the pruned one
    can_pick = torch.tensor(selectable_ops(space, space_cfg))
    candidates = {ct: m & can_pick for ct, m in live.items()}
    importance = op_scores(supernet, batch, spec.proxy, candidates, mode=mode, seed=seed, progress=progress)
    # under torchrun every rank scores its own data shard: the mean makes them remove the same ops
    shared = [importance[ct].to(device) for ct in importance]
    all_reduce_mean(shared)
    importance = {ct: t.cpu() for ct, t in zip(importance, shared)}
    masks = prune_masks(importance, candidates, live, spec.fraction)
    supernet.prune(masks)
    before_cost = after_cost = None
    if full is not None and cost_batch is not None:
        before_cost, after_cost = compare_steps(full, live_mixing(live, device), supernet,
                                                live_mixing(masks, device), cost_batch)
        del full
    n_cand = sum(int(c.sum()) for c in candidates.values())
    before = sum(int(m.sum()) for m in live.values())
    after = sum(int(m.sum()) for m in masks.values())
    return PruneReport(spec, mode, masks, importance, before - after, n_cand, before, after, n_cand,
                       time.time() - t0, int(batch[0].shape[0]), before_cost, after_cost)


def first_images(sample_batches: Callable[[int, str], list[Batch]], n: int, split: str = "train") -> Batch:
    """The first ``n`` images (and labels) of a fixed, un-augmented view of a split (all if fewer)."""
    first = sample_batches(1, split)
    if not first:
        raise ValueError(f"zero-shot pruning: the {split} split has no images")
    per = max(1, int(first[0][1].shape[0]))
    batches = first if per >= n else sample_batches(math.ceil(n / per), split)
    x = torch.cat([b[0] for b in batches])[:n]
    y = torch.cat([b[1] for b in batches])[:n]
    return x, y


def prune_at_start(supernet: nn.Module, method: Any, cfg: Any,
                   sample_batches: Optional[Callable[[int, str], list[Batch]]] = None) -> Optional[PruneReport]:
    """The one assembly's call (:func:`pcdarts.search.build.build_components`), after
    ``method.prepare_supernet`` and before the objective and the weight optimiser:
    a new run (``sample_batches`` given) with ``search.prune`` set is pruned zero-shot; then the
    method learns the supernet's masks (:meth:`Method.set_masks`) on new and resumed runs alike."""
    from pcdarts.spaces import get_space
    report = None
    s = cfg.search
    if sample_batches is not None and s.prune:
        spec = parse_prune(s.prune)
        batch = first_images(sample_batches, int(s.prune_batch_size))
        cost_batch = first_images(sample_batches, int(s.batch_size))  # the search's own batch size
        report = zero_shot_prune(supernet, get_space(cfg.space.name), cfg.space, batch, spec, mode=s.prune_mode,
                                 seed=cfg.run.seed, progress=cfg.run.progress and dist_info().is_main,
                                 cost_batch=cost_batch)
        if dist_info().is_main:  # a result, like the final summary: printed with --no-progress too
            print(report.line(), flush=True)
    masks = getattr(supernet, "masks", None)
    if masks:
        method.set_masks({ct: m.clone() for ct, m in masks.items()})
    return report


__all__ = ["PRUNE_MODES", "PruneSpec", "PruneReport", "StepCost", "measure_step", "compare_steps", "saving_line",
           "parse_prune", "removal_count", "selectable_ops",
           "SupernetAt", "live_mixing", "op_scores", "prune_masks", "zero_shot_prune", "first_images",
           "prune_at_start"]
