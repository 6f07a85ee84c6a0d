"""The one configuration machinery: sections as frozen dataclasses with declared ranges
(:mod:`pcdarts.ranges`), YAML presets, dotted overrides, one validation path and one error
type (:class:`~pcdarts.errors.ConfigError`).

A command's configuration is a :class:`Schema`: its fixed sections (name -> dataclass), its
*named* sections whose dataclass is picked by a ``name`` key through a registry (the search's
``method`` and ``objective``; a space section plugs in the same way), where its presets live
and how its overrides look. Every command builds its config through the schema: a preset
(:meth:`Schema.load_preset`), overrides (:meth:`Schema.parse_overrides`,
:meth:`Schema.apply_override`), then :meth:`Schema.build_sections` (unknown keys, wrong types
and values outside a field's declared range: one ConfigError naming ``section.key``), and the
config class's own cross-field checks. The schemas themselves live with their commands: the
search's in :mod:`pcdarts.search.config`, training's in :mod:`pcdarts.train.config`,
ws-analysis's in :mod:`pcdarts.analysis.ws`. :class:`RunOptions` is the one section every
command shares; :class:`SpaceConfig` the base of the space sections (here, below the spaces
that extend it and the commands that read it).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from pcdarts.errors import ConfigError
from pcdarts.ranges import Count, Seed, check_values
from pcdarts.registry import SPACES

PRESET_DIR = Path(__file__).parent / "configs"


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


@dataclass(frozen=True)
class Schema:
    """How one command's configuration is laid out.

    Attributes:
        command: the command, for messages (``pcdarts search``).
        sections: fixed section name -> its dataclass.
        named: sections whose dataclass is chosen by their ``name`` key (built by the command,
            e.g. the search's method and objective); listed here so overrides of them are accepted.
        example: an override shown in messages (``--search.epochs 50``).
        preset_prefix: preset files are ``PRESET_DIR/<prefix><name>.yaml``; users name them without it.
        not_prefixes: file-name prefixes that belong to other commands' presets in the same folder.
        preset_kind: how messages call a preset (``preset``, ``training preset``).
    """

    command: str
    sections: Mapping[str, type]
    named: tuple[str, ...] = ()
    example: str = "--search.epochs 50"
    preset_prefix: str = ""
    not_prefixes: tuple[str, ...] = ()
    preset_kind: str = "preset"
    preset_dir: Path = field(default=PRESET_DIR)

    @property
    def section_names(self) -> list[str]:
        return [*self.named, *self.sections]

    def preset_names(self) -> list[str]:
        """The preset names users type (file stems without :attr:`preset_prefix`)."""
        stems = (p.stem for p in self.preset_dir.glob(f"{self.preset_prefix}*.yaml"))
        return sorted(s[len(self.preset_prefix):] for s in stems if not s.startswith(self.not_prefixes))

    def load_preset(self, name_or_path: Union[str, Path]) -> dict[str, dict[str, Any]]:
        """The sections of a preset name or of a YAML file path."""
        p = Path(name_or_path)
        if not p.is_file():
            name = str(name_or_path)
            stem = name if name.startswith(self.preset_prefix) else f"{self.preset_prefix}{name}"
            p = self.preset_dir / f"{stem}.yaml"
        if not p.is_file():
            raise ConfigError(f"unknown {self.preset_kind} {str(name_or_path)!r}; choose one of: "
                              f"{', '.join(self.preset_names())} (or pass the path of a YAML file)")
        return read_sections(p, f"a {self.preset_kind}")

    def parse_overrides(self, tokens: Sequence[str]) -> list[tuple[str, Any]]:
        """``["--search.epochs", "2", "--space.C=8"]`` -> ``[("search.epochs", 2), ("space.C", 8)]``."""
        return override_tokens(tokens, example=self.example, command=self.command)

    def apply_override(self, d: dict[str, Any], dotted: str, value: Any) -> None:
        """Set ``d[section][key] = value`` for ``section.key``; an unknown section, or an unknown
        key of a fixed section, raises ConfigError (a named section's keys are checked when built)."""
        section, _, key = dotted.partition(".")
        if section not in self.section_names or not key:
            raise ConfigError(f"unknown override {dotted!r}: use SECTION.KEY with SECTION one of "
                              f"{', '.join(self.section_names)} (e.g. {self.example})")
        if section in self.sections:
            check_keys(self.sections[section], section, [key])
        d.setdefault(section, {})[key] = value

    def check_section_names(self, d: Mapping[str, Any]) -> None:
        unknown = set(d) - set(self.section_names)
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; valid sections: "
                              f"{', '.join(self.section_names)}")

    def build_sections(self, d: Mapping[str, Any]) -> dict[str, Any]:
        """The fixed sections of a nested dict as dataclass instances (missing = defaults),
        each coerced and range-checked by :func:`coerce_section`; unknown sections refused."""
        self.check_section_names(d)
        return {name: coerce_section(cls, name, d.get(name) or {}) for name, cls in self.sections.items()}


def plain(x: Any) -> Any:
    """Tuples -> lists, recursively, so YAML stays free of python tags."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


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


def override_tokens(tokens: Sequence[str], *, example: str, command: str) -> list[tuple[str, Any]]:
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


def coerce_section(cls: type, section: str, values: Any) -> Any:
    """An instance of the dataclass ``cls`` from YAML values; unknown keys and wrong types
    raise ConfigError naming ``section.key`` and the valid keys."""
    if not isinstance(values, dict):
        raise ConfigError(f"section {section!r} must be a mapping of keys to values, got {values!r}")
    hints = get_type_hints(cls)
    check_keys(cls, section, values)
    out = {key: check_type(hints[key], v, f"{section}.{key}") for key, v in values.items()}
    check_values(cls, out, section)
    try:
        return cls(**out)
    except TypeError as e:
        raise ConfigError(f"section {section!r}: {e}") from None


def check_type(tp: Any, v: Any, where: str) -> Any:
    """Coerce a YAML value to a dataclass field type (int -> float, numbers -> str, lists ->
    tuples whose elements are checked as the tuple's element type) or raise ConfigError naming the field."""
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
    if get_origin(tp) is tuple:  # tuple[X, ...]: each element checked as an X (a scalar is a one-tuple)
        args = [a for a in get_args(tp) if a is not Ellipsis]
        elem = args[0] if args else Any
        vals = list(v) if isinstance(v, (list, tuple)) else [v]
        return tuple(check_type(elem, x, f"{where}[{i}]") for i, x in enumerate(vals))
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


def check_keys(cls: type, section: str, keys: Any) -> None:
    """Refuse a key that is not a field of the dataclass ``cls``, naming the valid ones."""
    names = {f.name for f in fields(cls)}
    for key in keys:
        if key not in names:
            raise ConfigError(f"unknown key {section}.{key}; valid keys of {section!r}: {', '.join(sorted(names))}")




__all__ = ["Schema", "RunOptions", "SpaceConfig", "space_config_class", "space_section", "current_section",
           "PRESET_DIR", "ConfigError", "read_sections", "override_tokens", "parse_value",
           "coerce_section", "check_type", "check_keys", "plain"]
