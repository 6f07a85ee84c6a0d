"""The search: its configuration schema (:mod:`.config`), the one assembly of its components
(:mod:`.build`), the one Searcher loop (:mod:`.searcher`) and the memory planner (:mod:`.planner`).

``pcdarts.search`` is this package, and it is callable: ``pcdarts.search(cfg)`` runs
:func:`pcdarts.search.searcher.search` (the documented Python API), while
``import pcdarts.search`` and ``from pcdarts.search import config`` give the package and its
modules, as for any other subpackage.
"""
from __future__ import annotations

import sys
import types
from typing import Any

from pcdarts.search.searcher import SearchResult, Searcher, new_run_dir, search


class _CallableSearchPackage(types.ModuleType):
    """The ``pcdarts.search`` package; calling it calls :func:`pcdarts.search.searcher.search`."""

    def __call__(self, *args: Any, **kwargs: Any) -> SearchResult:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableSearchPackage

__all__ = ["SearchResult", "Searcher", "new_run_dir", "search"]
