"""Scorers: architecture state (and, for some, the supernet and data) -> scores shaped like
the architecture, read by ``space.derive``. One scorer per file; each registers in ``SCORERS``
(:data:`pcdarts.registry.SCORERS`; ``SELECTORS`` is its older name). The zero-cost proxies
(:mod:`.zero_cost`) score whole networks instead and register in ``PROXIES``."""
from __future__ import annotations

from pcdarts.scorers import alpha  # noqa: F401  (registration)
from pcdarts.scorers import iim  # noqa: F401  (registration)
from pcdarts.scorers import stable_rank  # noqa: F401  (registration)
from pcdarts.scorers import zero_cost  # noqa: F401  (registration: PROXIES, not SCORERS)
