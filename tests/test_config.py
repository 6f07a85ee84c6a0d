"""pcdarts.config: the one machinery (Schema) that search and training configs are built by."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest

from pcdarts import config
from pcdarts.errors import ConfigError
from pcdarts.ranges import Count, Rate


@dataclass(frozen=True)
class _Loop:
    epochs: Count = 3
    lr: Rate = 0.1
    note: Optional[str] = None


@dataclass(frozen=True)
class _Out:
    dir: str = "x"


def _schema(tmp_path) -> config.Schema:
    (tmp_path / "toy_fast.yaml").write_text("loop:\n  epochs: 7\n")
    (tmp_path / "other_thing.yaml").write_text("loop: {}\n")
    return config.Schema("pcdarts toy", {"loop": _Loop, "out": _Out}, named=("method",), example="--loop.epochs 5",
                         preset_prefix="toy_", preset_kind="toy preset", preset_dir=tmp_path)


def test_a_schema_builds_sections_from_a_preset_and_dotted_overrides(tmp_path):
    s = _schema(tmp_path)
    assert s.preset_names() == ["fast"]
    d = s.load_preset("fast")
    for dotted, value in s.parse_overrides(["--loop.lr", "1e-3", "--out.dir=y", "--method.k", "2"]):
        s.apply_override(d, dotted, value)
    built = s.build_sections(d)
    assert built == {"loop": _Loop(epochs=7, lr=0.001), "out": _Out(dir="y")}
    assert d["method"] == {"k": 2}  # a named section is the command's to build


@pytest.mark.parametrize("action, message", [
    (lambda s: s.load_preset("nope"), "unknown toy preset 'nope'; choose one of: fast"),
    (lambda s: s.parse_overrides(["loop.epochs"]), "unrecognised argument 'loop.epochs'; overrides look like "
                                                   "--loop.epochs 5 (see pcdarts toy --help)"),
    (lambda s: s.parse_overrides(["--loop.epochs"]), "override --loop.epochs needs a value"),
    (lambda s: s.apply_override({}, "lop.epochs", 1), "unknown override 'lop.epochs': use SECTION.KEY with SECTION "
                                                     "one of method, loop, out"),
    (lambda s: s.apply_override({}, "loop.epoch", 1), "unknown key loop.epoch; valid keys of 'loop': epochs, lr, note"),
    (lambda s: s.build_sections({"loop": {"epochs": 0}}), "loop.epochs must be >= 1, got 0"),
    (lambda s: s.build_sections({"loop": {"epochs": 1e3}}), "loop.epochs must be a whole number"),
    (lambda s: s.build_sections({"loop": {"lr": "fast"}}), "loop.lr must be of type float"),
    (lambda s: s.build_sections({"loops": {}}), "unknown config section(s) ['loops']"),
])
def test_every_bad_input_is_one_named_config_error(tmp_path, action, message):
    with pytest.raises(ConfigError) as e:
        action(_schema(tmp_path))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_search_and_training_are_built_by_the_same_machinery():
    from pcdarts.search import config as search_config
    from pcdarts.train import config as train_config
    assert isinstance(search_config.SCHEMA, config.Schema) and isinstance(train_config.SCHEMA, config.Schema)
    # the two commands' presets share a folder and stay apart
    assert not any(n.startswith("train_") for n in search_config.preset_names())
    assert "short" in train_config.train_preset_names() and "quick" in search_config.preset_names()
    # training errors are ConfigErrors from the same path (no re-raised copies)
    with pytest.raises(ConfigError, match=r"^train\.epochs must be >= 1, got 0$"):
        train_config.build_train_config({"train": {"epochs": 0}})
    with pytest.raises(ConfigError, match=r"^unknown key model\.depth; valid keys of 'model'"):
        train_config.apply_override({}, "model.depth", 3)
