"""DARTS-'s beta schedule with a decay start against the released ``DecayScheduler``
(Meituan-AutoML/DARTS-, src/utils.py): the raw epoch over ``T_max - T_start``, no cap before
the stop epoch; and the corrected schedule kept as ``method.decay_from_start``."""
from __future__ import annotations

import math

import pytest

import pcdarts
from pcdarts.config import build_config
from pcdarts.errors import ConfigError
from pcdarts.methods.darts_minus import DartsMinusConfig, aux_beta
from pcdarts.search.searcher import Searcher, new_run_dir

# T_start = 10 of T = 50, epochs 9, 10, 11, 49: the values the released code prints
RELEASED = {
    "linear": [1.0, 1.0, 0.975, 0.025],
    "cosine": [1.0, 0.8536, 0.8247, 0.1198],
    "slow-cosine": [1.0, 0.9239, 0.9081, -0.3461],
}
EPOCHS = (9, 10, 11, 49)


@pytest.mark.parametrize("shape", sorted(RELEASED))
def test_decay_start_reproduces_the_released_scheduler_by_default(shape):
    cfg = DartsMinusConfig(beta_schedule=shape, decay_start=10)
    assert [aux_beta(cfg, e, 50) for e in EPOCHS] == pytest.approx(RELEASED[shape], abs=1e-4)


@pytest.mark.parametrize("shape", sorted(RELEASED))
def test_decay_from_start_is_continuous_from_the_start_epoch(shape):
    cfg = DartsMinusConfig(beta_schedule=shape, decay_start=10, decay_from_start=True)
    x = [(e - 10) / 40 for e in EPOCHS[1:]]  # hand computation: (e - S) / (T - S)
    want = {"linear": [1 - v for v in x], "cosine": [(1 + math.cos(math.pi * v)) / 2 for v in x],
            "slow-cosine": [math.cos(math.pi * v / 2) for v in x]}[shape]
    assert aux_beta(cfg, 9, 50) == 1.0
    assert [aux_beta(cfg, e, 50) for e in EPOCHS[1:]] == pytest.approx(want, abs=1e-12)
    assert aux_beta(cfg, 10, 50) == 1.0 and aux_beta(cfg, 50, 50) == pytest.approx(0.0, abs=1e-12)


def test_without_a_decay_start_both_variants_agree_and_hold_after_the_horizon():
    for shape in RELEASED:
        a, b = DartsMinusConfig(beta_schedule=shape), DartsMinusConfig(beta_schedule=shape, decay_from_start=True)
        assert [aux_beta(a, e, 50) for e in range(50)] == [aux_beta(b, e, 50) for e in range(50)]
    short = DartsMinusConfig(beta_schedule="cosine", decay_epochs=20)
    assert aux_beta(short, 30, 50) == aux_beta(short, 20, 50) == pytest.approx(0.0, abs=1e-12)


def test_a_decay_start_at_or_past_the_horizon_is_refused_naming_the_fields(tiny):
    with pytest.raises(ConfigError, match="method.decay_start=3 must be below the decay horizon T=3"):
        build_config(tiny(method={"name": "darts-minus", "warmup_epochs": 0, "decay_start": 3},
                          search={"epochs": 3}))
    build_config(tiny(method={"name": "darts-minus", "warmup_epochs": 0, "decay_start": 3, "decay_epochs": 6},
                      search={"epochs": 3}))


# ---------------------------------------------------------------- the schedule in a search, the presets

def _searcher(cfg_dict):
    cfg = build_config(cfg_dict)
    return Searcher(cfg, new_run_dir(cfg))


def test_darts_minus_beta_schedule():
    from pcdarts.methods.darts_minus import DartsMinusConfig, aux_beta
    lin = DartsMinusConfig()
    assert aux_beta(lin, 0, 50) == 1.0 and aux_beta(lin, 49, 50) == pytest.approx(0.02)
    assert aux_beta(DartsMinusConfig(beta_schedule="cosine"), 49, 50) == pytest.approx(0.00099, abs=1e-5)
    assert aux_beta(DartsMinusConfig(beta_schedule="slow-cosine"), 49, 50) == pytest.approx(0.031, abs=1e-3)


def test_darts_minus_search_sets_beta_per_epoch_and_derives_without_the_skip(tiny, tmp_path):
    res = pcdarts.search(tiny(method={"name": "darts-minus", "warmup_epochs": 0}, search={"epochs": 3}))
    betas = [h["aux_beta"] for h in res.history]
    assert betas == pytest.approx([1.0, 2 / 3, 1 / 3])
    s = _searcher(tiny(method={"name": "darts-minus"}, run={"out": str(tmp_path / "b")}))
    assert all(edge.aux is not None for cell in s.supernet.cells for edge in cell.edges)
    assert s.method.mixing().aux_skip == 1.0
    # derivation reads softmax(alpha) only: the skip is not a candidate op
    assert s.derive() == s.space.derive(s.method.scores(), s.supernet.masks)
    with pytest.raises(Exception, match="order must be 1"):
        build_config(tiny(method={"name": "darts-minus", "order": 2}))


@pytest.mark.parametrize("preset", ["darts-minus_cifar10", "darts-minus_nb201"])
def test_darts_minus_presets(preset):
    from pcdarts.config import load_preset
    cfg = build_config(load_preset(preset))
    assert cfg.method_name == "darts-minus" and cfg.method.beta0 == 1.0 and cfg.search.epochs == 50
