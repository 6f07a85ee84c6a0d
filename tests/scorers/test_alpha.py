"""Derivation rules on hand-written weights, and genotype round trips."""
from __future__ import annotations

import json

import pytest
import torch

from pcdarts.genotype import (DartsGenotype, GenotypeError, NB201Genotype, load_genotype, parse_genotype,
                              save_genotype)
from pcdarts.nn.ops import DARTS_PRIMITIVES as P
from pcdarts.nn.ops import NB201_PRIMITIVES as Q
from pcdarts.genotype.published import PUBLISHED
from pcdarts.scorers.alpha import alpha_beta_scores, normalise_edges
from pcdarts.spaces import get_space
from pcdarts.spaces.darts import darts_node_edges


def _weights(entries: dict[int, dict[str, float]], E: int = 14) -> torch.Tensor:
    w = torch.full((E, len(P)), 0.01)
    for e, ops in entries.items():
        for op, v in ops.items():
            w[e, P.index(op)] = v
    return w


def test_darts_rule_top2_edges_and_argmax_without_none():
    # node 2: edges 0,1; node 3: 2,3,4; node 4: 5..8; node 5: 9..13
    normal = _weights({
        0: {"none": 0.9, "sep_conv_3x3": 0.05},   # `none` is strongest but never counts
        1: {"skip_connect": 0.3},
        2: {"max_pool_3x3": 0.2}, 3: {"dil_conv_5x5": 0.6}, 4: {"sep_conv_5x5": 0.5},
        5: {"avg_pool_3x3": 0.1}, 6: {"none": 0.99}, 7: {"sep_conv_3x3": 0.4}, 8: {"dil_conv_3x3": 0.45},
        9: {"skip_connect": 0.7}, 10: {}, 11: {}, 12: {}, 13: {"sep_conv_3x3": 0.8},
    })
    reduce = _weights({0: {"max_pool_3x3": 0.5}, 1: {"avg_pool_3x3": 0.4}, 3: {"skip_connect": 0.3},
                       4: {"sep_conv_3x3": 0.2}, 5: {"dil_conv_3x3": 0.3}, 6: {"dil_conv_5x5": 0.35},
                       11: {"sep_conv_5x5": 0.9}, 12: {"max_pool_3x3": 0.8}})
    g = get_space("darts").derive({"normal": normal, "reduce": reduce})
    assert g.normal == (("skip_connect", 1), ("sep_conv_3x3", 0),
                        ("dil_conv_5x5", 1), ("sep_conv_5x5", 2),
                        ("dil_conv_3x3", 3), ("sep_conv_3x3", 2),
                        ("sep_conv_3x3", 4), ("skip_connect", 0))
    assert g.reduce == (("max_pool_3x3", 0), ("avg_pool_3x3", 1),
                        ("skip_connect", 1), ("sep_conv_3x3", 2),
                        ("dil_conv_5x5", 1), ("dil_conv_3x3", 0),
                        ("sep_conv_5x5", 2), ("max_pool_3x3", 3))
    assert g.normal_concat == (2, 3, 4, 5)
    # the two inputs of a node are distinct edges
    for cell in (g.normal, g.reduce):
        for j in range(4):
            assert cell[2 * j][1] != cell[2 * j + 1][1]


def test_darts_rule_uses_the_beta_product():
    alpha = torch.zeros(14, 8)
    alpha[0, P.index("sep_conv_3x3")] = 3.0   # edge 0 -> node 2 strongest by alpha alone
    alpha[1, P.index("sep_conv_5x5")] = 2.0
    alpha[2:, P.index("skip_connect")] = 1.0
    beta = torch.zeros(14)
    beta[0] = -10.0                            # ... but beta switches edge 0 off
    scores = alpha_beta_scores({"normal": alpha, "reduce": alpha}, {"normal": beta, "reduce": torch.zeros(14)},
                               darts_node_edges(4))
    g = get_space("darts").derive(scores)
    assert g.reduce[:2] == (("sep_conv_3x3", 0), ("sep_conv_5x5", 1))
    # node 2 only has two inputs, so edge 0 stays, but edge 1 now ranks first
    assert g.normal[:2] == (("sep_conv_5x5", 1), ("sep_conv_3x3", 0))
    # the combined weight is softmax(alpha) * per-node softmax(beta)
    nb = normalise_edges(beta, darts_node_edges(4))
    assert torch.allclose(scores["normal"], torch.softmax(alpha, -1) * nb[:, None])
    assert torch.allclose(nb[:2].sum(), torch.tensor(1.0)) and torch.allclose(nb[9:].sum(), torch.tensor(1.0))


def test_darts_rule_excludes_masked_ops():
    w = _weights({e: {"sep_conv_3x3": 0.9, "max_pool_3x3": 0.5} for e in range(14)})
    mask = torch.ones(14, 8, dtype=torch.bool)
    mask[:, P.index("sep_conv_3x3")] = False
    g = get_space("darts").derive({"normal": w, "reduce": w}, {"normal": mask})
    assert {op for op, _ in g.normal} == {"max_pool_3x3"}
    assert {op for op, _ in g.reduce} == {"sep_conv_3x3"}


def test_nb201_rule_is_argmax_per_edge_none_allowed():
    w = torch.zeros(6, 5)
    for e, op in enumerate(["nor_conv_3x3", "none", "skip_connect", "avg_pool_3x3", "nor_conv_1x1", "none"]):
        w[e, Q.index(op)] = 1.0
    g = get_space("nb201").derive({"cell": w})
    assert g.arch_str() == "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|"
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[:, Q.index("none")] = False
    g2 = get_space("nb201").derive({"cell": w}, {"cell": mask})
    assert "none" not in g2.ops


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_genotype_json_round_trip(tmp_path, name):
    g = PUBLISHED[name]
    save_genotype(g, tmp_path / "genotype.json")
    assert load_genotype(tmp_path / "genotype.json") == g
    assert load_genotype(tmp_path) == g  # a run directory holding genotype.json
    assert parse_genotype(str(g)) == g


def test_darts_genotype_string_accepts_pasted_published_cells():
    text = ("Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), "
            "('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
            "('skip_connect', 2)], normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), "
            "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), "
            "('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=range(2, 6))")
    assert parse_genotype(text) == PUBLISHED["DARTS_V1"]
    assert DartsGenotype.parse(str(PUBLISHED["DARTS_V2"])) == PUBLISHED["DARTS_V2"]


def test_nb201_arch_string_round_trip():
    s = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    g = NB201Genotype.from_arch_str(s)
    assert g.arch_str() == s and str(g) == s
    assert g.ops[2] == "avg_pool_3x3"  # edge 1 -> 2


@pytest.mark.parametrize("bad,field", [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|", "node 2"),
    ("|conv_7x7~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|", "conv_7x7"),
    ("|nor_conv_3x3~1|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|", "node 1"),
    ("nor_conv_3x3~0+x", "3"),
])
def test_malformed_arch_string_names_the_field(bad, field):
    with pytest.raises(GenotypeError, match=field):
        NB201Genotype.from_arch_str(bad)


def test_malformed_genotype_file_names_the_file_and_field(tmp_path):
    p = tmp_path / "genotype.json"
    d = PUBLISHED["DARTS_V2"].to_dict()
    d["normal"][3] = ["sep_conv_9x9", 1]
    p.write_text(json.dumps(d))
    with pytest.raises(GenotypeError, match=r"genotype.json.*normal.*entry 3.*sep_conv_9x9"):
        load_genotype(p)
    d = PUBLISHED["DARTS_V2"].to_dict()
    d["reduce"][7] = ["skip_connect", 5]   # node 5 can only read 0..4
    p.write_text(json.dumps(d))
    with pytest.raises(GenotypeError, match=r"reduce.*entry 7.*input 5"):
        load_genotype(p)
    p.write_text("{not json")
    with pytest.raises(GenotypeError, match="genotype.json"):
        load_genotype(p)
    d = PUBLISHED["DARTS_V2"].to_dict()
    del d["reduce_concat"]
    p.write_text(json.dumps(d))
    with pytest.raises(GenotypeError, match="reduce_concat"):
        load_genotype(p)
    with pytest.raises(GenotypeError, match="published"):
        load_genotype("NOT_A_CELL")


# ---------------------------------------------------------------- named derive rules, scorers with data

def test_node_pairs_rule_keeps_the_two_best_pairs_which_may_share_an_input():
    from pcdarts.spaces import get_space
    space = get_space("darts")
    E, O = 14, len(space.primitives)
    s = torch.full((E, O), 0.01)
    conv, skip = space.primitives.index("sep_conv_3x3"), space.primitives.index("skip_connect")
    s[0, conv], s[0, skip] = 0.9, 0.8  # node 2: both best pairs come from input 0
    s[1, conv] = 0.5
    scores = {"normal": s, "reduce": s.clone()}
    pairs = space.derive(scores, rule="node-pairs")
    assert pairs.normal[:2] == (("sep_conv_3x3", 0), ("skip_connect", 0))
    darts = space.derive(scores)  # the default rule: two distinct inputs
    assert darts.normal[:2] == (("sep_conv_3x3", 0), ("sep_conv_3x3", 1))
    with pytest.raises(Exception, match="unknown derive rule 'x'.*darts, node-pairs"):
        space.derive(scores, rule="x")


def test_a_scorer_reads_the_supernet_and_data_through_the_context(tiny):
    """The scorer seam: a registered scorer gets the method and the search context (supernet,
    sample_batches); drawing batches never moves the training loaders."""
    from pcdarts.config import build_config
    from pcdarts.registry import SELECTORS
    from pcdarts.search.searcher import Searcher, new_run_dir

    seen = {}

    def data_scorer(method, ctx):
        batches = ctx.sample_batches(2, "train")
        seen["n"] = sum(len(y) for _, y in batches)
        seen["same"] = torch.equal(batches[0][0], ctx.sample_batches(1, "train")[0][0])
        return {ct: torch.rand(a.shape) for ct, a in method.alphas.items()}

    if "test-data-scorer" not in SELECTORS:
        SELECTORS.register("test-data-scorer")(data_scorer)
    cfg = build_config(tiny(method={"name": "pc-darts", "selector": "test-data-scorer", "derive_rule": "node-pairs",
                                    "warmup_epochs": 0, "k": 2}))
    s = Searcher(cfg, new_run_dir(cfg))
    pos = (s.train_loader.epoch, s.train_loader.position)
    g = s.derive()
    assert seen == {"n": 24, "same": True} and (s.train_loader.epoch, s.train_loader.position) == pos
    assert len(g.normal) == 8
