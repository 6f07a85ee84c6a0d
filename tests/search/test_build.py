"""The one assembly (``pcdarts/search/build.py``): the components are built in one order by every
caller, and every entry point that reads a search run (``plan --run``, ``derive``,
``ws-analysis --edge-check``) works on a short finished run of each method x space (x objective)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.conftest import tiny_method

from pcdarts.cli import main
from pcdarts.config import ConfigError, SpaceConfig, build_config
from pcdarts.registry import METHODS, OBJECTIVES, SPACES
from pcdarts.search import planner
from pcdarts.search.build import build_components, load_run
from pcdarts.search.searcher import Searcher, new_run_dir

EPOCHS = {"is-darts": 2}  # its first shrink follows a trained epoch; every other method: 1 epoch
OBJECTIVE = "cross-entropy"  # the default objective


def smallest_shape(space: str) -> dict:
    """The fewest cells (or cells per stage, blocks) and nodes the space accepts: the quickest
    supernet (a space whose candidates are given per edge of a 4-node cell keeps 4 nodes)."""
    for layers in (1, 2, 3):
        for nodes in (2, None):
            shape = {"layers": layers, **({"nodes": nodes} if nodes else {})}
            try:
                SPACES.get(space)().check_config(SpaceConfig(name=space, C=4, **shape))
                return shape
            except ConfigError:
                continue
    return {}


def run_config(method: str, space: str, objective: str, out: Path) -> dict:
    return {
        "method": tiny_method(method),
        "space": {"name": space, "C": 4, **smallest_shape(space)},
        "objective": {"name": objective},
        "data": {"dataset": "digits", "max_samples": 32, "train_portion": 0.5},
        "search": {"epochs": EPOCHS.get(method, 1), "batch_size": 8},
        "run": {"seed": 0, "out": str(out), "progress": False, "plots": False, "threads": 1},
    }


# The whole product (methods x spaces x objectives) grows with every addition and costs too much of
# the suite's time (a DARTS-space run and its edge check take seconds), so: every method on the
# darts space, every space with pc-darts, and every other objective with every method on the
# cheap nb201 space (the registry refuses some: those are skipped with its reason).
COMBOS = sorted({(m, "darts", OBJECTIVE) for m in METHODS.names()}
                | {("pc-darts", s, OBJECTIVE) for s in SPACES.names()}
                | {(m, "nb201", o) for m in METHODS.names() for o in OBJECTIVES.names() if o != OBJECTIVE})


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """``run(method, space, objective)`` -> a finished 1-epoch search run directory, one per
    combination, shared by the tests of this module; a combination the config refuses is skipped
    with the refusal as the reason."""
    made: dict[tuple[str, str, str], Path] = {}

    def run(method: str, space: str, objective: str) -> Path:
        key = (method, space, objective)
        if key not in made:
            out = tmp_path_factory.mktemp(f"{method}-{space}-{objective}") / "run"
            try:
                cfg = build_config(run_config(method, space, objective, out))
            except ConfigError as e:
                pytest.skip(f"the config refuses {method} x {space} x {objective}: {e}")
            Searcher(cfg, new_run_dir(cfg)).run()
            made[key] = out
        return made[key]

    return run


def _one_step(space, method, C, layers, k, input_size, in_channels, num_classes, impl, amp, channel_mode, rss,
              objective="cross-entropy", config=None):
    """Stands in for the planner's measurement (a fresh process, profiled steps at four batches:
    tests/search/test_planner.py checks its figures): the planned step built from the run's config and run once,
    in this process; its state counted, activations left at zero."""
    step = planner._Step(space, method, C, layers, k, input_size, in_channels, num_classes, impl, channel_mode,
                         objective, config)
    step.run(2)
    return planner._Measured(step.state_mib(), 0.0, 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("method,space,objective", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_plan_derive_and_edge_check_work_on_a_finished_run(finished_runs, method, space, objective, tmp_path,
                                                           capsys, monkeypatch):
    run = finished_runs(method, space, objective)
    capsys.readouterr()
    # derive: the genotype of the checkpoint is the run's
    assert main(["derive", str(run)]) == 0
    written = json.loads((run / "genotype.json").read_text())["str"]
    assert capsys.readouterr().out.splitlines()[0] == written
    # plan: the run's own step (its config, method settings and data shape)
    monkeypatch.setattr(planner, "_measure", _one_step)
    assert main(["plan", "--run", str(run), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    side = json.loads((run / "manifest.json").read_text())["network"]["input_size"]
    assert (plan["space"], plan["method"], plan["objective"], plan["C"], plan["batch"], plan["input_size"]) == (
        space, method, objective, 4, 8, side)
    assert plan["breakdown"]["params"] > 0
    # ws-analysis --edge-check: the supernet with the run's weights, prepared by its method first
    out = tmp_path / "ec"
    code = main(["ws-analysis", "--edge-check", str(run), "--val-samples", "8", "--bn", "running",
                 "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    result = json.loads((out / "edge_check.json").read_text())
    assert result["method"] == method and result["space"] == space
    # every edge with two or more live ops (other than none) is discretised to each of them
    parts = load_run(run).parts
    real = torch.tensor([p != "none" for p in parts.space.primitives])
    assert len(result["edges"]) == sum(int((m[:, real].sum(1) >= 2).sum()) for m in parts.supernet.masks.values())


def test_the_assembly_order_and_a_loaded_run_equal_the_searchers(tiny):
    """The Searcher's components are the assembly's; a run loaded back has the run's state."""
    cfg = build_config(tiny(method={"name": "msr-darts"}, space={"name": "nb201", "layers": 1},
                            search={"epochs": 1}, data={"max_samples": 32}))
    searcher = Searcher(cfg, new_run_dir(cfg))
    result = searcher.run()
    loaded = load_run(result.run_dir)
    parts = loaded.parts
    assert loaded.cfg == cfg and parts.k == searcher.k and parts.impl == searcher.impl
    # MSR-DARTS reparametrises the convs in prepare_supernet: the loaded supernet has the run's parametrised weights
    state = searcher.supernet.state_dict()
    assert any("parametrizations" in k for k in state) and state.keys() == parts.supernet.state_dict().keys()
    assert all(torch.equal(v, parts.supernet.state_dict()[k]) for k, v in state.items())
    assert all(torch.equal(v, parts.supernet.masks[ct]) for ct, v in searcher.supernet.masks.items())
    assert torch.equal(parts.generator.get_state(), searcher.arch_generator.get_state())
    assert parts.derive() == result.genotype
    # the weights the optimiser trains: the supernet's trainable parameters (and the objective's), once each
    ids = [id(p) for p in parts.weight_params]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in parts.supernet.parameters() if p.requires_grad}


def test_build_components_prunes_a_new_run_only_and_takes_a_checkpoints_structure(tiny):
    cfg = build_config(tiny(space={"name": "nb201", "layers": 1},
                            search={"prune": "naswot:0.5", "prune_batch_size": 4}))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g))]
    parts = build_components(cfg, input_shape=(1, 8, 8), num_classes=10, sample_batches=lambda n, split: batches)
    assert parts.prune_report is not None and not parts.supernet.masks["cell"].all()
    checkpoint = {"masks": {ct: m.clone() for ct, m in parts.supernet.masks.items()}, "structure": {"k": 1}}
    again = build_components(cfg, input_shape=(1, 8, 8), num_classes=10, checkpoint=checkpoint,
                             sample_batches=lambda n, split: batches)
    assert again.prune_report is None and again.k == 1  # no second pruning; the checkpoint's K
    assert all(torch.equal(again.supernet.masks[ct], m) for ct, m in checkpoint["masks"].items())


def test_the_weight_sharing_analysis_builds_through_the_supernet_stage():
    """ws-analysis's supernets come from the assembly's supernet stage (spaces/build.py): the NB201
    one is the search space's fast supernet, the tiny one refuses what it cannot build."""
    from pcdarts.analysis.ws import WSConfig, enumerate_children
    from pcdarts.analysis.ws_train import fresh_supernet
    from pcdarts.spaces.build import make_supernet
    from pcdarts.spaces.nb201 import FastNB201Supernet
    from pcdarts.spaces.tiny import TinySpace, TinySupernet
    cfg = WSConfig(space="nb201", sample=2, C=4, layers=1, bn_momentum=0.3)
    net = fresh_supernet(cfg, enumerate_children(cfg), 10, 3, fast=True)
    momenta = {m.momentum for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert type(net) is FastNB201Supernet and momenta == {0.3}
    tiny = fresh_supernet(WSConfig(C=4), enumerate_children(WSConfig()), 10, 3, fast=False)
    assert isinstance(tiny, TinySupernet) and tiny.use_reference
    with pytest.raises(ValueError, match="no partial channels"):
        make_supernet(TinySpace(), SpaceConfig(name="tiny", C=4), k=2, num_classes=10, in_channels=3,
                      device=torch.device("cpu"))
