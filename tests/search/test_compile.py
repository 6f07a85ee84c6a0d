"""``search.compile``: the fast path traces with zero graph breaks, each structure compiles once
per step kind (never per step), and the compiled steps equal the eager ones.

Tracing is slow on these 2-core machines (~20 s per graph for the tiny NB201 supernet), so the
tests use ``aot_eager`` (dynamo + AOTAutograd, no code generation) and are marked slow.
"""
from __future__ import annotations

import pytest
import torch

from pcdarts.search.config import build_config
from pcdarts.errors import ConfigError
from pcdarts.search import searcher as searcher_mod
from pcdarts.search.searcher import Searcher, new_run_dir
from tests.conftest import tiny_method


def _searcher(tiny, tag: str, method: str = "darts", space: str = "nb201", **search) -> Searcher:
    cfg = build_config(tiny(method=tiny_method(method),
                            space={"name": space, "layers": 1 if space == "nb201" else 3},
                            search=search, run={"out": str(tiny()["run"]["out"]) + tag}))
    return Searcher(cfg, new_run_dir(cfg))


def _state(s: Searcher) -> list[torch.Tensor]:
    return [p.detach().clone() for p in s.weight_params] + [p.detach().clone() for p in s.method.arch_parameters()]


@pytest.mark.slow
def test_compiled_step_has_no_graph_break_no_recompile_and_equals_eager(tiny, monkeypatch):
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    backend = CompileCounterWithBackend("aot_eager")
    monkeypatch.setattr(searcher_mod, "COMPILE_BACKEND", backend)
    eager, compiled = _searcher(tiny, "eager"), _searcher(tiny, "compiled", compile=True)
    assert compiled.step_supernet is not compiled.supernet and type(compiled.supernet).__name__.startswith("Fast")
    frames = []
    for s in (eager, compiled):
        ctx = s.context()
        for _ in range(3):
            s.search_step(arch_active=True, ctx=ctx)
            if s is compiled:
                frames.append(backend.frame_count)
    # step 1 eager (it builds the plan caches); step 2 traces the weight and the arch graph
    # (mixing with and without grad); step 3 reuses them
    assert frames == [0, 2, 2]
    assert not counters["graph_break"], dict(counters["graph_break"])
    for a, b in zip(_state(eager), _state(compiled)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


def test_cudagraphs_needs_cuda(tiny):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: search.cudagraphs is allowed")
    with pytest.raises(ConfigError, match="search.cudagraphs needs a CUDA device"):
        _searcher(tiny, "cg", cudagraphs=True)


@pytest.mark.gpu
def test_cudagraphs_step_equals_eager_on_cuda(tiny):
    """search.cudagraphs on CUDA: three steps equal eager ones (skipped without CUDA: no GPU here)."""
    torch._dynamo.reset()
    runs = []
    for tag, opts in (("eager", {}), ("cg", {"cudagraphs": True})):
        s = _searcher(tiny, tag, **opts)
        ctx = s.context()
        for _ in range(3):
            s.search_step(arch_active=True, ctx=ctx)
        runs.append(_state(s))
    for a, b in zip(*runs):
        torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-3)  # bf16 autocast on CUDA
    torch._dynamo.reset()


def test_a_structure_change_in_an_eager_search_leaves_the_compile_stance_alone(tiny, monkeypatch):
    """Only a compiled search switches torch.compiler's stance on a prune or widen; an eager one
    (no compiled wrapper) must not change that process-wide setting."""
    calls = []
    monkeypatch.setattr(torch.compiler, "set_stance", lambda *a, **k: calls.append(a), raising=False)
    s = _searcher(tiny, "eager-structure")
    assert s.step_supernet is s.supernet
    s._structure_changed()
    assert calls == [] and s._eager_now is False
