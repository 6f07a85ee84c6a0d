"""Every entry of every registry (:mod:`pcdarts.registry`) works, on tiny supernets: a name that
registers is a name that runs. Parametrised over the registries themselves, so a new method,
space, objective, scorer, proxy, dataset, network or benchmark is covered the moment it registers.

- METHODS: builds on a tiny NB201 supernet with its data, scores every edge and derives (one search
  step of every method on every space is ``tests/methods/test_base.py``);
- SPACES: builds its supernet, derives a genotype, and that genotype's evaluation network runs;
- NETWORKS: every registered evaluation network serves some space's genotypes;
- OBJECTIVES: a finite loss with gradients on a tiny supernet;
- SELECTORS (scorers): one finite-or-masked score per op of every edge, derivable;
- PROXIES: a finite score of a tiny evaluation network;
- DATASETS: loads, or says in one line what is missing;
- BENCHMARKS: served by some space.
"""
from __future__ import annotations

import math

import pytest
import torch

from pcdarts.config import build_config
from pcdarts.errors import ConfigError, PcdartsError
from pcdarts.nn.networks import build_network
from pcdarts.objectives.base import ObjectiveSetup
from pcdarts.registry import (
    BENCHMARKS,
    DATASETS,
    METHODS,
    NETWORKS,
    OBJECTIVES,
    PROXIES,
    SELECTORS,
    SPACES,
)
from pcdarts.search.build import build_components
from pcdarts.search.searcher import Searcher, new_run_dir
from tests.conftest import tiny_config, tiny_method

INPUT = (1, 16, 16)  # the digits of tiny_config
CLASSES = 10


def _space_config(tmp_path, space: str, **sections) -> dict:
    """A tiny config on ``space``: one cell (per stage) where the space allows it, else 3."""
    for layers in (1, 3):
        d = tiny_config(tmp_path, space={"name": space, "layers": layers}, **sections)
        try:
            build_config(d)
            return d
        except ConfigError as e:
            if "space.layers" not in str(e):
                raise
    return d


def _components(tmp_path, space: str, **sections):
    cfg = build_config(_space_config(tmp_path, space, **sections))
    return build_components(cfg, input_shape=INPUT, num_classes=CLASSES)


def _batch(n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *INPUT), generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def _small_network(genotype, layers=(3, None)):
    """The evaluation network of ``genotype`` at C=4 with few cells (3, else the space's default)."""
    for n in layers:
        try:
            return build_network(genotype, num_classes=CLASSES, in_channels=INPUT[0], C=4, layers=n, auxiliary=False)
        except (ValueError, AssertionError, PcdartsError):
            if n is None:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def derived(tmp_path_factory):
    """space name -> the genotype PC-DARTS derives from its freshly built tiny supernet."""
    out = {}
    for name in SPACES.names():
        out[name] = _components(tmp_path_factory.mktemp(name), name).derive()
    return out


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_builds_and_derives(tmp_path, method):
    """Built through the one assembly with its data, every method scores every edge and derives a
    genotype before any step (one search step of every method on every space: tests/methods/test_base.py)."""
    cfg = build_config(_space_config(tmp_path, "nb201", method=tiny_method(method)))
    s = Searcher(cfg, new_run_dir(cfg))
    assert all(torch.isfinite(p).all() for p in s.method.arch_parameters())
    ctx = s.context()
    s.method.on_search_start(ctx)  # a baseline that picks its cell up front (random-lookup) does it here
    scores = s.method.scores(ctx)
    assert set(scores) == set(s.space.cell_types) and not any(torch.isnan(v).any() for v in scores.values())
    assert s.space.derive(scores, getattr(s.supernet, "masks", None), s.method.derive_rule()) is not None


@pytest.mark.parametrize("space", SPACES.names())
def test_every_space_builds_derives_and_its_genotype_trains(space, derived):
    net = _small_network(derived[space])
    x, y = _batch()
    out = net(x)
    logits = out[0] if isinstance(out, tuple) else out
    assert logits.shape == (len(x), CLASSES) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, y).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("network", NETWORKS.names())
def test_every_network_serves_some_space(network, derived):
    assert any(getattr(g, "space", None) == network for g in derived.values()), \
        f"no registered space derives a genotype of space {network!r}"


@pytest.mark.parametrize("objective", OBJECTIVES.names())
def test_every_objective_computes_a_finite_loss_with_gradients(tmp_path, objective):
    parts = _components(tmp_path, "nb201", objective={"name": objective})
    setup = ObjectiveSetup(parts.supernet, parts.space, parts.cfg.space, INPUT, CLASSES, parts.device)
    loss, _ = parts.objective(parts.supernet, _batch(), setup.uniform_mixing())
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
               for p in parts.weight_params)


# scorers that read one method's state (any other scorer works with DARTS's)
SCORER_METHOD = {"stable-rank": "msr-darts"}


@pytest.mark.parametrize("selector", SELECTORS.names())
def test_every_scorer_scores_every_op_of_every_edge(tmp_path, selector):
    name = SCORER_METHOD.get(selector, "darts")
    method = tiny_method(name) if name in SCORER_METHOD.values() else dict(tiny_method(name), selector=selector)
    cfg = build_config(_space_config(tmp_path, "nb201", method=method))
    s = Searcher(cfg, new_run_dir(cfg))
    scores = SELECTORS.get(selector)(s.method, s.context())
    E, O = s.space.arch_shape(cfg.space)
    assert set(scores) == set(s.space.cell_types)
    for t in scores.values():
        assert t.shape == (E, O) and not torch.isnan(t).any()
    assert s.space.derive(scores, getattr(s.supernet, "masks", None), s.method.derive_rule()) is not None


@pytest.mark.parametrize("proxy", PROXIES.names())
def test_every_proxy_scores_a_tiny_network_finitely(proxy, derived):
    torch.manual_seed(0)
    net = build_network(derived["nb201"], num_classes=CLASSES, in_channels=INPUT[0], C=4, layers=1)
    value = PROXIES.get(proxy)(net, _batch(8), seed=0)
    assert isinstance(value, float) and math.isfinite(value)


@pytest.mark.parametrize("dataset", DATASETS.names())
def test_every_dataset_loads_or_names_what_is_missing_in_one_line(tmp_path, dataset):
    from pcdarts.data.sources import load_dataset
    missing = tmp_path / "nowhere"
    loaded = 0
    for spec in (dataset, f"{dataset}:{missing}"):
        try:
            d = load_dataset(spec)
        except PcdartsError as e:
            msg = str(e)
            assert "\n" not in msg.strip() and (dataset in msg or str(missing) in msg), msg
            continue
        loaded += 1
        assert len(d.images) == len(d.labels) > 0 and d.images.dim() == 4
    if loaded == 0:  # neither spelling loads: the message for the missing path names it
        with pytest.raises(PcdartsError, match="nowhere"):
            load_dataset(f"{dataset}:{missing}")


@pytest.mark.parametrize("bench", BENCHMARKS.names())
def test_every_benchmark_serves_some_space(bench):
    assert any(SPACES.get(s).benchmark == bench for s in SPACES.names() if hasattr(SPACES.get(s), "benchmark"))
