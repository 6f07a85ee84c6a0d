"""The search: the one assembly of its components (:mod:`.build`), the one Searcher loop
(:mod:`.searcher`) and the memory planner (:mod:`.planner`)."""
from __future__ import annotations

from pcdarts.search.searcher import SearchResult, Searcher, new_run_dir, search

__all__ = ["SearchResult", "Searcher", "new_run_dir", "search"]
