"""The config machinery (:mod:`pcdarts.config`) and the search config: numbers as YAML 1.2 and
``float()`` read them, integers
written as floats refused, dotted overrides, and bad preset files named in one line."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest
import yaml

from pcdarts import config
from pcdarts.errors import ConfigError
from pcdarts.ranges import Count, Rate
from pcdarts.search.config import build_config, load_config_file
from pcdarts.train.config import build_train_config
from tests.conftest import CLI_TINY, one_line_error, run_cli


@pytest.mark.parametrize("text,value", [("1e-3", 1e-3), ("3e-4", 3e-4), ("1.0e6", 1e6), (".5", 0.5),
                                        ("3E-4", 3e-4), ("+1e-2", 1e-2)])
def test_floats_accept_scientific_notation_everywhere(tmp_path, text, value):
    from pcdarts.cli import build_parser, search_config_dict
    args = build_parser().parse_args(["search"])
    d = search_config_dict(args, ["--method.arch_lr", text])
    assert build_config(d).method.arch_lr == value
    preset = tmp_path / "p.yaml"
    preset.write_text(f"method: {{name: pc-darts, arch_lr: {text}}}\nsearch: {{lr: {text}, lr_min: 0}}\n")
    args = build_parser().parse_args(["search", "--preset", str(preset)])
    cfg = build_config(search_config_dict(args, []))
    assert cfg.method.arch_lr == value and cfg.search.lr == value
    (tmp_path / "config.yaml").write_text(f"method: {{name: darts, arch_lr: {text}}}\n")
    assert load_config_file(tmp_path / "config.yaml").method.arch_lr == value
    assert build_train_config({"train": {"lr": text}}).train.lr == value


@pytest.mark.parametrize("text", ["1e3", "1.0e3", "10.0"])
def test_ints_written_as_floats_are_refused_with_a_clear_message(capsys, tmp_path, text):
    code, _, err = run_cli(["search", "--out", tmp_path / "r", "--search.epochs", text], capsys)
    assert code == 2 and "search.epochs must be a whole number" in err and not (tmp_path / "r").exists()


def test_readme_override_example_works(tmp_path, capsys):
    code, _, err = run_cli(["search", "--out", tmp_path / "r", *CLI_TINY, "--method.arch_lr", "1e-3"], capsys)
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["method"]["arch_lr"] == 1e-3


# moved from the issue-12 grab-bag (crash safety, bad input, TensorBoard)

@pytest.mark.parametrize("body,named", [
    ("search: {epochs: 2, bogus: 1}\n", "search.bogus"),
    ("space: {C: -4}\n", "space.C"),
    ("search: {batch_size: 0}\n", "search.batch_size"),
    ("search: {epochs: two}\n", "search.epochs"),
    ("search: [1, 2]\n", "preset.yaml"),
])
def test_bad_preset_files_are_named(tmp_path, capsys, body, named):
    p = tmp_path / "preset.yaml"
    p.write_text(body)
    code, _, err = run_cli(["search", "--preset", p, "--out", tmp_path / "r"], capsys)
    assert code == 2 and named in one_line_error(err) and not (tmp_path / "r").exists(), err



# ---------------------------------------------------------------- the machinery (Schema) by itself


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
