"""Search objectives: supernet output + batch -> loss. One objective per file; each registers in ``OBJECTIVES``."""
from __future__ import annotations

from pcdarts.objectives import cross_entropy, mae  # noqa: F401  (registration)
from pcdarts.objectives.base import EpochEnd, NoOptions, Objective, ObjectiveSetup, build_objective, epoch_end

__all__ = ["Objective", "ObjectiveSetup", "EpochEnd", "NoOptions", "build_objective", "epoch_end"]
