"""Declared value ranges of numeric config fields.

A numeric field of a config dataclass is annotated with one of the aliases below
(``C: Count = 16``, ``lr: Rate = 0.025``); :func:`check_ranges` walks a dataclass
instance and refuses any value outside its field's range with a one-line
:class:`~pcdarts.errors.ConfigError` naming ``section.field``. A test walks every field
of every registered config dataclass, so a new numeric field without a range fails it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Annotated, Any, Optional, Union, get_args, get_origin, get_type_hints

from pcdarts.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """``lo <= v <= hi`` (either bound optional, ``*_open`` makes it strict); floats must be finite."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False

    def ok(self, v: Any) -> bool:
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return False
        return True

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return "a finite number"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class EpochField:
    """Marks a field measured in epochs (a count, an index or a list of epoch indices):
    ``--budget N`` scales every such field by ``N / search.epochs`` (:func:`epoch_fields`)."""


EPOCHS = EpochField()

# the aliases config dataclasses use
Count = Annotated[int, Range(1)]                      # sizes, counts, epochs: >= 1
NonNegInt = Annotated[int, Range(0)]                  # 0 = off
Seed = Annotated[int, Range(0, 2**32 - 1)]
Rate = Annotated[float, Range(0)]                     # learning rates, weight decays, clips: >= 0
Positive = Annotated[float, Range(0, lo_open=True)]   # > 0
Fraction = Annotated[float, Range(0, 1)]              # probabilities, portions: [0, 1]
Finite = Annotated[float, Range()]                    # any finite number
Epochs = Annotated[int, Range(1), EPOCHS]             # a number of epochs >= 1 (scaled by --budget)
EpochIndex = Annotated[int, Range(0), EPOCHS]         # an epoch count or index that may be 0 (scaled)
EpochList = Annotated[tuple[int, ...], Range(0), EPOCHS]  # epoch indices (scaled)


def field_range(tp: Any) -> tuple[Optional[Range], Any]:
    """(the Range of an annotated type or None, the bare type), looking through Optional."""
    if get_origin(tp) is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            tp = args[0]
    if get_origin(tp) is Annotated:
        base, *extras = get_args(tp)
        rng = next((e for e in extras if isinstance(e, Range)), None)
        return rng, base
    return None, tp


def is_epoch_field(tp: Any) -> bool:
    """Whether a field's type hint carries the :data:`EPOCHS` marker (looking through Optional)."""
    if get_origin(tp) is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            tp = args[0]
    return get_origin(tp) is Annotated and any(isinstance(e, EpochField) for e in get_args(tp)[1:])


def epoch_fields(cls: type) -> list[str]:
    """Names of the fields of dataclass ``cls`` measured in epochs."""
    hints = range_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if f.name in hints and is_epoch_field(hints[f.name])]


def range_hints(cls: type) -> dict[str, Any]:
    """Field name -> type hint with its Annotated extras kept."""
    return get_type_hints(cls, include_extras=True)


def check_ranges(obj: Any, section: str) -> None:
    """Raise ConfigError for the first field of the dataclass ``obj`` outside its declared range."""
    check_values(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, section)


def check_values(cls: type, values: dict[str, Any], section: str) -> None:
    """The same for field values of the dataclass ``cls`` before it is built (so a range
    error comes before the class's own cross-field checks)."""
    hints = range_hints(cls)
    for name, v in values.items():
        rng, _ = field_range(hints[name]) if name in hints else (None, None)
        if rng is None:
            continue
        elements = v if isinstance(v, (tuple, list)) else (v,)
        for x in elements:
            if x is None or isinstance(x, bool) or not isinstance(x, (int, float)):
                continue
            if not rng.ok(x):
                finite = "a finite number " if isinstance(x, float) and not math.isfinite(x) else ""
                raise ConfigError(f"{section}.{name} must be {finite}{rng.describe()}, got {_show(v)}")


def _show(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return repr(v) if isinstance(v, float) and not math.isfinite(v) else str(v)


__all__ = ["Range", "EpochField", "EPOCHS", "Epochs", "EpochIndex", "EpochList", "is_epoch_field", "epoch_fields",
           "Count", "NonNegInt", "Seed", "Rate", "Positive", "Fraction", "Finite", "check_ranges", "check_values",
           "field_range", "range_hints"]
