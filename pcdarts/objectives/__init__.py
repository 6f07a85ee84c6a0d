"""Search objectives: supernet output + batch -> loss. One objective per file; each registers in ``OBJECTIVES``."""
from __future__ import annotations

from pcdarts.objectives import cross_entropy  # noqa: F401  (registration)
from pcdarts.objectives.base import Objective

__all__ = ["Objective"]
