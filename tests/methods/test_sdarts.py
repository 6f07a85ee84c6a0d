"""SDARTS (pcdarts.methods.sdarts): the perturbation stays in its radius, alpha is untouched by
the weight step, which runs at the perturbed weights; PGD raises the loss; exact resume; the
fast path equals the reference; the projection, the epsilon schedule, presets and config errors."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pcdarts.config import SpaceConfig, build_config, load_preset
from pcdarts.errors import ConfigError
from pcdarts.methods import SearchContext
from pcdarts.methods.sdarts import SDartsAdvConfig, SDartsConfig, clip_rows
from pcdarts.registry import METHODS
from pcdarts.search.searcher import Searcher, new_run_dir, weight_step
from pcdarts.spaces import get_space
from tests.conftest import assert_fast_equals_reference_steps

METHODS_ = ("sdarts-rs", "sdarts-adv")


def _searcher(tiny, method, space="nb201", **method_fields):
    layers = 3 if space == "darts" else 1
    cfg = build_config(tiny(method={"name": method, **method_fields}, space={"name": space, "layers": layers},
                            data={"max_samples": 32}))
    return Searcher(cfg, new_run_dir(cfg))


def _softmax(method):
    with torch.no_grad():
        return {ct: w.clone() for ct, w in method.mixing().ops.items()}


@pytest.mark.parametrize("space", ["darts", "nb201"])
@pytest.mark.parametrize("method", METHODS_)
def test_the_perturbation_stays_within_the_radius(tiny, method, space):
    s = _searcher(tiny, method, space)
    ctx = s.context()
    ctx.epoch = 1  # the linear schedule: 0.03 + (0.3 - 0.03) * 1 / 2
    eps = 0.03 + 0.27 / 2
    assert s.method.epsilon_at(1, 2) == pytest.approx(eps)
    base = _softmax(s.method)
    delta, mix = s.method.perturb(ctx, s.train_loader.next())
    for ct, w in mix.ops.items():
        assert delta[ct].abs().max() <= eps * (1 + 1e-6)
        assert delta[ct].abs().max() > eps / 2, "no perturbation was applied"
        # the official projection: rows in [0, 1] summing to 1, the clipped softmax(alpha) + delta
        torch.testing.assert_close(w, clip_rows(base[ct] + delta[ct]))
        assert w.min() >= 0 and torch.allclose(w.sum(-1), torch.ones(w.shape[0]))
        assert not w.requires_grad
        # skip_zero_ops: exactly the ops of nonzero weight run
        assert torch.equal(mix.active[ct], (w != 0).cpu())


@pytest.mark.parametrize("method", METHODS_)
def test_without_the_projection_the_weights_stay_within_the_radius(tiny, method):
    s = _searcher(tiny, method, project="none", epsilon_schedule="constant", epsilon=0.2)
    base = _softmax(s.method)
    _, mix = s.method.perturb(s.context(), s.train_loader.next())
    for ct, w in mix.ops.items():
        assert (w - base[ct]).abs().max() <= 0.2 * (1 + 1e-6)
        assert (w - base[ct]).abs().max() > 0.1


def test_removed_ops_stay_at_zero(tiny):
    s = _searcher(tiny, "sdarts-adv", "nb201")
    E, O = s.space.arch_shape(s.cfg.space)
    masks = {"cell": torch.ones(E, O, dtype=torch.bool)}
    masks["cell"][:, 1] = False
    s.method.set_masks(masks)
    delta, mix = s.method.perturb(s.context(), s.train_loader.next())
    assert torch.equal(delta["cell"][:, 1], torch.zeros(E)) and torch.equal(mix.ops["cell"][:, 1], torch.zeros(E))
    assert torch.allclose(mix.ops["cell"].sum(-1), torch.ones(E))


@pytest.mark.parametrize("method", METHODS_)
def test_the_weight_step_runs_at_the_perturbed_weights_and_leaves_alpha_alone(tiny, method):
    s = _searcher(tiny, method)
    ctx, batch = s.context(), s.train_loader.next()
    alpha0 = [p.detach().clone() for p in s.method.arch_parameters()]
    adam0 = copy.deepcopy(s.method.optimizer.state_dict())
    w0 = [p.detach().clone() for p in s.weight_params]
    # the loss at the perturbed weights, then everything the forward passes moved put back
    rng, net = s.arch_generator.get_state(), copy.deepcopy(s.supernet.state_dict())
    _, mix = s.method.perturb(ctx, batch)
    expected = s.method.loss(ctx, batch, mix, "weight")[0].item()
    plain = s.method.loss(ctx, batch, s.method.mixing(), "weight")[0].item()
    s.arch_generator.set_state(rng)
    s.supernet.load_state_dict(net)

    s.weight_step(batch, ctx)
    got = float(s.meters["loss"] / s.meters["n"])
    assert got == pytest.approx(expected, rel=1e-5) and got != pytest.approx(plain, rel=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(alpha0, s.method.arch_parameters()))
    assert all(p.grad is None for p in s.method.arch_parameters())
    assert s.method.optimizer.state_dict()["state"].keys() == adam0["state"].keys()
    assert any(not torch.equal(a, b) for a, b in zip(w0, s.weight_params)), "the weights did not train"


def test_pgd_raises_the_training_loss_above_the_unperturbed_and_the_random_one(tiny):
    """At the first step, in the attack's eval mode, the attacked weights give a higher training
    loss than softmax(alpha) and than a random perturbation of the same radius."""
    s = _searcher(tiny, "sdarts-adv", pgd_revert=False, epsilon_schedule="constant", epsilon=0.1)
    ctx, batch = s.context(), s.train_loader.next()
    _, adv = s.method.perturb(ctx, batch)
    rs = METHODS.get("sdarts-rs")(SDartsConfig(epsilon_schedule="constant", epsilon=0.1), s.space, s.cfg.space)
    rs.load_state_dict(s.method.state_dict())
    rs.generator = torch.Generator().manual_seed(0)
    s.supernet.eval()
    with torch.no_grad():
        loss = {name: s.method.loss(ctx, batch, mix, "weight")[0].item()
                for name, mix in (("plain", s.method.mixing()), ("adv", adv),
                                  ("random", rs.perturb(ctx, batch)[1]))}
    assert loss["adv"] > loss["plain"] and loss["adv"] > loss["random"], loss


def test_a_weaker_attack_is_dropped(tiny, monkeypatch):
    """pgd_revert: an attack that ends below the unperturbed loss leaves softmax(alpha) as it is."""
    s = _searcher(tiny, "sdarts-adv")
    ctx, batch = s.context(), s.train_loader.next()
    base = _softmax(s.method)
    real = s.method.loss
    calls = []

    def loss(ctx, batch, mixing, step="arch"):  # the last pass (the attack's result) looks better
        calls.append(1)
        out, metrics = real(ctx, batch, mixing, step)
        return (out - 100.0 if len(calls) == s.method.cfg.pgd_steps + 2 else out), metrics

    monkeypatch.setattr(s.method, "loss", loss)
    delta, mix = s.method.perturb(ctx, batch)
    assert all(torch.equal(d, torch.zeros_like(d)) for d in delta.values())
    assert all(torch.equal(mix.ops[ct], base[ct]) for ct in base)


@pytest.mark.parametrize("method", METHODS_)
def test_resume_equals_uninterrupted_run(tiny, full_and_resumed, method):
    fields = {"pgd_steps": 2} if method == "sdarts-adv" else {}  # the random start and the attack, cheaper
    base = tiny(method={"name": method, **fields}, space={"name": "nb201", "layers": 1}, data={"max_samples": 32})
    full, resumed = full_and_resumed(base, 3)
    ck_full = torch.load(full.run_dir / "checkpoint.pt", weights_only=False)
    ck_res = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=False)
    for k, v in ck_full["supernet"].items():
        assert torch.equal(v, ck_res["supernet"][k]), k
    assert torch.equal(ck_full["arch_rng"], ck_res["arch_rng"])


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_sdarts_rs_searcher_steps_on_the_fast_path_equal_the_reference(tiny, space):
    """Two whole Searcher steps (arch step, then the weight step at the clipped noisy weights with
    the zero-weight ops skipped) on each path."""
    assert_fast_equals_reference_steps(tiny, {"name": "sdarts-rs"}, space, steps=2)


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_sdarts_adv_weight_step_on_the_fast_path_equals_the_reference_in_float64(space):
    """The attack (eval-mode BN on moved running statistics) and the weight step at its result, on
    both paths. In float64: PGD steps by sign(gradient), so in float32 a gradient entry near 0
    may take either sign on the two paths (their sums run in different orders)."""
    sp = get_space(space)
    scfg = SpaceConfig(name=space, C=4, layers=3 if space == "darts" else 1)
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    out = []
    for impl in ("reference", "fast"):
        torch.manual_seed(1)
        net = sp.build_supernet(dataclasses.replace(scfg, impl=impl), k=1, num_classes=3, in_channels=3)
        torch.manual_seed(2)
        m = METHODS.get("sdarts-adv")(SDartsAdvConfig(epsilon_schedule="constant", pgd_steps=3), sp, scfg)
        net, _ = net.double().train(), m.arch.double()
        m.generator = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for _ in range(2):  # BN running statistics for the eval-mode attack
                net(x, m.mixing())
        params = list(net.parameters())
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=3e-4)
        ctx = SearchContext(supernet=net, objective=lambda n, b, mix: (F.cross_entropy(n(b[0], mix), b[1]), {}),
                            weight_params=params, weight_step_info=lambda: None)
        rng = m.generator.get_state()
        delta, mix = m.perturb(ctx, (x, y))
        m.generator.set_state(rng)
        weight_step(m, opt, (x, y), ctx, grad_clip=5.0)
        assert net.training
        out.append((delta, mix, [p.detach().clone() for p in params], [b.clone() for b in net.buffers()]))
    (d_ref, m_ref, w_ref, b_ref), (d_fast, m_fast, w_fast, b_fast) = out
    for ct in d_ref:
        assert d_ref[ct].abs().max() > 0
        torch.testing.assert_close(d_fast[ct], d_ref[ct])
        torch.testing.assert_close(m_fast.ops[ct], m_ref.ops[ct])
        assert torch.equal(m_fast.active[ct], m_ref.active[ct]) and not bool(m_ref.active[ct].all())
    for a, b in zip(w_ref + b_ref, w_fast + b_fast):
        torch.testing.assert_close(b, a)


def test_clip_rows_is_the_official_projection():
    w = torch.tensor([[0.5, -0.2, 0.9], [-0.1, -0.3, -0.2], [1.4, 0.2, 0.0]])
    out = clip_rows(w)
    torch.testing.assert_close(out[0], torch.tensor([0.5, 0.0, 0.9]) / 1.4)
    torch.testing.assert_close(out[1], torch.tensor([1.0, 0.0, 0.0]))  # all clamped to 0: one-hot at the max
    torch.testing.assert_close(out[2], torch.tensor([1.0, 0.2, 0.0]) / 1.2)
    live = torch.tensor([[True, True, False]] * 3)
    torch.testing.assert_close(clip_rows(w, live)[1], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(clip_rows(torch.tensor([[-0.5, -0.9, 2.0]]), live[:1]), torch.tensor([[1.0, 0.0, 0.0]]))


def test_epsilon_schedule():
    sp, scfg = get_space("nb201"), SpaceConfig(name="nb201")
    m = METHODS.get("sdarts-rs")(SDartsConfig(), sp, scfg)
    assert [round(m.epsilon_at(e, 50), 6) for e in (0, 25, 49)] == [0.03, 0.165, round(0.03 + 0.27 * 49 / 50, 6)]
    m = METHODS.get("sdarts-rs")(SDartsConfig(epsilon_schedule="constant"), sp, scfg)
    assert m.epsilon_at(0, 50) == m.epsilon_at(49, 50) == 0.3


def test_defaults_and_names():
    assert METHODS.get("sdarts-rs").Config().attack == "random"
    adv = METHODS.get("sdarts-adv").Config()
    assert (adv.attack, adv.pgd_steps, adv.pgd_step_size, adv.epsilon, adv.epsilon_start) == ("pgd", 7, None, 0.3, 0.03)
    assert (adv.order, adv.arch_lr, adv.arch_weight_decay, adv.warmup_epochs) == (1, 3e-4, 1e-3, 0)
    assert issubclass(METHODS.get("sdarts-adv"), METHODS.get("sdarts-rs"))


@pytest.mark.parametrize("field,value", [("attack", "fgsm"), ("epsilon_schedule", "cosine"), ("project", "l2")])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"method\.{field} must be one of"):
        build_config({"method": {"name": "sdarts-rs", field: value}})


@pytest.mark.parametrize("preset,space,attack", [("sdarts-rs_cifar10", "darts", "random"),
                                                 ("sdarts-adv_cifar10", "darts", "pgd"),
                                                 ("sdarts-rs_nb201", "nb201", "random"),
                                                 ("sdarts-adv_nb201", "nb201", "pgd")])
def test_presets(preset, space, attack):
    cfg = build_config(load_preset(preset))
    assert cfg.space.name == space and cfg.method.attack == attack and cfg.method.epsilon == 0.3
    assert cfg.search.step_order == "arch-first" and cfg.search.batch_size == 64 and cfg.method.order == 1
    assert cfg.search.epochs == (50 if space == "darts" else 100)
    assert cfg.method.skip_zero_ops == (space == "darts")


@pytest.mark.parametrize("space", ["s1", "s2", "s3", "s4"])
def test_robustdarts_space_presets_are_the_darts_space_settings(space):
    from pcdarts.config import build_config, load_preset
    from pcdarts.search.compare import preset_for
    for variant in ("rs", "adv"):
        name = f"sdarts-{variant}_{space}_cifar10"
        assert preset_for(f"sdarts-{variant}", space) == name  # what `pcdarts compare --space s2` runs
        cfg, ref = (build_config(load_preset(n)) for n in (name, f"sdarts-{variant}_cifar10"))
        assert cfg.space.name == space and cfg.method == ref.method and cfg.search == ref.search
