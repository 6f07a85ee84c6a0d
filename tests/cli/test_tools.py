"""The tool commands of :mod:`pcdarts.cli.tools` (info, plot, subset, plan) as a user runs them."""
from __future__ import annotations

from pathlib import Path

import pytest

from pcdarts.cli import main
from tests.conftest import CLI_TINY, run_cli


@pytest.fixture(scope="module")
def finished_search_run(tmp_path_factory):
    """A finished tiny search run (2 epochs), copied by the tests that change it."""
    out = tmp_path_factory.mktemp("search") / "run"
    assert main(["search", "--out", str(out), *CLI_TINY]) == 0
    return out


def copy_run(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_plot_writes_next_to_the_genotype(finished_search_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x = copy_run(finished_search_run, tmp_path / "X")
    code, out, err = run_cli(["plot", x, "--format", "svg", "--backend", "matplotlib"], capsys)
    assert code == 0, err
    assert (x / "genotype_normal.svg").is_file() and (x / "genotype_reduce.svg").is_file()
    assert not list(tmp_path.glob("*.svg"))
    a = "|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|none~0|none~1|nor_conv_1x1~2|"
    b = "|avg_pool_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|none~0|none~1|nor_conv_1x1~2|"
    for g in (a, b):
        assert run_cli(["plot", g, "--backend", "matplotlib"], capsys)[0] == 0
    assert len(list(tmp_path.glob("genotype-*_cell.png"))) == 2  # two cells, two files
