"""The single-path machinery of ``pcdarts ws-analysis`` (docs/methods.md, "Weight-sharing analysis"): child mixings,
child orders, group partitions, BN-policy evaluation, per-child unshared weights, the
training of one sharing setting, the interference probe, stand-alone training and the
IS-DARTS paper's §3.2 edge check.

``cfg`` is a :class:`pcdarts.analysis.ws.WSConfig`, ``space`` a :class:`~pcdarts.analysis.ws.Space`
and ``data`` a :class:`~pcdarts.analysis.ws.WSData` (this module does not import them, so
that :mod:`pcdarts.analysis.ws` can import it). See :mod:`pcdarts.analysis.ws` for the design.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pcdarts.config import SpaceConfig
from pcdarts.errors import ConfigError
from pcdarts.nn.edges import Mixing
from pcdarts.runs.loop import EpochRun, LoopSettings, cosine_schedule, run_epochs, sgd
from pcdarts.spaces.build import make_supernet


def child_mixing(ops: Sequence[int], n_ops: int, device: torch.device) -> Mixing:
    """Single-path mixing of one child: one-hot op weights [E, O] and the active-op booleans."""
    active = torch.zeros(len(ops), n_ops, dtype=torch.bool)
    active[torch.arange(len(ops)), torch.as_tensor(list(ops))] = True
    return Mixing(ops={"cell": active.float().to(device)}, active={"cell": active})


def fresh_supernet(cfg: Any, space: Any, num_classes: int, in_channels: int, fast: bool) -> nn.Module:
    """A fresh supernet of the analysed space (``space.structure``, a
    :class:`~pcdarts.spaces.SearchSpace`), built on the CPU by the one assembly's supernet stage
    (:func:`pcdarts.spaces.build.make_supernet`): ``cfg.C`` channels, ``cfg.layers`` cells per
    stage (NB201), BN running statistics kept, momentum ``cfg.bn_momentum``; the fast forward
    unless ``fast`` is False."""
    space_cfg = SpaceConfig(name=space.name, C=cfg.C, layers=cfg.layers, track_running_stats=True,
                            impl="fast" if fast else "reference")
    net = make_supernet(space.structure, space_cfg, k=1, num_classes=num_classes, in_channels=in_channels,
                        device=torch.device("cpu"))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = cfg.bn_momentum
    return net


class ChildOrder:
    """The child trained at each step: cycles over ``members`` in the configured order."""

    def __init__(self, members: list[int], order: str, seed: int) -> None:
        self.members, self.order = list(members), order
        self.rng = np.random.RandomState(seed)
        self.cycle = list(self.members)
        if order == "shuffle-once":
            self.rng.shuffle(self.cycle)
        self.pos = 0

    def next(self) -> int:
        if self.pos == 0 and self.order == "shuffle-per-epoch":
            self.rng.shuffle(self.cycle)
        m = self.cycle[self.pos]
        self.pos = (self.pos + 1) % len(self.cycle)
        return m


def partition_children(n: int, groups: int, how: str, seed: int) -> list[list[int]]:
    """Split child indices 0..n-1 into ``groups`` non-empty groups (sorted members)."""
    if groups > n:
        raise ConfigError(f"ws.groups {groups} exceeds the {n} children; choose at most {n} groups")
    if how == "sequential":
        bounds = np.linspace(0, n, groups + 1).round().astype(int)
        return [list(range(bounds[g], bounds[g + 1])) for g in range(groups)]
    mapping = np.arange(n) % groups
    np.random.RandomState(seed).shuffle(mapping)
    return [sorted(np.nonzero(mapping == g)[0].tolist()) for g in range(groups)]


# ---------------------------------------------------------------------------- evaluation


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _set_bn_training(bns: Sequence[nn.Module], flag: bool) -> None:
    """Switch only the BatchNorms (what train/eval changes in these supernets; a whole
    ``model.train()`` walks every module and costs more than a tiny child's forward)."""
    for m in bns:
        m.training = flag


@torch.no_grad()
def recalibrate_bn(model: nn.Module, mixing: Mixing, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Reset every BN's running statistics and re-estimate them for this child as the
    cumulative average (momentum None) over ``batches``, the BNs in train mode, no gradients.
    The momenta stay None and the BNs in train mode; :func:`evaluate_child` restores both."""
    bns = _batch_norms(model)
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    _set_bn_training(bns, True)
    for x, _ in batches:
        model(x, mixing)


@torch.no_grad()
def evaluate_child(model: nn.Module, mixing: Mixing, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                   bn: str, recal_batches: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> tuple[float, float]:
    """(accuracy %, mean loss) of one child with the shared weights under a BN policy.

    ``recalibrate`` resets the running statistics and re-estimates them as a cumulative
    average (momentum None) over ``recal_batches`` in train mode, then evaluates in eval
    mode; ``batch-stats`` evaluates with the BNs in train mode; ``running`` in eval mode.
    The BN buffers, momenta and modes are restored afterwards, so evaluation never
    changes the state training continues from. Only BatchNorm modes are switched (the
    analysed supernets have no dropout).
    """
    bns = _batch_norms(model)
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum, m.training)
             for m in bns]
    try:
        if bn == "recalibrate":
            recalibrate_bn(model, mixing, recal_batches)
        _set_bn_training(bns, bn == "batch-stats")
        correct = torch.zeros((), dtype=torch.float64, device=batches[0][0].device)
        loss = torch.zeros_like(correct)
        n = 0
        for x, y in batches:
            logits = model(x, mixing).float()
            loss += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            n += int(y.shape[0])
    finally:
        for m, (rm, rv, nb, mom, mode) in zip(bns, saved):
            m.running_mean.copy_(rm)
            m.running_var.copy_(rv)
            m.num_batches_tracked.copy_(nb)
            m.momentum, m.training = mom, mode
    return 100.0 * float(correct) / n, float(loss) / n


# ---------------------------------------------------------------------------- sharing units


class Unshared:
    """Per-child copies of the parameters, buffers and SGD momenta outside the shared prefix.

    ``load(m)`` saves the current owner's tensors and puts child m's in place; every child
    starts from the supernet's initial values and an empty optimiser state.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, prefix: int, members: Sequence[int]):
        shared = ("stem.",) + tuple(f"cells.{i}." for i in range(prefix))
        self.tensors = {n: t for n, t in [*model.named_parameters(), *model.named_buffers()]
                        if not n.startswith(shared)}
        self.params = [t for n, t in model.named_parameters() if n in self.tensors]
        self.optimizer = optimizer
        init = {n: t.detach().clone() for n, t in self.tensors.items()}
        self.store = {m: {n: v.clone() for n, v in init.items()} for m in members}
        self.opt_store: dict[int, dict[int, dict[str, torch.Tensor]]] = {m: {} for m in members}
        self.owner: Optional[int] = None

    @torch.no_grad()
    def load(self, m: int) -> None:
        if self.owner == m:
            return
        if self.owner is not None:
            self.store[self.owner] = {n: t.detach().clone() for n, t in self.tensors.items()}
            self.opt_store[self.owner] = {i: {k: v.clone() for k, v in self.optimizer.state[p].items()}
                                          for i, p in enumerate(self.params) if p in self.optimizer.state}
        for n, t in self.tensors.items():
            t.copy_(self.store[m][n])
        for i, p in enumerate(self.params):
            self.optimizer.state.pop(p, None)
            if i in self.opt_store[m]:
                self.optimizer.state[p] = {k: v.clone() for k, v in self.opt_store[m][i].items()}
        self.owner = m


class Unit:
    """One supernet copy with its children: model, SGD, cosine schedule, loader, order."""

    def __init__(self, cfg: Any, model: nn.Module, members: list[int], data: Any, seed: int,
                 prefix: Optional[int], device: torch.device) -> None:
        self.cfg, self.model, self.members = cfg, model, members
        self.optimizer = sgd(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.scheduler = cosine_schedule(self.optimizer, cfg.epochs, cfg.lr_min)
        self.loader = data.loader(cfg, seed, device)
        self.order = ChildOrder(members, cfg.order, seed)
        self.unshared = Unshared(model, self.optimizer, prefix, members) if prefix is not None else None
        self.step = 0
        self.last_trained = {m: -1 for m in members}  # step index of each child's last update
        self.trained: list[int] = []  # the child of every step (the schedule actually run)

    def steps_per_epoch(self) -> int:
        return len(self.members) if self.cfg.epoch_unit == "children" else len(self.loader)

    def select(self, m: int) -> None:
        if self.unshared is not None:
            self.unshared.load(m)

    def train_step(self, m: int, mixing: Mixing) -> torch.Tensor:
        """One SGD step of child m on the next training batch; returns the loss (on device)."""
        self.select(m)
        x, y = self.loader.next()
        if not self.model.training:
            self.model.train()
        self.optimizer.zero_grad(set_to_none=not self.cfg.stale_momentum)
        loss = F.cross_entropy(self.model(x, mixing), y)
        loss.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.last_trained[m] = self.step
        self.trained.append(m)
        self.step += 1
        return loss.detach()

    def snapshot(self) -> Any:
        return copy.deepcopy((self.model.state_dict(), self.optimizer.state_dict(),
                              None if self.unshared is None else (self.unshared.store, self.unshared.opt_store,
                                                                  self.unshared.owner)))

    def restore(self, snap: Any) -> None:
        model_state, opt_state, sharing = copy.deepcopy(snap)
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(opt_state)
        if self.unshared is not None:
            self.unshared.store, self.unshared.opt_store, self.unshared.owner = sharing


class UnitsRun(EpochRun):
    """Single-path training of supernet copies on the shared loop (:func:`pcdarts.runs.loop.run_epochs`):
    each epoch runs every unit's steps in turn (each unit's child order picks the child of a
    step, and its cosine schedule steps after its last one), then ``epoch_end(epoch, mean
    loss)``. No checkpoint and no signal handling: an analysis is short and starts again."""

    def __init__(self, units: list[Unit], mixings: dict[int, Mixing], bar: Any = None,
                 epoch_end: Optional[Callable[[int, float], None]] = None) -> None:
        self.units, self.mixings, self.bar, self._epoch_end = units, mixings, bar, epoch_end
        self.epoch, self.step = 0, 0
        self.total: Optional[torch.Tensor] = None

    def run(self, epochs: int) -> None:
        run_epochs(self, LoopSettings(epochs=epochs, signals=False))

    def steps_per_epoch(self) -> int:
        return sum(u.steps_per_epoch() for u in self.units)

    def begin_epoch(self) -> None:
        self.total = None

    def take_step(self) -> None:
        i = self.step
        for u in self.units:  # the unit whose turn it is, and its step within the epoch
            if i < u.steps_per_epoch():
                break
            i -= u.steps_per_epoch()
        m = u.order.next()
        loss = u.train_step(m, self.mixings[m]).double()
        self.total = loss if self.total is None else self.total + loss
        if i == u.steps_per_epoch() - 1:
            u.scheduler.step()
        if self.bar is not None:
            self.bar.update(1)

    def end_epoch(self) -> None:
        mean = float(self.total) / max(self.steps_per_epoch(), 1) if self.total is not None else 0.0
        if self._epoch_end is not None:
            self._epoch_end(self.epoch, mean)
        self.epoch += 1
        self.step = 0


# ---------------------------------------------------------------------------- one run


@dataclass
class RunLog:
    """What one run (one sharing setting, one seed) recorded; [E][M] lists by child index."""

    groups: int
    prefix: Optional[int]
    seed: int
    accuracy: list[list[float]] = field(default_factory=list)
    loss: list[list[float]] = field(default_factory=list)
    steps_since: list[list[int]] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    schedule: list[list[int]] = field(default_factory=list)  # per group: the child of every step
    partition: list[list[int]] = field(default_factory=list)
    interference: Optional[dict[str, Any]] = None
    weights: int = 0  # parameters held: every supernet copy plus every child's own unshared part
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return setting_label(self.groups, self.prefix)


def setting_label(groups: int, prefix: Optional[int]) -> str:
    return f"G={groups} prefix={'all' if prefix is None else prefix}"


def resolve_fast(cfg: Any, device: torch.device) -> bool:
    """Whether the supernet runs its fast path (``auto``: fast on CPU, reference on CUDA,
    the rule of :func:`pcdarts.config.resolve_impl`)."""
    from pcdarts.config import resolve_impl
    return resolve_impl(cfg.impl, device.type) == "fast"


def train_run(cfg: Any, space: Any, data: Any, groups: int, prefix: Optional[int], seed: int,
              device: torch.device, bar: Any = None) -> RunLog:
    """Train the supernet copies of one sharing setting single-path and evaluate every child each epoch."""
    t0 = time.time()
    torch.manual_seed(seed)
    base = fresh_supernet(cfg, space, data.num_classes, data.in_channels, resolve_fast(cfg, device)).to(device)
    parts = partition_children(len(space.children), groups, cfg.partition, cfg.sample_seed)
    # every group starts from the same initial weights (G independent runs with one seed, as the official code)
    units = [Unit(cfg, base if g == 0 else copy.deepcopy(base), members, data, seed, prefix, device)
             for g, members in enumerate(parts)]
    owner = {m: u for u in units for m in u.members}
    n_params = sum(p.numel() for p in base.parameters())
    n_own = 0 if prefix is None else sum(p.numel() for p in units[0].unshared.params)
    mixings = [child_mixing(c, len(space.primitives), device) for c in space.children]
    log = RunLog(groups, prefix, seed, partition=parts,
                 weights=groups * n_params + (len(space.children) - groups) * n_own)

    def epoch_end(epoch: int, mean_loss: float) -> None:
        log.train_loss.append(mean_loss)
        accs, losses, since = [], [], []
        for m in range(len(space.children)):
            u = owner[m]
            u.select(m)
            a, lo = evaluate_child(u.model, mixings[m], data.val_batches, cfg.bn, data.recal_batches)
            accs.append(a)
            losses.append(lo)
            since.append(u.step - u.last_trained[m])
            if bar is not None:
                bar.update(1)
        log.accuracy.append(accs)
        log.loss.append(losses)
        log.steps_since.append(since)
        if bar is not None:
            bar.set_postfix({"epoch": epoch + 1, "loss": f"{mean_loss:.3f}", "best": f"{max(accs):.1f}"},
                            refresh=False)

    UnitsRun(units, dict(enumerate(mixings)), bar, epoch_end).run(cfg.epochs)
    log.schedule = [u.trained for u in units]
    if cfg.interference:
        log.interference = interference(cfg, units, owner, mixings, data)
    log.seconds = time.time() - t0
    return log


def interference(cfg: Any, units: list[Unit], owner: dict[int, Unit], mixings: list[Mixing],
                 data: Any) -> dict[str, Any]:
    """The interference metric: the change of every child's validation loss (one fixed batch) after one
    SGD step of child m, for the first ``cfg.interference`` children; NaN outside m's group.
    The state is restored after each probe, so the run's results are unaffected."""
    batch = data.val_batches[:1]
    n = len(mixings)

    def losses(u: Unit) -> list[float]:
        out = [float("nan")] * n
        for j in u.members:
            u.select(j)
            out[j] = evaluate_child(u.model, mixings[j], batch, cfg.bn, data.recal_batches)[1]
        return out

    before = {id(u): losses(u) for u in units}
    rows = []
    probes = list(range(min(cfg.interference, n)))
    for m in probes:
        u = owner[m]
        snap, loader_state, last = u.snapshot(), u.loader.state_dict(), u.last_trained[m]
        u.train_step(m, mixings[m])
        after = losses(u)
        rows.append([a - b for a, b in zip(after, before[id(u)])])
        u.restore(snap)
        u.loader.load_state_dict(loader_state)
        u.step, u.last_trained[m] = u.step - 1, last
        u.trained.pop()
    return {"children": probes, "batch": "first validation batch", "delta_loss": rows}


# ---------------------------------------------------------------------------- stand-alone ground truth


def standalone_ground_truth(cfg: Any, space: Any, data: Any, device: torch.device,
                            bar: Any = None) -> list[float]:
    """Every child trained alone from scratch (same init seed ``seeds[0]``) for
    ``cfg.standalone_epochs`` data passes, then evaluated like the shared-weight children."""
    sa = dataclasses.replace(cfg, epochs=cfg.standalone_epochs, epoch_unit="data")
    fast = resolve_fast(cfg, device)
    out = []
    for m, ops in enumerate(space.children):
        torch.manual_seed(cfg.seeds[0])
        model = fresh_supernet(sa, space, data.num_classes, data.in_channels, fast).to(device)
        u = Unit(sa, model, [m], data, cfg.seeds[0], None, device)
        mixing = child_mixing(ops, len(space.primitives), device)
        UnitsRun([u], {m: mixing}, bar).run(sa.epochs)
        out.append(evaluate_child(model, mixing, data.val_batches, cfg.bn, data.recal_batches)[0])
    return out


# ---------------------------------------------------------------------------- the IS-DARTS edge check


def edge_check(supernet: nn.Module, mixing: Mixing, scores: dict[str, torch.Tensor], primitives: Sequence[str],
               masks: Optional[dict[str, torch.Tensor]], val_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
               bn: str = "recalibrate", recal_batches: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
               bar: Any = None) -> dict[str, Any]:
    """The IS-DARTS paper's §3.2 check (docs/methods.md, "Weight-sharing analysis"): do a supernet's
    op scores predict what discretising an edge does?

    For every cell type and edge, the edge alone is discretised to each of its live ops
    (``none`` excluded: discretisation picks a real op), in every cell of that type, the
    rest of the mixing untouched; the supernet's validation accuracy then ranks the ops,
    and the method's scores rank them too. Per edge: Kendall tau and Spearman rho of the
    two rankings, and whether their best ops agree.
    """
    from pcdarts.analysis.correlation import kendall, spearman
    base_acc = evaluate_child(supernet, mixing, val_batches, bn, recal_batches)[0]
    edges, taus, agree = [], [], []
    for ct, S in scores.items():
        W = mixing.ops[ct]
        for e in range(S.shape[0]):
            ops = [o for o in range(S.shape[1]) if primitives[o] != "none"
                   and (masks is None or ct not in masks or bool(masks[ct][e, o]))]
            if len(ops) < 2:
                continue
            accs = []
            for o in ops:
                Wd = W.detach().clone()
                Wd[e] = 0.0
                Wd[e, o] = 1.0
                cells = None
                if mixing.cells is not None:
                    cells = {}
                    for i, Wc in mixing.cells.items():
                        cells[i] = Wc.detach().clone()
                        cells[i][e] = 0.0
                        cells[i][e, o] = 1.0
                m2 = Mixing(ops={**mixing.ops, ct: Wd}, edges=mixing.edges, aux_skip=mixing.aux_skip, cells=cells,
                            active=mixing.active)
                accs.append(evaluate_child(supernet, m2, val_batches, bn, recal_batches)[0])
                if bar is not None:
                    bar.update(1)
            s = [float(S[e, o]) for o in ops]
            tau, rho = kendall(s, accs), spearman(s, accs)
            best_s, best_a = ops[int(np.argmax(s))], ops[int(np.argmax(accs))]
            edges.append({"cell_type": ct, "edge": e, "ops": [primitives[o] for o in ops], "scores": s,
                          "accuracy_after_discretising": accs, "kendall": tau, "spearman": rho,
                          "best_by_score": primitives[best_s], "best_by_accuracy": primitives[best_a],
                          "agree": best_s == best_a})
            if tau == tau:
                taus.append(tau)
            agree.append(best_s == best_a)
    return {"supernet_accuracy": base_acc, "bn": bn, "edges": edges,
            "mean_kendall": float(np.mean(taus)) if taus else float("nan"),
            "best_op_agreement": float(np.mean(agree)) if agree else float("nan")}


__all__ = ["recalibrate_bn", "child_mixing", "fresh_supernet", "ChildOrder", "partition_children", "evaluate_child",
           "Unshared", "Unit", "UnitsRun", "RunLog", "setting_label", "resolve_fast", "train_run", "interference",
           "standalone_ground_truth", "edge_check"]
