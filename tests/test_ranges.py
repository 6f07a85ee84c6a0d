"""Declared value ranges (:mod:`pcdarts.ranges`): every numeric field of every config section is
checked, from Python and from the command line, before anything runs."""
from __future__ import annotations

import dataclasses

import pytest

from pcdarts.config import SECTIONS, build_config
from pcdarts.errors import ConfigError
from pcdarts.ranges import check_ranges, field_range, range_hints
from pcdarts.registry import METHODS
from pcdarts.train.config import SECTIONS as TRAIN_SECTIONS
from pcdarts.train.config import build_train_config
from tests.conftest import run_cli


def _config_classes():
    for name, cls in SECTIONS.items():
        yield "search", name, cls
    for name in METHODS.names():
        yield "search", "method", METHODS.get(name).Config
    for name, cls in TRAIN_SECTIONS.items():
        yield "train", name, cls


def _bad_values(rng, base):
    vals = []
    if rng.lo is not None:
        vals.append(rng.lo if rng.lo_open else rng.lo - 1)
    if rng.hi is not None:
        vals.append(rng.hi if rng.hi_open else rng.hi + 1)
    if base is float or getattr(base, "__origin__", None) is tuple:
        vals.append(float("nan"))
    return vals


@pytest.mark.parametrize("kind,section,cls", list(_config_classes()),
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_every_numeric_field_has_its_range_checked(kind, section, cls):
    hints = range_hints(cls)
    for f in dataclasses.fields(cls):
        rng, base = field_range(hints[f.name])
        numeric = base in (int, float) or getattr(base, "__origin__", None) is tuple
        if not numeric:
            continue
        assert rng is not None, f"{cls.__name__}.{f.name} has no declared range (use an alias from pcdarts.ranges)"
        for bad in _bad_values(rng, base):
            value = int(bad) if base is int else bad
            if getattr(base, "__origin__", None) is tuple:
                default = f.default if isinstance(f.default, tuple) and f.default else (1.0,)
                value = (value,) * len(default)
            d = {section: {f.name: value}}
            if section == "method":
                d["method"]["name"] = next(n for n in METHODS.names() if METHODS.get(n).Config is cls)
            with pytest.raises(ConfigError, match=rf"{section}\.{f.name} must be"):
                (build_config if kind == "search" else build_train_config)(d)


def test_range_violations_from_python_are_caught_too():
    from pcdarts.config import Config, SpaceConfig
    with pytest.raises(ConfigError, match=r"space\.C must be >= 1, got 0"):
        Config(space=SpaceConfig(C=0))
    with pytest.raises(ConfigError, match=r"data\.max_samples"):
        check_ranges(dataclasses.replace(build_config({}).data, max_samples=-5), "data")


@pytest.mark.parametrize("args,message", [
    (["--space.C", "0"], "space.C must be >= 1, got 0"),
    (["--method.arch_lr", "-1"], "method.arch_lr must be >= 0, got -1.0"),
    (["--data.max_samples", "-5"], "data.max_samples must be >= 1, got -5"),
    (["--search.lr", "nan"], "search.lr must be a finite number >= 0"),
])
def test_out_of_range_values_are_refused_before_anything_runs(tmp_path, capsys, args, message):
    code, _, err = run_cli(["search", "--out", tmp_path / "r", *args], capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()
