"""Methods x spaces through the Method seams (:mod:`pcdarts.methods.base`): one search step each,
determinism, resume, structure changes, extra losses and records, objectives with parameters,
method-owned steps and weight mixings."""
from __future__ import annotations

import pytest
import torch

import pcdarts
from pcdarts.config import SpaceConfig, build_config
from pcdarts.methods import DartsConfig, SearchContext
from pcdarts.registry import METHODS, OBJECTIVES, SPACES
from pcdarts.search.searcher import Searcher, new_run_dir
from pcdarts.spaces import get_space
from tests.conftest import tiny_method
from pcdarts.spaces.robust import ROBUST_SPACES


def _searcher(cfg_dict):
    cfg = build_config(cfg_dict)
    return Searcher(cfg, new_run_dir(cfg))


TRAINS_NO_WEIGHTS = {"random-lookup"}  # a lookup baseline: nothing is trained


# the RobustDARTS spaces have their own method x space step test (tests/spaces/test_robust.py), which
# also checks that every method keeps to each edge's candidate ops
@pytest.mark.parametrize("space", [s for s in SPACES.names() if s not in ROBUST_SPACES])
@pytest.mark.parametrize("method", METHODS.names())
def test_one_search_step_per_method_and_space(tiny, method, space):
    from pcdarts.errors import ConfigError
    layers = 3 if space == "darts" else 1
    try:
        s = _searcher(tiny(method=tiny_method(method), space={"name": space, "layers": layers}))
    except ConfigError as e:
        if method == "random-lookup" and "has none" in str(e):
            pytest.skip(f"refused by design: {e}")
        raise
    w0 = [p.detach().clone() for p in s.weight_params]
    a0 = [p.detach().clone() for p in s.method.arch_parameters()]
    s.search_step(arch_active=s.method.is_arch_active(0), ctx=s.context())
    assert torch.isfinite(s.meters["loss"])
    changed = any(not torch.equal(a, b) for a, b in zip(w0, s.weight_params))
    assert changed != (method in TRAINS_NO_WEIGHTS), "weights did not change" if changed else "weights changed"
    changed = any(not torch.equal(a, b) for a, b in zip(a0, s.method.arch_parameters()))
    assert changed == s.method.has_arch
    # architecture parameters are registered, but not in the weight optimiser
    arch_ids = {id(p) for p in s.method.arch_parameters()}
    assert not arch_ids & {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    assert not arch_ids & {id(p) for p in s.supernet.parameters()}


def test_warmup_freezes_architecture_and_skips_arch_data(tiny):
    s = _searcher(tiny(method={"name": "pc-darts", "warmup_epochs": 1, "k": 2}))
    a0 = [p.detach().clone() for p in s.method.arch_parameters()]
    pos = (s.arch_loader.epoch, s.arch_loader.position)
    s.search_step(arch_active=s.method.is_arch_active(0), ctx=s.context())
    assert all(torch.equal(a, b) for a, b in zip(a0, s.method.arch_parameters()))
    assert (s.arch_loader.epoch, s.arch_loader.position) == pos  # no arch batch fetched
    assert s.method.is_arch_active(1)


def test_arch_and_eval_loaders_share_one_copy_of_the_arch_split(tiny):
    s = _searcher(tiny())
    assert s.arch_loader.images.data_ptr() == s.eval_loader.images.data_ptr()
    assert s.train_loader.images.data_ptr() != s.arch_loader.images.data_ptr()
    assert len(s.train_loader.labels) + len(s.arch_loader.labels) == s.data_info["n_weight"] + s.data_info["n_arch"]


def _final_alphas(result):
    return result.history[-1]["arch_weights"]


def test_same_seed_same_architecture(tiny):
    a = pcdarts.search(tiny(run={"out": str(tiny()["run"]["out"]) + "a"}))
    b = pcdarts.search(tiny(run={"out": str(tiny()["run"]["out"]) + "b"}))
    assert _final_alphas(a) == _final_alphas(b)
    assert a.genotype == b.genotype
    c = pcdarts.search(tiny(run={"out": str(tiny()["run"]["out"]) + "c", "seed": 1}))
    assert _final_alphas(c) != _final_alphas(a)


@pytest.mark.parametrize("method,stop", [("pc-darts", 4), ("pc-darts", 6), ("darts", 5)])
def test_resume_equals_uninterrupted_run(tiny, method, stop):
    base = tiny(method={"name": method, "warmup_epochs": 1, "k": 2, "order": 2 if method == "darts" else 1},
                search={"epochs": 3}, space={"channel_mode": "random"} if stop == 6 else {})
    base["run"]["out"] += "-full"
    full = pcdarts.search(base)
    part = dict(base, run=dict(base["run"], out=base["run"]["out"] + "-part"))
    # 3 steps per epoch here: stop=4 and 5 stop mid-epoch 1, stop=6 at an epoch boundary
    first = pcdarts.search(part, stop_after_steps=stop)
    assert first.interrupted
    resumed = pcdarts.search(resume=first.run_dir)
    assert not resumed.interrupted
    assert _final_alphas(resumed) == _final_alphas(full)
    assert resumed.genotype == full.genotype
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    ck_full = torch.load(full.run_dir / "checkpoint.pt", weights_only=True)
    ck_res = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=True)
    for k, v in ck_full["supernet"].items():
        assert torch.equal(v, ck_res["supernet"][k]), k


def test_a_method_adds_fields_to_each_epochs_record(tiny, monkeypatch):
    """The epoch_record seam: what a method returns lands in that epoch's history.jsonl line
    (and the result's history), after the Searcher's own fields; the default adds nothing."""
    import json
    from pcdarts.methods import Darts, Method
    assert Method.epoch_record(Darts(DartsConfig(), get_space("nb201"), SpaceConfig(name="nb201")),
                               SearchContext(None, None, [], lambda: None)) == {}
    monkeypatch.setattr(Darts, "epoch_record", lambda self, ctx: {"my_field": ctx.epoch + 0.5})
    res = pcdarts.search(tiny(space={"name": "nb201", "layers": 1}, search={"epochs": 2}, data={"max_samples": 16}))
    lines = [json.loads(line) for line in (res.run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["my_field"] for r in lines] == [r["my_field"] for r in res.history] == [0.5, 1.5]
    assert [r["epoch"] for r in lines] == [0, 1]
    # a field the search already logs is never overwritten: the method's mistake is named
    monkeypatch.setattr(Darts, "epoch_record", lambda self, ctx: {"epoch": 99})
    with pytest.raises(ValueError, match=r"epoch_record returns fields the search already logs: \['epoch'\]"):
        pcdarts.search(tiny(space={"name": "nb201", "layers": 1}, method={"name": "pc-darts", "warmup_epochs": 0},
                            search={"epochs": 1}, data={"max_samples": 16}, run={"out": str(res.run_dir) + "-clash"}))


def test_config_checks_read_the_method_class_flags(monkeypatch):
    """validate() asks the Method class (not its config dataclass) whether it has an
    architecture and needs an architecture split."""
    from pcdarts.methods import PCDarts

    base = {"search": {"epochs": 2}, "method": {"warmup_epochs": 2}}
    with pytest.raises(pcdarts.config.ConfigError, match="warmup_epochs=2 must be smaller"):
        build_config(base)
    monkeypatch.setattr(PCDarts, "has_arch", False)
    build_config(base)  # a method without architecture parameters has nothing to warm up
    split = {"data": {"train_portion": 1.0}}
    monkeypatch.setattr(PCDarts, "has_arch", True)
    with pytest.raises(pcdarts.config.ConfigError, match="needs an architecture split"):
        build_config(split)
    monkeypatch.setattr(PCDarts, "needs_arch_split", False)
    build_config(split)


def test_objective_keeps_float64_and_lifts_bf16():
    from pcdarts.registry import OBJECTIVES
    ce = OBJECTIVES.get("cross-entropy")()
    y = torch.tensor([0, 1])
    identity = lambda x, mixing: x  # noqa: E731  (a "supernet" that returns its input as logits)
    assert ce(identity, (torch.randn(2, 3, dtype=torch.float64), y), None)[0].dtype == torch.float64
    assert ce(identity, (torch.randn(2, 3).bfloat16(), y), None)[0].dtype == torch.float32


# ---------------------------------------------------------------- DARTS-

    # a decay start > 0 (the released DecayScheduler's values): tests/methods/test_darts_minus.py


# ---------------------------------------------------------------- DrNAS


def test_prune_mid_search_rebuilds_the_optimiser_and_resumes_exactly(tiny):
    """The structure seam: DrNAS prunes NB201 ops 5 -> 3 and widens K 2 -> 1 at epoch 1; the removed
    ops are freed, the optimiser only holds live weights (momentum carried), and a resume across
    the stage switch equals the uninterrupted run."""
    base = tiny(method={"name": "drnas", "stage_starts": [1], "stage_keep_ops": [3], "stage_k": [1], "k": 2},
                search={"epochs": 3}, space={"name": "nb201", "layers": 1})
    base["run"]["out"] += "-full"
    full = pcdarts.search(base)
    ck = torch.load(full.run_dir / "checkpoint.pt", weights_only=True)
    assert int(ck["masks"]["cell"].sum(1).max()) == 3 and ck["structure"]["k"] == 1
    assert len(ck["optimizer"]["param_groups"][0]["params"]) == len(ck["supernet"]) - sum(
        1 for k in ck["supernet"] if "running" in k or "num_batches" in k)
    for stop in (4, 2):  # mid-epoch after the prune; before it (the prune happens after resuming)
        part = dict(base, run=dict(base["run"], out=base["run"]["out"] + f"-part{stop}"))
        first = pcdarts.search(part, stop_after_steps=stop)
        assert first.interrupted
        resumed = pcdarts.search(resume=first.run_dir)
        assert _final_alphas(resumed) == _final_alphas(full) and resumed.genotype == full.genotype
        ck_res = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=True)
        for k, v in ck["supernet"].items():
            assert torch.equal(v, ck_res["supernet"][k]), k


def test_searcher_prune_frees_ops_and_carries_momentum(tiny):
    s = _searcher(tiny(method={"name": "pc-darts", "warmup_epochs": 0, "k": 2}))
    s.search_step(True, s.context())
    n_before = len(s.weight_params)
    masks = {ct: m.clone() for ct, m in s.supernet.masks.items()}
    for m in masks.values():
        m[:, 4:] = False  # drop the four conv ops everywhere
    survivor = s.weight_params[0]
    momentum = s.optimizer.state[survivor]["momentum_buffer"].clone()
    s.prune(masks)
    assert len(s.weight_params) < n_before
    assert {id(p) for p in s.weight_params} == {id(p) for p in s.supernet.parameters()}
    assert torch.equal(s.optimizer.state[survivor]["momentum_buffer"], momentum)
    s.search_step(True, s.context())


# ---------------------------------------------------------------- objectives own their forward

def test_an_objective_with_parameters_reaches_the_optimiser_and_the_checkpoint(tiny, tmp_path):
    """A registered objective that reads the supernet's stage outputs through a learned head:
    its parameters are trained with the weights, its state is checkpointed, the loop is untouched."""
    from pcdarts.objectives.base import Objective

    class StageProbe(Objective):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.LazyLinear(10)
            self.register_buffer("calls", torch.zeros((), dtype=torch.long))

        def forward(self, supernet, batch, mixing):
            x, y = batch
            feats = supernet.forward_features(x, mixing)[-1].mean((2, 3))
            self.calls += 1
            return torch.nn.functional.cross_entropy(self.head(feats), y), {"n": y.numel()}

    name = "test-stage-probe"
    if name not in OBJECTIVES:
        OBJECTIVES.register(name)(StageProbe)
    cfg = build_config(tiny(search={"objective": name}))
    s = Searcher(cfg, new_run_dir(cfg))
    s.search_step(True, s.context())  # materialises the lazy head
    s._rebuild_optimizer()
    head = list(s.objective.head.parameters())
    assert all(any(p is q for q in s.weight_params) for p in head)
    before = [p.detach().clone() for p in head]
    s.search_step(True, s.context())
    assert any(not torch.equal(a, p) for a, p in zip(before, head))
    assert "valid_acc" not in s.evaluate() and "valid_loss" in s.evaluate()
    assert int(s.state_dict()["objective"]["calls"]) >= 3
    with pytest.raises(Exception, match="unknown objective"):
        build_config(tiny(search={"objective": "nope"}))


def test_a_method_may_own_its_step(tiny):
    """The multi-level seam: a method with owns_step gets one batch of each stream it declares
    and the Searcher's weight step; the loop, meters and checkpoints stay the Searcher's."""
    from pcdarts.methods import PCDarts

    class TwoWeightSteps(PCDarts):
        owns_step = True
        data_streams = ("arch", "train")
        calls: list = []

        def step(self, ctx, batches, weight_step):
            assert set(batches) == {"arch", "train"}
            out = self.arch_step(ctx, batches["train"], batches["arch"])
            m1 = weight_step(batches["train"])
            m2 = weight_step(batches["train"])
            self.calls.append((m1["n"], m2["n"]))
            return out

    name = "test-two-weight-steps"
    if name not in METHODS:
        METHODS.register(name)(TwoWeightSteps)
    s = _searcher(tiny(method={"name": name, "warmup_epochs": 0, "k": 2}))
    a0 = [p.detach().clone() for p in s.method.arch_parameters()]
    pos = (s.train_loader.position, s.arch_loader.position)
    s.search_step(True, s.context())
    assert TwoWeightSteps.calls == [(8, 8)]
    assert float(s.meters["n"]) == 16 and float(s.meters["arch_n"]) == 8
    assert (s.train_loader.position, s.arch_loader.position) == (pos[0] + 1, pos[1] + 1)
    assert any(not torch.equal(a, b) for a, b in zip(a0, s.method.arch_parameters()))

    TwoWeightSteps.data_streams = ("train", "unlabelled")
    with pytest.raises(Exception, match="data streams \\['unlabelled'\\]"):
        _searcher(tiny(method={"name": name, "warmup_epochs": 0, "k": 2}, run={"out": tiny()["run"]["out"] + "2"}))
    TwoWeightSteps.data_streams = ("arch", "train")


# ---------------------------------------------------------------- the weight step's mixing

def test_the_weight_step_trains_at_the_methods_weight_mixing(tiny, monkeypatch):
    """``Method.weight_mixing(ctx, batch)`` decides the mixing of the weight step: by default the
    method's own, detached; an override's is the one the loss runs at. It sees the step's batch
    and the bare supernet even when the loss runs through another module (DDP's wrapper)."""
    import copy
    from pcdarts.nn.edges import Mixing
    from pcdarts.objectives.base import SupernetCall
    from pcdarts.search.searcher import weight_step

    s = _searcher(tiny(method={"name": "darts"}, space={"name": "nb201", "layers": 1}))
    ctx, batch = s.context(), s.train_loader.next()
    default = s.method.weight_mixing(ctx, batch)
    assert all(not w.requires_grad and torch.equal(w, s.method.mixing().ops[ct]) for ct, w in default.ops.items())

    uniform = Mixing(ops={ct: torch.full_like(w, 1 / w.shape[1]) for ct, w in default.ops.items()})
    state = copy.deepcopy(s.supernet.state_dict())
    expected = s.method.loss(ctx, batch, uniform, "weight")[0].item()
    plain = s.method.loss(ctx, batch, default, "weight")[0].item()
    s.supernet.load_state_dict(state)  # the BN statistics those passes moved
    seen = []
    monkeypatch.setattr(s.method, "weight_mixing", lambda c, b: seen.append((c.supernet, b)) or uniform)
    wrapper, through = SupernetCall(s.supernet), []
    wrapper.register_forward_hook(lambda *args: through.append(1))
    loss, _ = weight_step(s.method, s.optimizer, batch, ctx, grad_clip=0.0, model=wrapper)
    assert through == [1], "the loss did not run through the given module"
    assert loss.item() == pytest.approx(expected, rel=1e-6) and loss.item() != pytest.approx(plain, rel=1e-6)
    assert len(seen) == 1 and seen[0][0] is s.supernet and seen[0][1] is batch
