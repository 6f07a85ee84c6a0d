"""NB201 table data in memory (:class:`_TableData`) and the compact table files.

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

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pcdarts.genotype import GenotypeError, NB201Genotype
from pcdarts.nn.ops import NB201_PRIMITIVES
from pcdarts.nb201.arch import N_CELLS, BenchmarkError, _arch_of, _code_of, _digits_of

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "imagenet16-120")
"""Dataset names accepted by :func:`query` (case-insensitive)."""

TABLE_FORMAT = "pcdarts-nb201-table"
TABLE_VERSION = 1
_TABLE_SUFFIXES = (".npz", ".json", ".jsonl")


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


def _runs(arr: np.ndarray | None, row: int) -> list[float]:
    if arr is None:
        return []
    values = arr[row]
    return [float(v) for v in values[~np.isnan(values)]]


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

