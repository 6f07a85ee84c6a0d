"""The multi-level engine (ALGORITHMS §11): unrolled hypergradients against autograd through
the explicitly unrolled steps, and the learning-by-X methods lbt, il, lease on both spaces."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from pcdarts.cli import main
from pcdarts.config import SpaceConfig, build_config, load_preset
from pcdarts.errors import ConfigError
from pcdarts.methods import SearchContext, WeightStepInfo
from pcdarts.methods.hypergrad import UnrolledStep, second_order_grads, unrolled_grads
from pcdarts.registry import METHODS, OBJECTIVES
from pcdarts.search.searcher import Searcher, new_run_dir
from pcdarts.spaces import get_space

MULTILEVEL = ("lbt", "il", "lease")
DT = torch.float64


def _searcher(cfg_dict):
    cfg = build_config(cfg_dict)
    return Searcher(cfg, new_run_dir(cfg))


# ---------------------------------------------------------------- the engine on small tensors

class Problem:
    """Tensors a (architecture), W, V, H and smooth non-quadratic losses coupling them."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        r = lambda *shape: torch.randn(*shape, dtype=DT, generator=g)  # noqa: E731
        self.a, self.W, self.V, self.H = (r(n).requires_grad_() for n in (3, 4, 5, 2))
        self.M0, self.B0, self.M1, self.N1, self.B1, self.M2 = r(4, 4), r(4, 3), r(5, 5), r(5, 4), r(5, 3), r(2, 5)
        self.t, self.m = r(5), r(4)  # a target; W's momentum buffer

    def leaves(self):
        return {"W": self.W, "V": self.V, "H": self.H}

    # level losses of the state s (name -> tensor) and the architecture a
    def L0(self, s):
        return (0.5 * ((self.M0 @ s["W"] - torch.tanh(self.B0 @ self.a)) ** 2).sum()
                + (torch.sin(s["W"]) * self.a.sum()).sum())

    def L1(self, s):
        return (0.5 * ((self.M1 @ s["V"] - torch.tanh(self.N1 @ s["W"] + self.B1 @ self.a)) ** 2).sum()
                + 0.1 * (s["V"] ** 4).sum())

    def L2(self, s):
        return (((s["H"] - self.M2 @ torch.tanh(s["V"])) ** 2).sum() * (1 + self.a[0] ** 2)
                + (s["H"] * s["W"][:2]).sum())

    def LWH(self, s):
        return self.L2(s) + self.L0(s)

    def upper(self, s):
        return (((s["V"] - self.t) ** 2).sum() + 0.5 * ((s["W"] * torch.cos(self.a).sum()) ** 2).sum()
                + (s["H"] ** 2).sum() * self.a[1])

    def exact(self, chain):
        """d upper / d a by autograd through the explicitly unrolled steps (create_graph)."""
        s = self.leaves()
        for names, loss, lr, mu, wd, restart, prox in chain:
            s = dict(s)
            prev = {n: s[n] for n in names}
            for n in names:  # a fresh node per use: the partial derivative of this level's loss
                s[n] = (self.leaves()[n] if restart else s[n]).clone()
            grads = torch.autograd.grad(loss(s), [s[n] for n in names], create_graph=True)
            for n, g in zip(names, grads):
                p = s[n]
                step = wd * p + g + (mu * self.m if n == "W" else 0) + (2 * prox * (p - prev[n]) if restart else 0)
                s[n] = p - lr * step
        return torch.autograd.grad(self.upper(s), self.a)[0]

    def engine(self, chain, hvp_eps=1e-6):
        steps = []
        for names, loss, lr, mu, wd, restart, prox in chain:
            steps.append(UnrolledStep([self.leaves()[n] for n in names], lambda outer, loss=loss: loss(self.leaves()),
                                      lr=lr, momentum=mu, weight_decay=wd,
                                      momentum_buffers=[self.m if n == "W" else None for n in names],
                                      restart=restart, prox=prox))
        before = [p.detach().clone() for p in self.leaves().values()]
        (g,), loss, _ = unrolled_grads(steps, lambda: (self.upper(self.leaves()), {}), [self.a], hvp_eps=hvp_eps)
        assert all(torch.equal(b, p) for b, p in zip(before, self.leaves().values())), "state not restored exactly"
        assert loss.dtype == DT
        return g


P = Problem()
S_W = (["W"], P.L0, 0.1, 0.9, 3e-4, False, 0.0)
S_V = (["V"], P.L1, 0.07, 0.0, 1e-3, False, 0.0)
S_H = (["H"], P.L2, 0.05, 0.0, 0.0, False, 0.0)
S_WH = (["W", "H"], P.LWH, 0.08, 0.9, 3e-4, False, 0.0)
S_W_PROX = (["W"], lambda s: 1.3 * P.L0(s), 0.06, 0.0, 3e-4, True, 0.7)


@pytest.mark.parametrize("name,chain", [
    ("two levels", [S_W, S_V]),
    ("three levels", [S_W, S_V, S_H]),
    ("the same tensors trained again (IL)", [S_W, S_WH, S_V, S_WH]),
    ("a later level trains what an earlier one read", [S_V, S_WH]),
    ("proximity coupling", [S_W, S_V, S_W_PROX, S_H]),
])
def test_engine_hypergradient_matches_autograd_through_the_unrolled_steps(name, chain):
    exact, ours = P.exact(chain), P.engine(chain)
    assert torch.allclose(ours, exact, rtol=1e-6, atol=1e-8), (name, ours, exact)
    # the chain matters: dropping the lower levels' second-order terms changes the answer
    first_order = P.engine([(n, loss, 0.0, mu, wd, r, x) for n, loss, _, mu, wd, r, x in chain])
    assert not torch.allclose(first_order, exact, rtol=1e-3)


def test_engine_with_the_darts_radius_is_within_finite_difference_error():
    exact = P.exact([S_W, S_V, S_H])
    assert torch.allclose(P.engine([S_W, S_V, S_H], hvp_eps=0.01), exact, rtol=1e-3, atol=1e-4)


def test_darts_second_order_is_the_one_level_chain():
    """second_order_grads is unrolled_grads with one level: the same numbers, bit for bit."""
    torch.manual_seed(0)
    space, scfg = get_space("nb201"), SpaceConfig(name="nb201", C=4, layers=1)
    net = space.build_supernet(scfg, k=1, num_classes=3, in_channels=2)
    method = METHODS.get("darts")(METHODS.get("darts").Config(order=2), space, scfg)
    W = list(net.parameters())
    info = WeightStepInfo(lr=0.05, momentum=0.9, weight_decay=3e-4,
                          momentum_buffers=[0.1 * torch.randn_like(p) for p in W])
    ctx = SearchContext(supernet=net, objective=OBJECTIVES.get("cross-entropy")(), weight_params=W,
                        weight_step_info=lambda: info)
    tb, ab = (torch.randn(6, 2, 8, 8), torch.randint(0, 3, (6,))), (torch.randn(6, 2, 8, 8), torch.randint(0, 3, (6,)))
    loss_fn = lambda b: method.loss(ctx, b, method.mixing())  # noqa: E731
    state = {k: v.clone() for k, v in net.state_dict().items()}
    h1, l1, _ = second_order_grads(loss_fn, method.arch_parameters(), W, info, tb, ab, supernet=net)
    after = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    h2, l2, _ = unrolled_grads([UnrolledStep.from_info(W, lambda outer: loss_fn(tb)[0], info)], lambda: loss_fn(ab),
                               method.arch_parameters(), protect=[net])
    assert all(torch.equal(a, b) for a, b in zip(h1, h2)) and torch.equal(l1, l2)
    assert all(torch.equal(after[k], v) for k, v in net.state_dict().items())  # BN statistics alike too


# ---------------------------------------------------------------- the methods: their hypergradient

class _Holder(nn.Module):
    """The supernet and the method's models under one module, so functional_call can swap
    every parameter a level's loss reads for a tensor with a graph."""

    def __init__(self, net, models):
        super().__init__()
        self.net, self.models = net, models

    def forward(self, fn):
        return fn()


@pytest.mark.parametrize("method", MULTILEVEL)
def test_method_hypergradient_matches_autograd_through_its_unrolled_levels(method):
    """Each method's levels (real step settings, momenta) unrolled by hand with create_graph on
    a float64 NB201 supernet (reference path: autograd through it is exact to any order)."""
    torch.manual_seed(0)
    space = get_space("nb201")
    scfg = SpaceConfig(name="nb201", C=4, layers=1, impl="reference")
    net = space.build_supernet(scfg, k=1, num_classes=3, in_channels=2).to(DT)
    extra = {"il": {"rounds": 1, "coupling": "prox", "prox": 0.5}}.get(method, {})
    cls = METHODS.get(method)
    m = cls(cls.Config(hvp_eps=1e-7, aux_lr=0.03, **extra), space, scfg)
    m.arch.to(DT)
    for p in m.arch_parameters():
        p.data.normal_(0, 0.5)
    m.prepare_supernet(net, (2, 8, 8))
    m.models.to(DT)
    W = list(net.parameters())
    info = WeightStepInfo(lr=0.05, momentum=0.9, weight_decay=3e-4,
                          momentum_buffers=[0.1 * torch.randn_like(p) for p in W])
    for p in m.models.parameters():
        m.aux_optimizer.state[p]["momentum_buffer"] = 0.1 * torch.randn_like(p)
    ctx = SearchContext(supernet=net, objective=OBJECTIVES.get("cross-entropy")(), weight_params=W,
                        weight_step_info=lambda: info)
    batches = {s: (torch.randn(6, 2, 8, 8, dtype=DT), torch.randint(0, 3, (6,))) for s in ("train", "arch")}
    levels = m.levels(ctx)
    steps = [m._unrolled(ctx, lv, lv.select(batches[lv.stream])) for lv in levels]
    ours, _, _ = unrolled_grads(steps, lambda: m.upper(ctx, batches, m.mixing()), m.arch_parameters(), hvp_eps=1e-7)

    holder = _Holder(net, m.models)
    names = {id(p): n for n, p in holder.named_parameters()}
    live = dict(holder.named_parameters())
    state = dict(live)
    for lv, st in zip(levels, steps):
        keys = [names[id(p)] for p in st.params]
        prev = {k: state[k] for k in keys}
        state = dict(state)
        for k in keys:
            state[k] = (live[k] if st.restart else state[k]).clone()
        batch = lv.select(batches[lv.stream])
        loss = functional_call(holder, state, (lambda lv=lv, batch=batch: lv.loss(ctx, batch, m.mixing(), True)[0],))
        grads = torch.autograd.grad(loss, [state[k] for k in keys], create_graph=True, allow_unused=True)
        for k, g, lr, mu, wd, buf in zip(keys, grads, st.lr, st.momentum, st.weight_decay, st.momentum_buffers):
            p = state[k]
            step = wd * p + (0 if g is None else g) + (0 if buf is None else mu * buf)
            if st.restart:
                step = step + 2 * st.prox * (p - prev[k])
            state[k] = p - lr * step
    upper = functional_call(holder, state, (lambda: m.upper(ctx, batches, m.mixing())[0],))
    exact = torch.autograd.grad(upper, m.arch_parameters(), allow_unused=True)
    for o, e in zip(ours, exact):
        e = torch.zeros_like(o) if e is None else e
        assert torch.allclose(o, e, rtol=1e-4, atol=1e-6 * float(e.abs().max())), (method, (o - e).abs().max())


# ---------------------------------------------------------------- the methods in the search

@pytest.mark.parametrize("space", ["darts", "nb201"])
@pytest.mark.parametrize("method", MULTILEVEL)
def test_one_step_changes_the_architecture_and_the_methods_models(tiny, method, space):
    s = _searcher(tiny(method={"name": method, "warmup_epochs": 0},
                       space={"name": space, "layers": 3 if space == "darts" else 1}))
    assert s.method.owns_step
    a0 = [p.detach().clone() for p in s.method.arch_parameters()]
    m0 = {k: v.clone() for k, v in s.method.models.state_dict().items()}
    levels = s.method.levels(s.context())
    s.search_step(True, s.context())
    assert all(not torch.equal(a, b) for a, b in zip(a0, s.method.arch_parameters()))
    assert any(not torch.equal(m0[k], v) for k, v in s.method.models.state_dict().items())
    # one weight step per level that trains the supernet, each counted by the Searcher's meters
    assert float(s.meters["n"]) == 8 * sum(lv.trains_supernet for lv in levels) / (
        s.method.cfg.tasks if method == "il" else 1)
    assert float(s.meters["arch_n"]) > 0 and torch.isfinite(s.meters["arch_loss"])
    # the method's models: on the method's device, outside the weight optimiser and the supernet
    own = {id(p) for p in s.method.models.parameters()}
    assert own and not own & {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    assert not own & {id(p) for p in s.supernet.parameters()}
    assert all(p.device == s.device for p in s.method.models.parameters())
    assert {"models", "aux_optimizer"} <= set(s.method.state_dict())


@pytest.mark.parametrize("method,fields", [("lbt", ("student_loss", "student_acc")),
                                           ("lease", ("audience_loss", "audience_acc")),
                                           ("il", ("task1_loss", "task1_acc", "task2_loss", "task2_acc"))])
def test_the_methods_models_are_logged_per_epoch(tiny, method, fields):
    """The extra models' mean loss (and accuracy) over the epoch's real updates is in the history;
    the sums count every image each logged level trained on, and restart with each epoch."""
    s = _searcher(tiny(method={"name": method, "warmup_epochs": 0}, space={"name": "nb201", "layers": 1}))
    ctx = s.context()
    s.method.on_epoch_start(0, ctx)
    s.search_step(True, ctx)
    s.search_step(True, ctx)
    per_step = {"lbt": {"student": 8}, "lease": {"audience": 8}, "il": {"task1": 8, "task2": 8}}[method]
    assert {k: float(v[2]) for k, v in s.method._epoch_sums.items()} == {k: 2 * n for k, n in per_step.items()}
    rec = s.method.epoch_record(ctx)
    assert set(rec) == set(fields)
    for name, sums in s.method._epoch_sums.items():
        loss, correct, n = sums.tolist()
        assert rec[f"{name}_loss"] == pytest.approx(loss / n) and 0 < rec[f"{name}_loss"] < 20
        assert rec[f"{name}_acc"] == pytest.approx(100 * correct / n) and 0 <= rec[f"{name}_acc"] <= 100
    s.method.on_epoch_start(1, ctx)
    assert s.method.epoch_record(ctx) == {}


def test_warmup_trains_the_levels_but_not_the_architecture(tiny):
    s = _searcher(tiny(method={"name": "lbt", "warmup_epochs": 1}, space={"name": "nb201", "layers": 1}))
    a0 = [p.detach().clone() for p in s.method.arch_parameters()]
    m0 = [p.detach().clone() for p in s.method.models.parameters()]
    s.search_step(s.method.is_arch_active(0), s.context())
    assert all(torch.equal(a, b) for a, b in zip(a0, s.method.arch_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(m0, s.method.models.parameters()))


def test_models_are_drawn_from_the_architecture_generator(tiny):
    """The extra models' initial weights come from the run's architecture generator: the
    global RNG stream is where a DARTS search leaves it."""
    a = _searcher(tiny(method={"name": "lbt"}, space={"name": "nb201", "layers": 1}))
    rng_a = torch.get_rng_state()
    b = _searcher(tiny(method={"name": "lbt"}, space={"name": "nb201", "layers": 1},
                       run={"out": tiny()["run"]["out"] + "b"}))
    c = _searcher(tiny(method={"name": "lbt"}, space={"name": "nb201", "layers": 1},
                       run={"out": tiny()["run"]["out"] + "c", "seed": 1}))
    sa, sb, sc = (x.method.models.state_dict() for x in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and not all(torch.equal(sa[k], sc[k]) for k in sa)
    _searcher(tiny(method={"name": "darts", "order": 2}, space={"name": "nb201", "layers": 1},
                   run={"out": tiny()["run"]["out"] + "d"}))
    assert torch.equal(rng_a, torch.get_rng_state())


def test_il_heads_tasks_and_couplings(tiny):
    s = _searcher(tiny(method={"name": "il", "tasks": 3, "rounds": 2}, space={"name": "nb201", "layers": 1}))
    assert sorted(s.method.models) == ["head1", "head2"]
    levels = s.method.levels(s.context())
    assert [lv.name for lv in levels][:4] == ["round 1 model 1", "round 1 model 2", "round 1 model 3",
                                              "round 2 model 1"]
    x, y = torch.arange(9.0), torch.arange(9) % 4
    assert [len(s.method.task_batch((x, y), k)[1]) for k in range(3)] == [3, 3, 3]
    cls = _searcher(tiny(method={"name": "il", "task_split": "classes"}, space={"name": "nb201", "layers": 1},
                         run={"out": tiny()["run"]["out"] + "c"}))
    assert cls.method.task_batch((x, y), 1)[1].tolist() == [1, 3, 1, 3]
    cls.search_step(True, cls.context())
    assert torch.isfinite(cls.meters["loss"])
    prox = _searcher(tiny(method={"name": "il", "coupling": "prox"}, space={"name": "nb201", "layers": 1},
                          run={"out": tiny()["run"]["out"] + "p"}))
    assert all(lv.restart and lv.prox == 1.0 for lv in prox.method.levels(prox.context()))
    prox.search_step(True, prox.context())


@pytest.mark.parametrize("kind,space", [("saliency", "darts"), ("grad-input", "nb201"), ("adversarial", "nb201")])
def test_lease_explanations(tiny, kind, space):
    s = _searcher(tiny(method={"name": "lease", "explanation": kind},
                       space={"name": space, "layers": 3 if space == "darts" else 1}))
    ctx = s.context()
    batch = s.train_loader.next()
    x = batch[0]
    mixing = s.method.mixing()
    explained = s.method.explain(ctx, batch, mixing, graph=True)
    assert explained.shape == x.shape and explained.requires_grad  # differentiable in alpha and the weights
    g = torch.autograd.grad(explained.sum(), s.method.arch_parameters(), allow_unused=True)
    assert any(t is not None and t.abs().sum() > 0 for t in g)
    if kind != "adversarial":  # the input weighted by a map in [0, 1] with maximum 1 per image
        ratio = (explained / x).detach()
        ok = x.abs() > 1e-3
        assert ratio[ok].min() >= -1e-6 and ratio[ok].max() <= 1 + 1e-6
    assert not s.method.explain(ctx, batch, mixing, graph=False).requires_grad


def test_lbt_hard_pseudo_labels_reach_the_student_not_the_teacher(tiny):
    s = _searcher(tiny(method={"name": "lbt", "pseudo_labels": "hard"}, space={"name": "nb201", "layers": 1}))
    ctx = s.context()
    batch = s.train_loader.next()
    loss, _ = s.method.student_loss(ctx, batch, s.method.mixing(), True)
    grads = torch.autograd.grad(loss, s.method.arch_parameters() + list(s.method.models.parameters()),
                                allow_unused=True)
    assert all(g is None for g in grads[:1]) and all(g is not None for g in grads[1:])
    soft = _searcher(tiny(method={"name": "lbt"}, space={"name": "nb201", "layers": 1},
                          run={"out": tiny()["run"]["out"] + "s"}))
    loss, _ = soft.method.student_loss(soft.context(), batch, soft.method.mixing(), True)
    assert torch.autograd.grad(loss, soft.method.arch_parameters())[0].abs().sum() > 0


@pytest.mark.slow
def test_lease_fast_path_equals_the_reference_path(tiny):
    """The whole multi-level step (arch, weights, audience) on the fast DARTS supernet, whose
    explanation pass runs the reference forward, equals the reference path's to float32 precision."""
    out = []
    for impl in ("fast", "reference"):
        s = _searcher(tiny(method={"name": "lease"}, space={"name": "darts", "layers": 3, "impl": impl},
                           run={"out": tiny()["run"]["out"] + impl}))
        s.search_step(True, s.context())
        out.append(([p.detach().clone() for p in s.method.arch_parameters()], s.method.models.state_dict()))
    (a_fast, m_fast), (a_ref, m_ref) = out
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(a_fast, a_ref))
    assert all(torch.allclose(m_fast[k].float(), m_ref[k].float(), rtol=1e-3, atol=1e-5) for k in m_fast)


def test_resume_equals_uninterrupted_run(tiny, full_and_resumed):
    """LBT: bit-identical architecture, supernet, student and its optimiser after a mid-epoch stop."""
    base = tiny(method={"name": "lbt", "aux_lr": 0.05}, search={"epochs": 2}, space={"name": "nb201", "layers": 1},
                data={"max_samples": 32})
    full, resumed = full_and_resumed(base, 3)
    # the student's loss and accuracy per epoch (Method.epoch_record), summed across the stop
    for key in ("student_loss", "student_acc"):
        assert [r[key] for r in resumed.history] == pytest.approx([r[key] for r in full.history]), key
    ck_full = torch.load(full.run_dir / "checkpoint.pt", weights_only=True)
    ck_res = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=True)
    for section in ("supernet",):
        for k, v in ck_full[section].items():
            assert torch.equal(v, ck_res[section][k]), k
    for k, v in ck_full["method"]["models"].items():
        assert torch.equal(v, ck_res["method"]["models"][k]), k
    bufs_full = [s["momentum_buffer"] for s in ck_full["method"]["aux_optimizer"]["state"].values()]
    bufs_res = [s["momentum_buffer"] for s in ck_res["method"]["aux_optimizer"]["state"].values()]
    assert bufs_full and all(torch.equal(a, b) for a, b in zip(bufs_full, bufs_res))
    # pcdarts derive reads the run back through the one assembly (student included): the same genotype
    from pcdarts.cli import derive_from_run
    assert derive_from_run(full.run_dir) == full.genotype


def test_order_one_and_rollback_scale(tiny):
    s = _searcher(tiny(method={"name": "lease", "order": 1, "aux_lr": 0.1}, space={"name": "nb201", "layers": 1}))
    a0 = [p.detach().clone() for p in s.method.arch_parameters()]
    s.search_step(True, s.context())
    assert any(not torch.equal(a, b) for a, b in zip(a0, s.method.arch_parameters()))
    s.method.scale_lr(0.5)
    assert s.method.aux_lr(s.context()) == pytest.approx(0.05)
    assert s.method.state_dict()["aux_scale"] == 0.5


@pytest.mark.parametrize("method,fields,message", [
    ("lbt", {"pseudo_labels": "fuzzy"}, "method.pseudo_labels must be one of soft, hard"),
    ("il", {"task_split": "x"}, "method.task_split must be one of batch, classes"),
    ("il", {"coupling": "x"}, "method.coupling must be one of init, prox"),
    ("il", {"tasks": 9}, "method.tasks=9 slices of a minibatch need search.batch_size"),
    ("lease", {"explanation": "lime"}, "method.explanation must be one of saliency, grad-input, adversarial"),
    ("lbt", {"order": 3}, "method.order must be 1"),
    ("lbt", {"aux_momentum": 2.0}, "method.aux_momentum must be"),
])
def test_bad_settings_are_named_config_errors(tiny, method, fields, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        build_config(tiny(method={"name": method, **fields}))


def test_a_non_classification_objective_is_refused(tiny):
    with pytest.raises(ConfigError, match="needs class logits"):
        build_config(tiny(method={"name": "lbt"}, objective={"name": "mae"}))


PRESETS = [f"{m}_{d}" for m in MULTILEVEL for d in ("cifar10", "nb201")]


def test_presets_use_darts_second_order_settings():
    for name in PRESETS:
        cfg = build_config(load_preset(name))
        assert cfg.method_name == name.split("_")[0] and cfg.method.order == 2
        assert (cfg.search.epochs, cfg.search.batch_size, cfg.search.lr, cfg.method.arch_lr) == (50, 64, 0.025, 3e-4)
        assert cfg.space.name == ("darts" if name.endswith("cifar10") else "nb201")


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if p.endswith("cifar10") else p
                                    for p in PRESETS])
def test_short_run_from_each_preset_via_the_cli(tmp_path, capsys, preset):
    layers = "3" if preset.endswith("cifar10") else "1"
    code = main(["search", "--preset", preset, "--data", "digits", "--space.C", "4", "--space.layers", layers,
                 "--search.epochs", "1", "--data.max_samples", "16", "--search.batch_size", "8",
                 "--out", str(tmp_path / "r"), "--no-progress", "--run.plots", "false"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert (tmp_path / "r" / "genotype.json").is_file()
