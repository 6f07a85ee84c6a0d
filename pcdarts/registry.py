"""Name -> object registries.

Things register themselves where they are defined (``@METHODS.register("pc-darts")``);
an unknown name raises with the sorted list of the names that exist. Nothing here
imports torch.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Callable, Generic, Iterator, TypeVar

from pcdarts.errors import PcdartsError

T = TypeVar("T")


class UnknownNameError(PcdartsError, KeyError):
    """An unknown registry name; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


class Registry(Generic[T]):
    """A small name -> object mapping filled by a decorator at the definition site.

    Args:
        kind: what is registered ("space", "method", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}

    def register(self, name: str, *, description: str = "") -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name``."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            self._descriptions[name] = description
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` or raise :class:`UnknownNameError`."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell-style wildcard."""
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def describe(self, name: str) -> str:
        self.get(name)
        return self._descriptions[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


SPACES: Registry[Any] = Registry("search space")
METHODS: Registry[Any] = Registry("method")
# scorers (pcdarts/scorers/): scorer(method, ctx) -> {cell type: [E, O] scores}, read by space.derive;
# a method's ``selector`` field names one. SELECTORS is the older name of the same registry (public, kept).
SCORERS: Registry[Any] = Registry("scorer")
SELECTORS = SCORERS
OBJECTIVES: Registry[Any] = Registry("objective")
DATASETS: Registry[Any] = Registry("dataset")
PROXIES: Registry[Any] = Registry("zero-cost proxy")  # proxy(net, batch, *, seed) -> float (pcdarts.scorers.zero_cost)
# evaluation networks of genotypes of spaces beyond darts / nb201, by the genotype's ``space``:
# an object with ``build(genotype, **kwargs)`` and ``label(genotype, C=, layers=, stem=)``
NETWORKS: Registry[Any] = Registry("evaluation network")
# benchmark lookups by name, the value of a space's ``benchmark`` attribute (``nb201``):
# ``lookup(genotype, dataset) -> the benchmark's mean validation accuracy (%)``; filled by the
# package that holds the tables (pcdarts.nb201), so that lower layers (methods) read it by name
BENCHMARKS: Registry[Any] = Registry("benchmark")
