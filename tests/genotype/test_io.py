"""Genotype files (:mod:`pcdarts.genotype.io`): a bad file is named in one line."""
from __future__ import annotations

import json

import pytest

from tests.conftest import CLI_TINY_TRAIN_CPU1, one_line_error, run_cli


def _genotype_json(first_op: str, first_input: int) -> str:
    normal = [[first_op, first_input]] + [["sep_conv_3x3", i % 2] for i in range(1, 8)]
    reduce = [["max_pool_3x3", i % 2] for i in range(8)]
    return json.dumps({"normal": normal, "normal_concat": [2, 3, 4, 5], "reduce": reduce,
                       "reduce_concat": [2, 3, 4, 5]})


@pytest.mark.parametrize("text,named", [
    (_genotype_json("conv_9x9", 0), "conv_9x9"),    # an unknown op
    (_genotype_json("sep_conv_3x3", 7), "7"),       # node 2 cannot read node 7
], ids=["unknown-op", "bad-node"])
def test_bad_genotype_files_are_named(tmp_path, capsys, text, named):
    g = tmp_path / "genotype.json"
    g.write_text(text)
    code, _, err = run_cli(["train", g, "--out", tmp_path / "t", *CLI_TINY_TRAIN_CPU1], capsys)
    line = one_line_error(err)
    assert code == 2 and named in line and not (tmp_path / "t").exists(), line
