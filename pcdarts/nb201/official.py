"""Converters from the official NAS-Bench-201 / NATS-Bench topology files to a compact table."""
from __future__ import annotations

import bz2
import pickle
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pcdarts.nb201.arch import BenchmarkError
from pcdarts.nb201.tables import _TABLE_SUFFIXES, _norm_hp, _records_to_table, _write

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
