"""β-DARTS: the beta-decay regulariser against hand-computed values, its schedule, its
gradient in the architecture step, presets, a whole search and exact resume."""
from __future__ import annotations

import math

import pytest
import torch

from pcdarts.config import build_config, load_preset
from pcdarts.methods.beta_darts import BetaDartsConfig, beta_decay_loss, beta_lambda
from pcdarts.search.searcher import Searcher, new_run_dir


def test_beta_decay_loss_by_hand():
    alphas = {"normal": torch.tensor([[0.0, 0.0], [1.0, 2.0]]), "reduce": torch.tensor([[math.log(3.0), 0.0]])}
    # rows: log(2), log(e + e^2), log(3 + 1) = log 4; mean over the 3 edges of both cell types
    want = (math.log(2.0) + math.log(math.e + math.e ** 2) + math.log(4.0)) / 3
    assert float(beta_decay_loss(alphas)) == pytest.approx(want, rel=1e-6)
    # a removed op (-inf) takes no part in its edge's normaliser
    masked = {"normal": torch.tensor([[0.0, float("-inf"), 0.0]])}
    assert float(beta_decay_loss(masked)) == pytest.approx(math.log(2.0), rel=1e-6)


def test_lambda_follows_the_official_ramp():
    cfg = BetaDartsConfig()
    # official: 0 + 50 * epoch / 100, whatever the search's epochs
    assert [beta_lambda(cfg, e, 50) for e in (0, 1, 10, 49)] == pytest.approx([0.0, 0.5, 5.0, 24.5])
    assert beta_lambda(cfg, 99, 100) == pytest.approx(49.5)
    ramp = BetaDartsConfig(lambda_epochs=None, lambda_max=10.0)
    assert [beta_lambda(ramp, e, 5) for e in (0, 2, 4)] == pytest.approx([0.0, 5.0, 10.0])
    with pytest.raises(Exception, match="order must be 1"):
        BetaDartsConfig(order=2)


def _searcher(cfg_dict):
    cfg = build_config(cfg_dict)
    return Searcher(cfg, new_run_dir(cfg))


def test_arch_gradient_adds_lambda_times_softmax_over_rows(tiny):
    """d/d alpha of lambda * mean_rows logsumexp(alpha) = lambda * softmax(alpha) / rows: the
    architecture gradient of beta-darts minus that of plain DARTS at the same state."""
    cfgs = [tiny(method={"name": name, "warmup_epochs": 0, "order": 1}, space={"name": "nb201", "layers": 1})
            for name in ("beta-darts", "darts")]
    cfgs[1]["run"]["out"] += "-darts"
    beta, plain = (_searcher(c) for c in cfgs)
    plain.method.arch.load_state_dict(beta.method.arch.state_dict())
    plain.supernet.load_state_dict(beta.supernet.state_dict())
    beta.method.reg_lambda = 7.0
    batch = next(iter(beta.sample_batches(1, "arch")))
    grads = []
    for s in (beta, plain):
        loss, _ = s.method.loss(s.context(), batch, s.method.mixing(), "arch")
        grads.append(torch.autograd.grad(loss, s.method.arch_parameters()))
    alpha = beta.method.alphas["cell"].detach()
    rows = alpha.shape[0] * len(beta.method.alphas)
    want = 7.0 * torch.softmax(alpha, -1) / rows
    torch.testing.assert_close(grads[0][0] - grads[1][0], want, rtol=1e-4, atol=1e-6)
    # the weight step's loss carries no term
    wloss_b, _ = beta.method.loss(beta.context(), batch, beta.method.mixing(), "weight")
    wloss_p, _ = plain.method.loss(plain.context(), batch, plain.method.mixing(), "weight")
    assert float(wloss_b.detach()) == pytest.approx(float(wloss_p.detach()), rel=1e-5)


@pytest.mark.parametrize("preset,space", [("beta-darts_nb201", "nb201"), ("beta-darts_cifar10", "darts")])
def test_presets(preset, space):
    cfg = build_config(load_preset(preset))
    assert cfg.method_name == "beta-darts" and cfg.space.name == space
    assert (cfg.method.lambda_max, cfg.method.lambda_epochs, cfg.method.order) == (50.0, 100, 1)
    assert (cfg.method.arch_lr, cfg.method.arch_weight_decay, cfg.search.batch_size) == (3e-4, 1e-3, 64)


def test_search_records_lambda_and_resumes_exactly(tiny, full_and_resumed):
    base = tiny(method={"name": "beta-darts", "warmup_epochs": 0, "lambda_epochs": 2, "lambda_max": 4.0},
                space={"name": "nb201", "layers": 1}, search={"epochs": 3})
    full, _ = full_and_resumed(base, 4)  # 3 steps per epoch: stops mid-epoch 1
    assert [h["beta_lambda"] for h in full.history] == pytest.approx([0.0, 2.0, 4.0])
    assert all(h["beta_decay_loss"] > 0 for h in full.history)
