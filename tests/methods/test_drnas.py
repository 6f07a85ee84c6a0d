"""DrNAS (:mod:`pcdarts.methods.drnas`): the reparameterised Dirichlet sample's gradient, one sample
per step from the run's generator, the regularisers, exact resume, the presets."""
from __future__ import annotations

import pytest
import torch

import pcdarts
from pcdarts.config import build_config
from pcdarts.registry import METHODS
from pcdarts.search.searcher import Searcher, new_run_dir
from pcdarts.spaces import get_space


def _searcher(cfg_dict):
    cfg = build_config(cfg_dict)
    return Searcher(cfg, new_run_dir(cfg))


def _final_alphas(result):
    return result.history[-1]["arch_weights"]


def test_dirichlet_sample_gradient_equals_torch_rsample():
    from pcdarts.methods.drnas import dirichlet_rsample
    conc = (torch.rand(5, 4, dtype=torch.float64) * 3 + 0.2).requires_grad_()
    w = torch.randn(5, 4, dtype=torch.float64)
    torch.manual_seed(3)
    ours = dirichlet_rsample(conc)
    (g_ours,) = torch.autograd.grad((ours * w).sum(), conc)
    torch.manual_seed(3)
    ref = torch.distributions.Dirichlet(conc).rsample()
    (g_ref,) = torch.autograd.grad((ref * w).sum(), conc)
    assert torch.equal(ours, ref) and torch.allclose(g_ours, g_ref)
    g = torch.Generator().manual_seed(1)
    a = dirichlet_rsample(conc, g)
    g.manual_seed(1)
    assert torch.equal(a, dirichlet_rsample(conc, g))


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_drnas_mixing_is_one_sample_per_step_from_the_run_generator(tiny, space):
    s = _searcher(tiny(method={"name": "drnas"}, space={"name": space, "layers": 3 if space == "darts" else 1}))
    m1, m2 = s.method.mixing(), s.method.mixing()
    for ct, w in m1.ops.items():
        assert torch.allclose(w.sum(-1), torch.ones(w.shape[0]))
        assert not torch.equal(w, m2.ops[ct])  # a fresh sample per step
        none = s.space.primitives.index("none")
        assert (w[:, none] == 0).all() == (space == "darts")  # DARTS space: none is not a candidate
    s.arch_generator.manual_seed(5)
    a = s.method.mixing()
    s.arch_generator.manual_seed(5)
    b = s.method.mixing()
    assert all(torch.equal(a.ops[ct], b.ops[ct]) for ct in a.ops)
    # the genotype ranks by softmax(eta) over the candidates
    g = s.derive()
    assert g == s.space.derive(s.method.scores(), s.supernet.masks)


def test_drnas_regularisers(tiny):
    l2 = _searcher(tiny(method={"name": "drnas"}))
    assert l2.method.optimizer.param_groups[0]["weight_decay"] == 1e-3
    kl = _searcher(tiny(method={"name": "drnas", "reg_type": "kl"}, run={"out": tiny()["run"]["out"] + "kl"}))
    assert kl.method.optimizer.param_groups[0]["weight_decay"] == 0.0
    assert float(kl.method.kl_to_uniform().detach()) == pytest.approx(0.0, abs=1e-3)  # eta ~ 0: beta ~ 1
    kl.search_step(True, kl.context())
    assert all(torch.isfinite(p).all() for p in kl.method.arch_parameters())


def test_drnas_resume_equals_uninterrupted_run(tiny):
    base = tiny(method={"name": "drnas"}, search={"epochs": 2}, space={"name": "nb201", "layers": 1})
    base["run"]["out"] += "-full"
    full = pcdarts.search(base)
    part = dict(base, run=dict(base["run"], out=base["run"]["out"] + "-part"))
    first = pcdarts.search(part, stop_after_steps=4)
    resumed = pcdarts.search(resume=first.run_dir)
    assert _final_alphas(resumed) == _final_alphas(full) and resumed.genotype == full.genotype


def test_drnas_presets():
    from pcdarts.config import load_preset
    cfg = build_config(load_preset("drnas_nb201"))
    assert (cfg.method_name, cfg.search.epochs, cfg.method.arch_lr, cfg.k) == ("drnas", 100, 3e-4, 1)
    prog = build_config(load_preset("drnas_nb201_progressive"))
    assert (prog.k, prog.method.stage_starts, prog.method.stage_k, prog.method.stage_keep_ops) == (4, (50,), (2,), (3,))
    darts = build_config(load_preset("drnas_cifar10_progressive"))
    assert (darts.k, darts.space.C, darts.space.layers, darts.method.stage_k) == (6, 36, 20, (4,))
    m = METHODS.get("drnas")(prog.method, get_space("nb201"), prog.space)
    assert [m.is_arch_active(e) for e in (9, 10, 50, 59, 60)] == [False, True, False, False, True]
    with pytest.raises(Exception, match="stage_k"):
        d = load_preset("drnas_nb201_progressive")
        build_config({**d, "method": {**d["method"], "stage_k": [3]}})
