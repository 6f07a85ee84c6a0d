"""Weight-sharing analysis (docs/methods.md, "Weight-sharing analysis"): how far can a supernet's ranking be trusted?

A supernet is trained **single-path**: every step activates one child architecture
(one op per edge, ``Mixing.active``) and trains it on one minibatch; the children are
visited in a fixed cycle (``round-robin``), a cycle shuffled once (``shuffle-once``) or
reshuffled at the start of every cycle (``shuffle-per-epoch``; as in the official code
the reshuffle happens when the cycle over the children wraps). After every epoch every
child is evaluated with the shared weights under an explicit BatchNorm policy:

* ``recalibrate``: reset the BN running statistics, re-estimate them (cumulative
  average) on ``recal_batches`` fixed training batches in train mode, then evaluate in
  eval mode;
* ``batch-stats``: evaluate in train mode (every batch normalised by its own statistics);
* ``running``: eval mode with the running statistics accumulated by training (what the
  official code does, with ``bn_momentum`` 0.4).

The running statistics the training accumulated are restored after every evaluation, so
the policy never changes the training. What is logged is ``A[run, epoch, child]`` (accuracy
and loss) and each child's steps since it was last trained; :mod:`pcdarts.analysis.ws_report`
turns them into the ranking, stability, recency and sharing-sweep metrics, the CSV/JSON
report and the plots.

Degree of sharing (the paper's knobs): ``groups`` G splits the children into G groups, each trained
on its **own copy** of the supernet (exactly G independent runs, each with the full data
per epoch, as in the official code); ``prefix`` k shares only the stem and the first k
entries of ``supernet.cells`` (NB201: cells and residual reduction blocks alike), every
child owning its copy of the rest (weights, BN buffers and their SGD momentum).

The study's tiny space lives in :mod:`pcdarts.spaces.tiny`; the NB201 space uses the
search supernet of :mod:`pcdarts.spaces.nb201`. Both run the fast path by default
(``impl="reference"`` runs the op modules). The IS-DARTS paper's §3.2 edge check
(:func:`edge_check`) ranks the ops of every edge of a finished search's supernet by
the method's scores and by the supernet's accuracy after discretising that edge alone.
No search-loop or method code is imported here.

Layout: this module holds the config, the children, the data, the ground truth and the
driver :func:`run_ws_analysis`; :mod:`pcdarts.analysis.ws_train` the single-path training,
the BN-policy evaluation, the sharing units and the edge check; :mod:`pcdarts.analysis.ws_report`
the metrics, files and plots. Not done: the dense within-epoch evaluation, the
``keyword`` sharing knob, the similarity partition of groups and fine-tuning from the supernet.
"""
from __future__ import annotations

import csv
import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from pcdarts.data.device_loader import Augment, DeviceLoader
from pcdarts.data.sources import default_augment, load_dataset, seeded_subset, split_indices
from pcdarts.errors import ConfigError
from pcdarts.spaces import SearchSpace, get_space
from pcdarts.config import Schema
from pcdarts.nn.impl import IMPLS
from pcdarts.ranges import Count, Epochs, Fraction, NonNegInt, Rate, Seed, check_ranges
from pcdarts.utils import manifest, progress_bar, write_json
from pcdarts.analysis.ws_train import (ChildOrder, RunLog, child_mixing, edge_check, evaluate_child, fresh_supernet,
                                       partition_children, setting_label, standalone_ground_truth, train_run)

ORDERS = ("round-robin", "shuffle-once", "shuffle-per-epoch")
BN_POLICIES = ("recalibrate", "batch-stats", "running")
WS_SPACES = ("tiny", "nb201")  # the keys of WS_ENUMERATORS (below)
EPOCH_UNITS = ("data", "children")
PARTITIONS = ("random", "sequential")
VALIDATIONS = ("test", "split")


@dataclass(frozen=True)
class WSSpaceConfig:
    """The children under study (section ``space``).

    Attributes:
        name: ``tiny`` (the study's space, 64 children) or ``nb201``.
        sample: NB201 children drawn uniformly (0 = all 15,625); ignored on ``tiny``.
        sample_seed: seed of that draw (the same children for every run seed) and of the
            ``random`` partition into groups.
        C: channels (tiny: node channels; NB201: first-stage channels).
        layers: NB201 cells per stage (N); the tiny space always has 4 cells.
        impl: ``auto`` | ``fast`` | ``reference`` (auto = fast on CPU, reference on CUDA).
    """

    name: str = "tiny"
    sample: NonNegInt = 50
    sample_seed: Seed = 0
    C: Count = 16
    layers: Count = 5
    impl: str = "auto"


@dataclass(frozen=True)
class WSDataConfig:
    """The images and the validation set (section ``data``).

    Attributes:
        dataset: dataset spec (``digits``, ``synthetic:8x3x256``, ``cifar10:PATH``, ...).
        validation: ``test`` (the dataset's test split, as the official code) or ``split``
            (a held-out ``1 - train_portion`` of the training set, as the paper describes).
        train_portion: training share of the training set under ``validation=split``.
        max_samples: use only this many training images (seeded subset); None = all.
        val_samples: evaluate on only this many validation images; None = all.
    """

    dataset: str = "digits"
    validation: str = "test"
    train_portion: Fraction = 0.5
    max_samples: Optional[Count] = None
    val_samples: Optional[Count] = None


@dataclass(frozen=True)
class WSTrainConfig:
    """The single-path training of every run (section ``train``).

    Attributes:
        epochs: training epochs of every run.
        seeds: one run per seed (init, data order, shuffled orders).
        order: child order: ``round-robin`` | ``shuffle-once`` | ``shuffle-per-epoch``.
        epoch_unit: ``data`` (an epoch is one pass over the training data, as in the paper)
            or ``children`` (one cycle over a group's children: each trained exactly once).
        batch_size: training batch size.
        lr, lr_min, momentum, weight_decay, grad_clip: SGD with a per-epoch cosine schedule
            from lr to lr_min (paper: 0.025 -> 0.001, 0.9, 1e-3, no clipping).
        bn_momentum: BN momentum during training (official code default 0.4).
        stale_momentum: False: a step changes only the active child's weights (gradients of
            the other ops are None). True: the official code's behaviour under PyTorch < 1.7,
            whose zero_grad left zero gradients, so momentum and weight decay keep moving
            every op that was ever trained.
    """

    epochs: Epochs = 200
    seeds: tuple[int, ...] = (0,)
    order: str = "round-robin"
    epoch_unit: str = "data"
    batch_size: Count = 256
    lr: Rate = 0.025
    lr_min: Rate = 0.001
    momentum: Fraction = 0.9
    weight_decay: Rate = 1e-3
    grad_clip: Rate = 0.0
    bn_momentum: Fraction = 0.4
    stale_momentum: bool = False


@dataclass(frozen=True)
class WSSharingConfig:
    """The sharing sweep (section ``sharing``).

    Attributes:
        groups: group counts G (children split into G groups, each with its own supernet copy).
        partition: how children are split into groups: ``random`` (seeded by space.sample_seed)
            or ``sequential`` (consecutive blocks).
        prefix: prefix depths k (share the stem and the first k entries of
            ``supernet.cells``); None = share everything.
    """

    groups: tuple[int, ...] = (1,)
    partition: str = "random"
    prefix: tuple[Optional[int], ...] = (None,)


@dataclass(frozen=True)
class WSEvalConfig:
    """How children are evaluated and what they are compared with (section ``eval``).

    Attributes:
        bn: BN policy at evaluation: ``recalibrate`` | ``batch-stats`` | ``running``.
        recal_batches: training batches (no augmentation, the same for every child) that
            re-estimate the BN statistics under ``recalibrate``.
        batch_size: evaluation batch size.
        standalone_epochs: >0 trains every child alone from scratch for this many epochs
            (seed ``train.seeds[0]``) and uses its accuracy as the ground truth.
        gt_dataset: NB201 lookup dataset (None: the data's name if cifar10/cifar100, else cifar10).
        ground_truth: CSV ``arch,accuracy`` of stand-alone accuracies (overrides the lookup).
        stable_from: rank std within a run is taken over epochs >= stable_from * epochs.
        interference: children whose one-step interference row is measured at the end of
            every run (0 = off): the change of every child's loss after one update of it.
    """

    bn: str = "recalibrate"
    recal_batches: Count = 4
    batch_size: Count = 256
    standalone_epochs: NonNegInt = 0
    gt_dataset: Optional[str] = None
    ground_truth: Optional[str] = None
    stable_from: Fraction = 0.5
    interference: NonNegInt = 0


@dataclass(frozen=True)
class WSRunConfig:
    """Where it runs (section ``run``). ``device``: ``auto`` | ``cpu`` | ``cuda[:N]``."""

    device: str = "cpu"


WS_SECTIONS: dict[str, type] = {"space": WSSpaceConfig, "data": WSDataConfig, "train": WSTrainConfig,
                                "sharing": WSSharingConfig, "eval": WSEvalConfig, "run": WSRunConfig}
SCHEMA = Schema("pcdarts ws-analysis", WS_SECTIONS, example="--train.epochs 10")
# the command line's flat option names that differ from their section's field name
FLAT_NAMES = {"space": ("space", "name"), "data": ("data", "dataset"), "eval_batch_size": ("eval", "batch_size")}


@dataclass(frozen=True)
class WSConfig:
    """Settings of one ``pcdarts ws-analysis``, in sections (``space``, ``data``, ``train``,
    ``sharing``, ``eval``, ``run``) built by the one config machinery (:data:`SCHEMA`);
    defaults are the paper's / official code's. :meth:`from_flat` builds one from the command
    line's flat option names (``epochs=2, bn="running"``)."""

    space: WSSpaceConfig = field(default_factory=WSSpaceConfig)
    data: WSDataConfig = field(default_factory=WSDataConfig)
    train: WSTrainConfig = field(default_factory=WSTrainConfig)
    sharing: WSSharingConfig = field(default_factory=WSSharingConfig)
    eval: WSEvalConfig = field(default_factory=WSEvalConfig)
    run: WSRunConfig = field(default_factory=WSRunConfig)

    def __post_init__(self) -> None:
        for name in WS_SECTIONS:
            check_ranges(getattr(self, name), name)
        sp, t, sh = self.space, self.train, self.sharing
        for where, value, allowed in (("space.name", sp.name, WS_SPACES), ("space.impl", sp.impl, IMPLS),
                                      ("train.order", t.order, ORDERS), ("train.epoch_unit", t.epoch_unit, EPOCH_UNITS),
                                      ("eval.bn", self.eval.bn, BN_POLICIES),
                                      ("sharing.partition", sh.partition, PARTITIONS),
                                      ("data.validation", self.data.validation, VALIDATIONS)):
            if value not in allowed:
                raise ConfigError(f"{where} must be one of {', '.join(allowed)}; got {value!r}")
        if not t.seeds or any(s < 0 for s in t.seeds) or len(set(t.seeds)) != len(t.seeds):
            raise ConfigError(f"train.seeds must be distinct non-negative integers, e.g. 0,1; got {t.seeds}")
        if not sh.groups or any(g < 1 for g in sh.groups):
            raise ConfigError(f"sharing.groups must be positive group counts, e.g. 1,4; got {sh.groups}")
        if not sh.prefix or any(k is not None and k < 0 for k in sh.prefix):
            raise ConfigError(f"sharing.prefix must be prefix depths >= 0 or 'all'; got {sh.prefix}")
        if t.lr_min > t.lr:
            raise ConfigError(f"train.lr_min ({t.lr_min:g}) must not exceed train.lr ({t.lr:g})")

    @classmethod
    def from_sections(cls, d: dict[str, Any]) -> WSConfig:
        """From a nested dict ``{section: {key: value}}`` through the machinery (types, ranges)."""
        return cls(**SCHEMA.build_sections(d))

    @classmethod
    def from_flat(cls, **values: Any) -> WSConfig:
        """From flat option names (each field's own name, or :data:`FLAT_NAMES`' ``space``,
        ``data``, ``eval_batch_size``); an unknown name is one ConfigError listing the valid ones."""
        owner = {f.name: (sec, f.name) for sec, c in WS_SECTIONS.items() for f in dataclasses.fields(c)
                 if f.name not in ("name", "dataset") and not (sec == "eval" and f.name == "batch_size")}
        owner.update(FLAT_NAMES)
        d: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            if key not in owner:
                raise ConfigError(f"unknown ws-analysis option {key!r}; valid: {', '.join(sorted(owner))}")
            sec, name = owner[key]
            d.setdefault(sec, {})[name] = value
        return cls.from_sections(d)


# ---------------------------------------------------------------------------- children


@dataclass
class Space:
    """The children under study and how to build their supernet (``structure``: the space object
    whose supernet :func:`~pcdarts.analysis.ws_train.fresh_supernet` builds)."""

    name: str
    primitives: tuple[str, ...]
    children: list[tuple[int, ...]]  # op index per edge
    names: list[str]  # arch strings (NB201) or op names joined by '+' (tiny)
    structure: SearchSpace


def _tiny_children(cfg: WSConfig) -> Space:
    """The tiny space's 64 children."""
    from pcdarts.spaces.tiny import TINY_PRIMITIVES, TinySpace, tiny_child_name, tiny_children
    kids = tiny_children()
    return Space("tiny", TINY_PRIMITIVES, kids, [tiny_child_name(c) for c in kids], TinySpace())


def _nb201_children(cfg: WSConfig) -> Space:
    """``cfg.space.sample`` NB201 cells (all for 0), sorted by code."""
    from pcdarts.genotype import NB201Genotype
    structure = get_space("nb201")
    prims = structure.primitives
    n_ops, n_edges = len(prims), structure.num_edges(None)
    total = n_ops ** n_edges
    if cfg.space.sample == 0 or cfg.space.sample >= total:
        codes = np.arange(total)
    else:
        codes = np.sort(np.random.RandomState(cfg.space.sample_seed).choice(total, cfg.space.sample, replace=False))
    kids = [tuple(int(c) // n_ops ** (n_edges - 1 - e) % n_ops for e in range(n_edges)) for c in codes]
    names = [str(NB201Genotype(tuple(prims[o] for o in k))) for k in kids]
    return Space(structure.name, prims, kids, names, structure)


# the spaces ws-analysis enumerates, by ``--space``: name -> its children (the one dispatch on the name)
WS_ENUMERATORS: dict[str, Callable[[WSConfig], Space]] = {"tiny": _tiny_children, "nb201": _nb201_children}


def enumerate_children(cfg: WSConfig) -> Space:
    """The tiny space's 64 children, or ``cfg.space.sample`` NB201 cells (all for 0), sorted by code."""
    return WS_ENUMERATORS[cfg.space.name](cfg)



# ---------------------------------------------------------------------------- data


@dataclass
class WSData:
    """Training images (device), the fixed validation and recalibration batches, the shape."""

    train: tuple[torch.Tensor, torch.Tensor]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment
    val_batches: list[tuple[torch.Tensor, torch.Tensor]]
    recal_batches: list[tuple[torch.Tensor, torch.Tensor]]
    num_classes: int
    in_channels: int
    input_size: int
    info: dict[str, Any] = field(default_factory=dict)

    def loader(self, cfg: WSConfig, seed: int, device: torch.device) -> DeviceLoader:
        """A seeded, augmented, cycling training loader (one per run and group)."""
        batch = min(cfg.train.batch_size, int(self.train[1].shape[0]))
        return DeviceLoader(*self.train, batch, mean=self.mean, std=self.std, augment=self.augment, seed=seed,
                            device=device)


def build_data(cfg: WSConfig, device: torch.device) -> WSData:
    """Load ``cfg.data.dataset``; split off the validation set; draw the fixed eval/recalibration batches."""
    ds = load_dataset(cfg.data.dataset, "train")
    images, labels = seeded_subset(ds.images, ds.labels, cfg.data.max_samples, 0)
    if cfg.data.validation == "split":
        tr, va = split_indices(len(labels), cfg.data.train_portion, 0)
        if not len(tr) or not len(va):
            raise ConfigError(f"data.train_portion {cfg.data.train_portion} leaves an empty training or "
                              "validation split")
        train, val = (images[tr], labels[tr]), (images[va], labels[va])
    else:
        test = load_dataset(cfg.data.dataset, "test")
        train, val = (images, labels), (test.images, test.labels)
    val = seeded_subset(*val, cfg.data.val_samples, 1)
    pad, flip = default_augment(ds.name, int(images.shape[-1]))
    common = dict(mean=ds.mean, std=ds.std, device=device)
    ev = DeviceLoader(*val, min(cfg.eval.batch_size, len(val[1])), shuffle=False, drop_last=False, **common)
    recal = DeviceLoader(*train, min(cfg.train.batch_size, len(train[1])), seed=12345, **common)  # no augmentation
    data = WSData((train[0].to(device), train[1].to(device)), ds.mean, ds.std, Augment(crop_padding=pad, flip=flip),
                  list(ev), [recal.next() for _ in range(cfg.eval.recal_batches)], ds.num_classes,
                  int(images.shape[1]), int(images.shape[-1]))
    data.info = {"dataset": cfg.data.dataset, "n_train": int(train[1].shape[0]), "n_val": int(val[1].shape[0]),
                 "validation": cfg.data.validation, "augment": dataclasses.asdict(data.augment)}
    return data


# ---------------------------------------------------------------------------- ground truth


def read_ground_truth(path: str | Path, names: Sequence[str]) -> list[float]:
    """Accuracies of ``names`` from a CSV ``arch,accuracy`` (a header row is optional)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"ws.ground_truth: {p} is not a file (expected a CSV with columns arch,accuracy)")
    table: dict[str, float] = {}
    with open(p, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 2:
                raise ConfigError(f"ws.ground_truth: {p} line {i + 1} needs two columns arch,accuracy; got {row}")
            try:
                table[_norm_arch(row[0])] = float(row[1])
            except ValueError:
                if i == 0:
                    continue  # header
                raise ConfigError(f"ws.ground_truth: {p} line {i + 1}: accuracy {row[1]!r} is not a number") from None
    missing = [nm for nm in names if _norm_arch(nm) not in table]
    if missing:
        raise ConfigError(f"ws.ground_truth: {p} has no accuracy for {len(missing)} of the {len(names)} children, "
                          f"e.g. {missing[0]!r} (children.csv in the output folder lists their names)")
    return [table[_norm_arch(nm)] for nm in names]


def _norm_arch(text: str) -> str:
    s = text.strip()
    if s.count("+") == 2 and "~" in s:  # an NB201 arch string: canonical spacing/order
        try:
            from pcdarts.genotype import NB201Genotype
            return NB201Genotype.from_arch_str(s).arch_str()
        except ValueError:
            return s
    return s


def lookup_ground_truth(cfg: WSConfig, space: Space) -> tuple[list[float], str]:
    """NB201 benchmark validation accuracy (mean over runs) of every child."""
    from pcdarts.nb201 import query
    ds = cfg.eval.gt_dataset or next((n for n in ("cifar100", "cifar10") if cfg.data.dataset.lower().startswith(n)),
                                     "cifar10")
    out, source = [], ""
    for name in space.names:
        r = query(name, ds)
        out.append(float("nan") if r.valid_acc_mean is None else float(r.valid_acc_mean))
        source = r.source
    return out, f"NAS-Bench-201 lookup: {ds} validation accuracy (mean over runs), {source}"


# ---------------------------------------------------------------------------- the whole analysis


def _unit_steps(cfg: WSConfig, data: WSData, n_members: int) -> int:
    n = int(data.train[1].shape[0])
    return n_members if cfg.train.epoch_unit == "children" else n // min(cfg.train.batch_size, n)


def run_ws_analysis(cfg: WSConfig, out: str | Path, *, progress: bool = True, echo: Any = print) -> dict[str, Any]:
    """Run every sharing setting x seed, compute the metrics and write the report.

    Writes into ``out``: ``report.json`` (config, children, ground truth, per run the
    per-epoch metrics and the logged matrices, per setting the summary), ``children.csv``,
    ``accuracy.csv``, ``epochs.csv``, ``sweep.csv``, ``ground_truth.csv`` (when there is
    one), ``manifest.json`` and the plots ``tau_vs_epoch.png``, ``rank_heatmap.png``,
    ``top1_histogram.png``. Returns the report dict.
    """
    from pcdarts.analysis import ws_report as rep
    from pcdarts.distributed import resolve_device
    device = resolve_device(cfg.run.device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    space = enumerate_children(cfg)
    data = build_data(cfg, device)
    M = len(space.children)
    settings = [(g, k) for g in cfg.sharing.groups for k in cfg.sharing.prefix]
    for g, _ in settings:
        partition_children(M, g, cfg.sharing.partition, cfg.space.sample_seed)  # refuse a bad G before any training
    write_json(out / "manifest.json", manifest(cfg.train.seeds[0], str(device), {"tool": "ws-analysis"}))
    bar = None
    if progress:
        standalone = cfg.eval.standalone_epochs and not cfg.eval.ground_truth
        sa = M * cfg.eval.standalone_epochs * _unit_steps(cfg, data, 1) if standalone else 0
        total = sa + len(cfg.train.seeds) * cfg.train.epochs * sum(
            sum(_unit_steps(cfg, data, len(p))
                for p in partition_children(M, g, cfg.sharing.partition, cfg.space.sample_seed)) + M
            for g, _ in settings)
        bar = progress_bar(True, total, "ws-analysis")
    gt: Optional[list[float]] = None
    if cfg.eval.ground_truth:
        gt, source = read_ground_truth(cfg.eval.ground_truth, space.names), f"user CSV {cfg.eval.ground_truth}"
    elif cfg.eval.standalone_epochs:
        if bar is not None:
            bar.set_description("stand-alone ground truth")
        gt = standalone_ground_truth(cfg, space, data, device, bar)
        source = (f"stand-alone training, {cfg.eval.standalone_epochs} epoch(s), seed {cfg.train.seeds[0]}, "
                  f"{cfg.eval.bn} BN")
    elif space.structure.benchmark is not None:  # the benchmark's accuracies of the children
        gt, source = lookup_ground_truth(cfg, space)
    else:
        source = "none (pass --ground-truth CSV or --standalone-epochs N)"
    runs = []
    for g, k in settings:
        for seed in cfg.train.seeds:
            if bar is not None:
                bar.set_description(f"{setting_label(g, k)} seed {seed}")
            log = train_run(cfg, space, data, g, k, seed, device, bar)
            runs.append({"label": log.label, "groups": g, "prefix": k, "seed": seed,
                         "epochs": rep.epoch_records(log.accuracy, log.steps_since, log.train_loss, space.names, gt),
                         "stability": rep.within_run_stability(log.accuracy, cfg.eval.stable_from),
                         "accuracy": log.accuracy, "loss": log.loss, "steps_since": log.steps_since,
                         "partition": log.partition, "schedule": log.schedule, "interference": log.interference,
                         "weights": log.weights, "seconds": log.seconds})
            last = runs[-1]["epochs"][-1]
            tau = f", Kendall tau {last['kendall']:+.3f}" if "kendall" in last else ""
            echo(f"{log.label} seed {seed}: top-1 {last['top1_arch']} ({last['best_acc']:.2f} %){tau} "
                 f"[{log.seconds:.0f} s]")
    if bar is not None:
        bar.close()
    report = {"tool": "pcdarts ws-analysis", "space": space.name, "config": dataclasses.asdict(cfg),
              "data": data.info, "children": space.names, "ops": [list(c) for c in space.children],
              "primitives": list(space.primitives),
              "ground_truth": {"source": source, "accuracy": gt}, "runs": runs,
              "settings": rep.summarise(runs, space.names, gt)}
    write_json(out / "report.json", rep._clean(report))
    rep.write_csvs(out, report)
    try:
        rep.plot_report(out, report)
    except ImportError as e:  # the report stands without pictures
        warnings.warn(f"ws-analysis: no plots ({e})")
    return report


__all__ = ["run_ws_analysis", "WSConfig", "Space", "WSData", "RunLog", "enumerate_children", "child_mixing",
           "fresh_supernet", "build_data", "evaluate_child", "partition_children", "ChildOrder", "train_run",
           "read_ground_truth", "lookup_ground_truth", "standalone_ground_truth", "edge_check", "setting_label",
           "ORDERS", "BN_POLICIES"]
