"""Search methods: one file per method (its config dataclass, its presets in ``configs/``).

:mod:`.base` holds the interface (``Method``, ``SearchContext``), :mod:`.hypergrad` the
reusable second-order gradient. Importing this package registers every method in ``METHODS``.
"""
from __future__ import annotations

from pcdarts.methods.base import Method, SearchContext, WeightStepInfo
from pcdarts.methods.darts import Darts, DartsConfig, PCDarts, PCDartsConfig
from pcdarts.methods.darts_minus import DartsMinus, DartsMinusConfig
from pcdarts.methods.beta_darts import BetaDarts, BetaDartsConfig  # registration
from pcdarts.methods.drnas import DrNAS, DrNASConfig
from pcdarts.methods.is_darts import ISDarts, ISDartsConfig  # registration
from pcdarts.methods.msr_darts import MSRDarts, MSRDartsConfig  # registration
from pcdarts.methods.lbt import LBT, LBTConfig  # registration
from pcdarts.methods.il import IL, ILConfig  # registration
from pcdarts.methods.lease import LeaSE, LeaSEConfig  # registration
from pcdarts.methods.rsws import RSWS, RSWSConfig  # registration
from pcdarts.methods.random_lookup import RandomLookup, RandomLookupConfig  # registration
from pcdarts.methods.sdarts import SDarts, SDartsConfig  # registration

__all__ = ["Method", "SearchContext", "WeightStepInfo", "Darts", "DartsConfig", "PCDarts", "PCDartsConfig",
           "DartsMinus", "DartsMinusConfig", "BetaDarts", "BetaDartsConfig", "DrNAS", "DrNASConfig", "ISDarts",
           "ISDartsConfig", "MSRDarts", "MSRDartsConfig", "LBT", "LBTConfig", "IL", "ILConfig", "LeaSE", "LeaSEConfig",
           "RSWS", "RSWSConfig", "RandomLookup", "RandomLookupConfig", "SDarts", "SDartsConfig"]
