"""Every registered search space owns its knowledge (issue 19, item 3): its config section,
its genotype type, its supernet, derive rules, evaluation network (through the one NETWORKS
registry), its parameter / multiply-add counts and its per-epoch extras. Tiny supernets, CPU."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from pcdarts.config import SpaceConfig, build_config, current_section, load_config_file, space_section
from pcdarts.errors import ConfigError
from pcdarts.genotype import load_genotype, parse_genotype, save_genotype
from pcdarts.genotype.types import GENOTYPE_TYPES
from pcdarts.nn.counting import count_macs, count_params
from pcdarts.nn.edges import Mixing
from pcdarts.nn.networks import build_network, evaluation_of, network_options
from pcdarts.registry import BENCHMARKS, NETWORKS, SPACES
from pcdarts.spaces import get_space
from pcdarts.spaces.build import make_supernet

ALL = SPACES.names()


def _small_cfg(name: str) -> SpaceConfig:
    """The quickest supernet the space accepts (fewest cells; nodes kept where the space fixes them)."""
    space = get_space(name)
    for layers in (1, 2, 3):
        cfg = SpaceConfig(name=name, C=4, layers=layers, impl="reference")
        try:
            space.check_config(cfg)
            return cfg
        except ConfigError:
            continue
    raise AssertionError(f"no small shape for {name}")


@pytest.mark.parametrize("name", ALL)
def test_every_space_builds_derives_trains_counts_and_saves(name, tmp_path):
    space = get_space(name)
    cfg = _small_cfg(name)
    assert isinstance(cfg, space.Config)  # the space's own config section
    torch.manual_seed(0)
    net = make_supernet(space, cfg, k=1, num_classes=3, in_channels=3, device=torch.device("cpu"))
    n_edges, n_ops = space.arch_shape(cfg)
    scores = {ct: torch.randn(n_edges, n_ops).softmax(-1) for ct in space.cell_types}
    logits = net(torch.randn(2, 3, 8, 8), Mixing(ops=scores))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()

    g = space.derive(scores)
    assert type(g) is space.genotype_type and GENOTYPE_TYPES[g.space] is space.genotype_type
    # never an op the edge does not offer (S1's per-edge sets), never an excluded one
    assert not set(g.cell_ops()) & set(space.derive_excluded)
    assert set(g.cell_ops()) <= set(space.primitives)

    # the evaluation network through the one registry; its counts as the size reports count them
    assert g.space in NETWORKS and evaluation_of(g) is NETWORKS.get(g.space)
    ev = build_network(g, num_classes=3, in_channels=3, auxiliary=False)
    out, _ = ev(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 3)
    st = space.genotype_stats(g, num_classes=3, in_channels=3, input_size=16)
    assert st["n_params"] == count_params(ev) > 0
    assert st["n_macs"] == count_macs(ev, (3, 16, 16)) > 0
    assert st["network"].startswith(NETWORKS.get(g.space).label(g))

    # the statistics and pictures ask the genotype type, never test it
    assert g.describe() and all(nodes and edges for _, _, (nodes, edges) in g.graphs())
    assert g.agreement(g) == (len(g.cell_ops()), len(g.cell_ops()))

    # the genotype round-trips through its file and its text form
    save_genotype(g, tmp_path / "genotype.json")
    assert load_genotype(tmp_path / "genotype.json") == g == parse_genotype(str(g))
    assert load_genotype(str(g)) == g


def test_network_registry_serves_every_genotype_family_and_names_the_registered_ones():
    assert {get_space(n).genotype_type.space for n in ALL} <= set(NETWORKS.names())
    assert set(GENOTYPE_TYPES) <= set(NETWORKS.names())

    @dataclasses.dataclass(frozen=True)
    class Foreign:
        space = "nowhere"

    with pytest.raises(TypeError, match="registered: broad, darts, nb201"):
        build_network(Foreign(), num_classes=10)


@pytest.mark.parametrize("name", ALL)
def test_the_training_model_section_reaches_each_network(name):
    from pcdarts.train.config import ModelConfig

    g = get_space(name).derive({ct: torch.rand(*get_space(name).arch_shape(_small_cfg(name)))
                                for ct in get_space(name).cell_types})
    opts = network_options(g, ModelConfig(C=8, layers=8, nb201_C=4, nb201_N=1))
    assert (opts["C"], opts["layers"]) == ((4, 1) if g.space == "nb201" else (8, 8))


@pytest.mark.parametrize("name", ALL)
def test_epoch_extras_come_from_the_space(name, monkeypatch):
    space = get_space(name)
    g = space.derive({ct: torch.rand(*space.arch_shape(_small_cfg(name))) for ct in space.cell_types})
    if space.benchmark is None:
        assert space.epoch_extras(g) == {}
        return
    seen = []

    class Fake:
        def epoch_record(self, genotype, *, table=None):
            seen.append((genotype, table))
            return {"cifar10": {"valid": 90.0, "test": None}}

    monkeypatch.setitem(BENCHMARKS._items, space.benchmark, Fake())
    assert space.epoch_extras(g, table="t.json") == {space.benchmark: {"cifar10": {"valid": 90.0, "test": None}}}
    assert seen == [(g, "t.json")]


@pytest.mark.parametrize("name,keeps_none", [("darts", False), ("broad", False), ("nb201", True), ("s3", True)])
def test_drnas_keeps_none_where_the_space_has_it_as_a_candidate(name, keeps_none):
    from pcdarts.methods.drnas import DrNAS, DrNASConfig

    space = get_space(name)
    m = DrNAS(DrNASConfig(), space, _small_cfg(name))
    none = space.primitives.index("none")
    assert bool(m.arch.candidates[:, none].all()) == keeps_none


# ---------------------------------------------------------------- the per-space config sections

@pytest.mark.parametrize("name", ALL)
def test_each_space_reads_its_own_section(name):
    cfg = build_config({"space": {"name": name}})
    assert type(cfg.space) is get_space(name).Config
    assert set(cfg.to_dict()["space"]) == {f.name for f in dataclasses.fields(get_space(name).Config)}


OLD_FLAT = {"C": 16, "layers": None, "cells_per_block": None, "enhancement_cells": None, "nodes": 4,
            "stem": "cifar", "stem_multiplier": 3, "k": None, "channel_mode": "first+shuffle",
            "track_running_stats": True, "pool_bn": None, "impl": "auto"}  # the one flat section of before


@pytest.mark.parametrize("name", ALL)
def test_old_flat_space_sections_keep_loading(name, tmp_path):
    old = {"name": name, **OLD_FLAT}
    cfg = build_config({"space": old})
    assert type(cfg.space) is get_space(name).Config and cfg.space.C == 16
    # a run's config.yaml of before
    (tmp_path / "config.yaml").write_text(f"space: {old}\n".replace("None", "null").replace("True", "true"))
    assert load_config_file(tmp_path / "config.yaml").space == cfg.space
    # a checkpoint's saved section of before compares equal to what this version writes
    assert current_section("space", old) == cfg.to_dict()["space"]
    # and the old constructor spelling
    assert SpaceConfig(**old) == cfg.space


def test_kept_spellings_of_single_fields():
    assert build_config({"space": {"name": "nb201", "pool_bn": False}}).space == SpaceConfig(name="nb201")
    assert SpaceConfig(name="nb201", nodes=4, stem="cifar") == SpaceConfig(name="nb201")
    assert SpaceConfig(name="broad", cells_per_block=1).cells_per_block == 1
    assert dataclasses.replace(SpaceConfig(name="darts"), nodes=3).nodes == 3


@pytest.mark.parametrize("name,key,value,owner", [
    ("darts", "cells_per_block", 1, "broad"),
    ("darts", "enhancement_cells", 2, "broad"),
    ("nb201", "nodes", 5, "darts"),
    ("nb201", "stem", "imagenet", "darts"),
    ("nb201", "pool_bn", True, "darts"),
    ("s2", "enhancement_cells", 3, "broad"),
])
def test_a_field_of_another_space_is_refused_naming_it_and_its_space(name, key, value, owner):
    with pytest.raises(ConfigError, match=rf"space\.{key}={value!r} belongs to the .*{owner}.* space, not to the "
                                          rf"{name} space"):
        build_config({"space": {"name": name, key: value}})
    with pytest.raises(ConfigError, match=rf"space\.{key}"):
        space_section({"name": name, key: value})


def test_an_unknown_space_key_is_named():
    with pytest.raises(ConfigError, match="unknown key space.nodez"):
        build_config({"space": {"name": "darts", "nodez": 4}})


def test_a_checkpoint_with_the_old_flat_space_section_still_resumes_its_run(tmp_path):
    from pcdarts.errors import CheckpointError
    from pcdarts.runs import CHECKPOINT_VERSION, FORMATS, load_checkpoint, save_checkpoint

    now = build_config({"space": {"name": "nb201"}}).to_dict()
    path = tmp_path / "checkpoint.pt"

    def saved(space):
        save_checkpoint({"format": FORMATS["search"], "version": CHECKPOINT_VERSION,
                         "config": {"method": now["method"], "space": space}}, path)

    saved({"name": "nb201", **OLD_FLAT})  # written before the per-space sections
    load_checkpoint(path, "search", "pcdarts search --resume", config=now, sections=("method", "space"),
                    normalise=current_section)
    with pytest.raises(CheckpointError, match="belongs to another run"):  # compared as written, it would differ
        load_checkpoint(path, "search", "pcdarts search --resume", config=now, sections=("space",))
    saved({"name": "nb201", **OLD_FLAT, "C": 8})  # another run's is still refused, naming the field
    with pytest.raises(CheckpointError, match=r"space\.C 8 vs 16"):
        load_checkpoint(path, "search", "pcdarts search --resume", config=now, sections=("space",),
                        normalise=current_section)
