"""DARTS and PC-DARTS (:mod:`pcdarts.methods.darts`): the authors' defaults."""
from __future__ import annotations

from pcdarts.registry import METHODS


def test_pc_darts_defaults_are_the_authors():
    c = METHODS.get("pc-darts").Config()
    assert (c.k, c.edge_norm, c.warmup_epochs, c.arch_lr, c.arch_weight_decay) == (4, True, 15, 6e-4, 1e-3)
    assert tuple(c.arch_betas) == (0.5, 0.999)
    d = METHODS.get("darts").Config()
    assert (d.k, d.edge_norm, d.warmup_epochs, d.arch_lr, d.order) == (1, False, 0, 3e-4, 1)
