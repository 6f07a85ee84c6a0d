"""TensorBoard event files of a search and a training run (:mod:`pcdarts.analysis.tensorboard`,
:mod:`pcdarts.utils`), and the one-line error without the package."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import CLI_TINY_CPU1, CLI_TINY_TRAIN_CPU1, one_line_error, run_cli


def _tags(log_dir: Path) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    ea.Reload()
    return ea.Tags()


def test_tensorboard_search_writes_scalars_histograms_and_the_cell(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "r"
    code, _, err = run_cli(["search", "--out", out, *CLI_TINY_CPU1, "--tensorboard"], capsys)
    assert code == 0, err
    tags = _tags(out / "tb")
    assert {"train_loss", "train_acc", "arch_loss", "arch_acc", "valid_acc", "lr", "param_free_ops",
            "arch_entropy/normal", "arch_entropy/reduce"} <= set(tags["scalars"])
    assert "arch_weights/normal/edge0" in tags["histograms"] and "arch_weights/reduce/edge13" in tags["histograms"]
    assert {"cell/normal", "cell/reduce"} <= set(tags["images"])


@pytest.mark.slow
def test_tensorboard_training_writes_scalars(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "t"
    code, _, err = run_cli(["train", "DARTS_V2", "--preset", "short", "--out", out, *CLI_TINY_TRAIN_CPU1,
                            "--tensorboard"],
                           capsys)
    assert code == 0, err
    assert {"train_loss", "train_acc", "lr", "test_top1", "drop_path_prob"} <= set(_tags(out / "tb")["scalars"])


@pytest.mark.parametrize("command", ["search", "train"])
def test_tensorboard_missing_is_one_line(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    args = ["search", *CLI_TINY_CPU1] if command == "search" else ["train", "DARTS_V2", *CLI_TINY_TRAIN_CPU1]
    code, _, err = run_cli([*args, "--out", tmp_path / "r", "--tensorboard"], capsys)
    line = one_line_error(err)
    assert code == 2 and 'pip install "pcdarts[tensorboard]"' in line and not (tmp_path / "r").exists()
