"""The search config (:mod:`pcdarts.config`): numbers as YAML 1.2 and ``float()`` read them, integers
written as floats refused, dotted overrides, and bad preset files named in one line."""
from __future__ import annotations

import pytest
import yaml

from pcdarts.config import build_config, load_config_file
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
