"""What ``--help`` tells a user: every dataset kind of ``search --data``, what ``--seed`` seeds,
the method notes cited instead of a document that does not ship, and ws-analysis's CPU-sized
default with the way to the paper's setting."""
from __future__ import annotations

import re

from pcdarts.cli import build_parser
from pcdarts.cli.ws import CLI_EPOCHS, config_from_args
from pcdarts.registry import DATASETS


def _sub(command: str):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices[command]


def _help(command: str) -> str:
    return re.sub(r"\s+", " ", _sub(command).format_help())


def _option(command: str, flag: str) -> str:
    return next(a.help for a in _sub(command)._actions if flag in a.option_strings)


def test_search_help_names_every_dataset_and_what_the_seed_seeds():
    data = _option("search", "--data")
    for name in DATASETS.names():
        assert name in data, name
    assert "folder:DIR" in data
    seed = _option("search", "--seed")
    assert seed and "run.seed" in seed and "default 0" in seed


def test_help_cites_the_method_notes_not_algorithms():
    for command in ("search", "zero-cost", "ws-analysis"):
        text = _help(command)
        assert "ALGORITHMS" not in text, command
    assert "docs/methods.md" in _help("zero-cost") and "docs/methods.md" in _help("ws-analysis")


def test_ws_analysis_defaults_to_a_cpu_sized_run_and_names_the_papers_setting():
    args = build_parser().parse_args(["ws-analysis"])
    assert config_from_args(args).epochs == CLI_EPOCHS == 10
    assert config_from_args(build_parser().parse_args(["ws-analysis", "--epochs", "200"])).epochs == 200
    assert "--epochs 200" in _help("ws-analysis")
