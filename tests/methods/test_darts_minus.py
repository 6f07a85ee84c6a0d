"""DARTS-'s beta schedule with a decay start against the released ``DecayScheduler``
(Meituan-AutoML/DARTS-, src/utils.py): the raw epoch over ``T_max - T_start``, no cap before
the stop epoch; and the corrected schedule kept as ``method.decay_from_start``."""
from __future__ import annotations

import math

import pytest

from pcdarts.config import build_config
from pcdarts.errors import ConfigError
from pcdarts.methods.darts_minus import DartsMinusConfig, aux_beta

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
