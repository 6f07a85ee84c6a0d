"""pcdarts: fast, memory-lean differentiable architecture search (PC-DARTS and the DARTS family).

Python API (mirrors the CLI)::

    import pcdarts
    result = pcdarts.search({"search": {"epochs": 4}})      # a short PC-DARTS search on digits
    print(result.genotype, result.run_dir)
"""
from __future__ import annotations

from pcdarts._version import __version__

from pcdarts import data, methods, nb201, objectives, scorers  # noqa: F401  (registration)
from pcdarts.search.config import Config, build_config, load_preset
from pcdarts.genotype import DartsGenotype, NB201Genotype, load_genotype, save_genotype
from pcdarts.registry import DATASETS, METHODS, OBJECTIVES, SCORERS, SELECTORS, SPACES
from pcdarts import search  # the search package, callable as the search function (pcdarts.search(cfg))
from pcdarts.search.searcher import SearchResult
from pcdarts.spaces import get_space

__all__ = [
    "__version__", "search", "SearchResult", "Config", "build_config", "load_preset",
    "load_genotype", "save_genotype", "DartsGenotype", "NB201Genotype", "get_space",
    "SPACES", "METHODS", "SCORERS", "SELECTORS", "OBJECTIVES", "DATASETS",
]
