"""Run bookkeeping: seeding, RNG-state capture/restore, run directories, manifests, JSONL, TensorBoard,
and the one mean ± sample std of repeated runs (:func:`mean_std`)."""
from __future__ import annotations

import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from pcdarts._version import __version__
from pcdarts.errors import ConfigError


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed python, numpy and torch (CPU and CUDA) with ``seed + rank``."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def set_cpu_arithmetic(threads: Optional[int], flush_denormal: bool) -> None:
    """The process-wide CPU settings of a run: torch's thread count (None leaves it as it is)
    and whether subnormal floats (below 1.2e-38 in float32) are flushed to zero. On x86 an
    operation on subnormals is 10-100x slower, and they appear where a tiny mixing weight
    scales a gradient (MSR-DARTS's softmax(-stable rank)); TensorFlow flushes them by default."""
    if threads:
        torch.set_num_threads(int(threads))
    torch.set_flush_denormal(bool(flush_denormal))


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is a lower precision (bf16, fp16); float64 stays float64."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def rng_state() -> dict[str, Any]:
    """Every RNG state a run depends on (for exact resume)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def git_info() -> dict[str, Any]:
    """SHA and dirty flag of the pcdarts source checkout, when it is one."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
        return {"sha": sha or None, "dirty": dirty if sha else None}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def versions() -> dict[str, Any]:
    v: dict[str, Any] = {
        "pcdarts": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        v["cuda"] = torch.version.cuda
        v["cudnn"] = torch.backends.cudnn.version()
    return v


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, default=float) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# TensorBoard output of a search or a training run (run.tensorboard): see pcdarts.analysis.tensorboard
TENSORBOARD_MISSING = ("run.tensorboard (--tensorboard) needs the tensorboard package: "
                       "pip install \"pcdarts[tensorboard]\" (or pip install tensorboard), or drop --tensorboard")
_TB_SKIP = {"epoch"}  # the step, not a scalar


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard imports the tensorboard package
        raise ConfigError(TENSORBOARD_MISSING) from None
    return SummaryWriter


def tb_scalars(rec: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a record, nested dicts flattened with ``/`` (``arch_entropy/normal``);
    booleans, strings, lists and ``epoch`` left out."""
    out: dict[str, float] = {}
    for key, value in rec.items():
        if not prefix and key in _TB_SKIP:
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(tb_scalars(value, tag + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[tag] = float(value)
    return out


class TBWriter:
    """Writes a run's per-epoch records to ``run_dir/tb`` (TensorBoard, ``run.tensorboard``; the
    search's writer, :class:`pcdarts.analysis.tensorboard.TBWriter`, adds the cell picture).

    Args:
        run_dir: the run directory.

    Raises:
        ConfigError: the tensorboard package is not installed (checked here, at once).
    """

    def __init__(self, run_dir: Union[str, Path]) -> None:
        self.log_dir = Path(run_dir) / "tb"
        self._cls = _summary_writer()
        self._writer: Optional[Any] = None

    @property
    def writer(self) -> Any:
        if self._writer is None:
            self._writer = self._cls(log_dir=str(self.log_dir))
        return self._writer

    def epoch(self, rec: dict[str, Any]) -> None:
        """Scalars and arch-weight histograms of one epoch's record (step = ``rec["epoch"]``)."""
        step = int(rec.get("epoch", 0))
        w = self.writer
        for tag, value in tb_scalars(rec).items():
            w.add_scalar(tag, value, step)
        for name in ("arch_weights", "edge_weights"):
            for cell_type, rows in (rec.get(name) or {}).items():
                if name == "edge_weights":
                    w.add_histogram(f"{name}/{cell_type}", np.asarray(rows, dtype=np.float64), step)
                    continue
                for i, row in enumerate(rows):
                    w.add_histogram(f"{name}/{cell_type}/edge{i}", np.asarray(row, dtype=np.float64), step)
        w.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def tb_writer(run_dir: Union[str, Path], enabled: bool) -> Optional[TBWriter]:
    """A :class:`TBWriter` when ``enabled`` (else None): the one line a loop calls."""
    return TBWriter(run_dir) if enabled else None


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB.

    On Linux it is read from ``VmHWM`` (per address space, so it starts afresh at exec);
    ``getrusage``'s ``ru_maxrss``, the fallback elsewhere, survives exec and would report
    the parent's resident size for a subprocess started from a big parent.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this process: the CUDA allocator's peak on a GPU, else the peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def progress_bar(enabled: bool, total: int, desc: str, **kwargs: Any) -> Any:
    """A tqdm bar of ``total`` steps, or None when progress bars are off (callers check for None)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, dynamic_ncols=True, **kwargs)


def epoch_progress(enabled: bool, total: int, initial: int, epoch: int, epochs: int) -> Any:
    """A tqdm bar over one epoch's steps (None when progress bars are off)."""
    return progress_bar(enabled, total, f"epoch {epoch + 1}/{epochs}", initial=initial, leave=False)


def progress_tick(bar: Any, step: int, steps: int, log_every: int, postfix: Any) -> None:
    """Advance an epoch bar (None: no bar) by one step; its postfix (``postfix()``, which
    reads device meters) is refreshed only every ``log_every`` steps and at the epoch's end."""
    if bar is None:
        return
    bar.update(1)
    if step % max(1, log_every) == 0 or step == steps:
        bar.set_postfix(postfix(), refresh=False)


def history_until(path: Path, epoch: int, *, rewrite: bool = True) -> list[dict[str, Any]]:
    """The ``history.jsonl`` records of the epochs before ``epoch`` (the ones a checkpoint
    at ``epoch`` has finished); with ``rewrite`` the file is cut back to them, dropping
    lines a crash between history and checkpoint left behind."""
    records = [r for r in read_jsonl(path) if r["epoch"] < epoch]
    if rewrite:
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())
    return records


def update_manifest(run_dir: Path, **fields: Any) -> None:
    """Set ``fields`` in ``run_dir/manifest.json``, if there is one."""
    path = Path(run_dir) / "manifest.json"
    if path.is_file():
        data = json.loads(path.read_text())
        data.update(**fields)
        write_json(path, data)


def close_manifest(run_dir: Path, **fields: Any) -> None:
    """Record the end time (and ``fields``) in ``run_dir/manifest.json``, if there is one."""
    update_manifest(run_dir, end_time=now(), **fields)


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""


def manifest(seed: int, device: str, extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Seed, versions, git SHA, command and device of a run (written as manifest.json)."""
    m = {"seed": seed, "device": device, "command": command_line(), "cwd": os.getcwd(),
         "versions": versions(), "git": git_info(), "start_time": now(), "hostname": platform.node()}
    if device.startswith("cuda") and torch.cuda.is_available():
        m["gpu"] = torch.cuda.get_device_name(torch.device(device))
    m.update(extra or {})
    return m


# ---------------------------------------------------------------- mean ± std over repeated runs

STD_LABEL = "sample std"  # what every printed ± means: the sample standard deviation (n - 1)


def mean_std(values: Any) -> tuple[Optional[float], Optional[float]]:
    """The mean and the **sample** standard deviation (divisor n - 1) of ``values`` (seeds,
    benchmark runs): ``(None, None)`` for no value, ``(mean, None)`` for one (a spread of
    one value is undefined). The one formula behind every ± the package prints."""
    vals = [float(v) for v in values]
    if not vals:
        return None, None
    mean = math.fsum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def format_mean_std(mean: Optional[float], std: Optional[float], digits: int = 2) -> str:
    """``"97.10 ± 0.08"`` (``"97.10"`` without a spread, ``"n/a"`` without a mean); say
    :data:`STD_LABEL` next to it where the ± is explained."""
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")
