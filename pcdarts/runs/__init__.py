"""Run directories, checkpoints and stop signals, shared by search and training.

A run directory is claimed only after the new run has built its data, model and
method (so bad input never leaves an empty folder), and an old run in it is moved
aside rather than deleted until the new run has written its first checkpoint (so a
failed ``--overwrite`` loses nothing). Checkpoints are written atomically and the
previous one is kept as ``checkpoint.prev.pt``; a damaged file is reported in one
line that names it and the older one. Ctrl-C and SIGTERM both ask the loops to stop
at the next step boundary.

Checkpoints hold only tensors and plain Python types, so they are read with
``torch.load(weights_only=True)``, which cannot run code: :func:`encode_state` turns what
else a state holds (numpy's RNG state) into such types on save, :func:`decode_state` turns it
back on load. A checkpoint that needs full unpickling (one written by pcdarts before
checkpoint version 2, or a crafted one) is refused unless the caller trusts it
(``--trust-checkpoint``).
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import pickle
import shutil
import signal
import threading
import time
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import torch
import yaml

from pcdarts.errors import CheckpointError, CheckpointWriteError, RunDirError

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
BACKUP_PREFIX = ".replaced-"

# what a run of either kind writes; an overwritten run's entries matching these are moved aside
RUN_ENTRIES = ("config.yaml", "manifest.json", "history.jsonl", "genotype.json", CHECKPOINT, PREVIOUS,
               CHECKPOINT + ".tmp", "metrics.json", "seeds.json", "summary.json", "seed-*", "genotype_*.*",
               "genotype.*", "arch_weights.*", "plots", "tb")

# kind -> (what it is called, how to continue it, what else to do with it)
KINDS = {
    "search": ("a search run", "pcdarts search --resume {p}",
               "derive its cell with `pcdarts derive {p}` or train it with `pcdarts train {p}`"),
    "train": ("a training run", "pcdarts train --resume {p}", "evaluate it with `pcdarts eval {p}`"),
}
FORMATS = {"search": "pcdarts-search", "train": "pcdarts-train"}
# the newest checkpoint layout this code reads and writes (the "version" field); version 2 is the
# first that loads with torch.load(weights_only=True), version 1 needs --trust-checkpoint
CHECKPOINT_VERSION = 2
TRUST_FLAG = "--trust-checkpoint"
TRUST_HELP = ("read a checkpoint that needs full unpickling (one written by an older pcdarts); unpickling can run "
              "code hidden in the file, so only for a run directory from a source you trust")


def run_kind(path: Union[str, Path]) -> Optional[str]:
    """``"search"``, ``"train"`` or None (not a pcdarts run) for a directory."""
    p = Path(path)
    if (p / "seeds.json").is_file():
        return "train"
    try:
        d = yaml.safe_load((p / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        d = None
    if isinstance(d, dict):
        if "model" in d or "train" in d:
            return "train"
        if {"search", "method", "space"} & set(d):
            return "search"
    return None


def is_run_dir(path: Union[str, Path]) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / f).exists() for f in ("config.yaml", CHECKPOINT, PREVIOUS, "seeds.json"))


def wrong_kind_message(p: Path, found: str, command: str) -> str:
    label, resume, other = KINDS[found]
    return (f"{command} {p}: this is {label}; continue it with `{resume.format(p=p)}` "
            f"or {other.format(p=p)}")


def check_resumable(path: Union[str, Path], kind: str, command: str,
                    required: tuple[str, ...] = ("config.yaml", CHECKPOINT)) -> Path:
    """The run directory ``path`` of ``kind``, ready to be resumed or read by ``command``.

    Raises RunDirError naming the command actually used: no such directory, not a run,
    a run of the other kind (with the command that fits it), or missing files.
    """
    p = Path(path)
    if not p.is_dir():
        raise RunDirError(f"{command} {p}: no such directory")
    found = run_kind(p)
    if found is not None and found != kind:
        raise RunDirError(wrong_kind_message(p, found, command))
    missing = [f for f in required if not (p / f).is_file()]
    if missing:
        what = f"a pcdarts {kind} run directory" if found is None else f"a complete {KINDS[kind][0]}"
        hint = ""
        if CHECKPOINT in missing and (p / PREVIOUS).is_file():
            hint = f"; an older checkpoint is kept: rename {p / PREVIOUS} to {p / CHECKPOINT} to continue from it"
        raise RunDirError(f"{command} {p}: not {what} (missing {', '.join(missing)}){hint}")
    return p


# ---------------------------------------------------------------- checkpoints

_ARRAY = "__numpy_array__"  # the key of an encoded numpy array: {_ARRAY: dtype, "shape": [...], "data": bytes}
_PLAIN = (str, bytes, int, float, complex, bool, type(None), torch.Size, torch.dtype, torch.device)


def encode_state(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` with every entry that ``torch.load(weights_only=True)`` refuses made loadable.

    numpy arrays (numpy's RNG state) become ``{"__numpy_array__": dtype, "shape", "data": bytes}``,
    numpy scalars Python numbers, dict subclasses dicts; tensors and plain Python types stay (the
    very objects: containers are rebuilt only where something changed, so a module's state dict
    keeps its ``_metadata``). Anything else raises TypeError naming the entry: a state that
    could only be read by full unpickling is a bug of the code that built it.
    """
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN:
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject or obj.dtype.fields is not None:
            raise TypeError(f"{where} is a numpy array of dtype {obj.dtype}, which a checkpoint cannot hold; "
                            "store tensors and plain Python types")
        return {_ARRAY: obj.dtype.str, "shape": list(obj.shape), "data": np.ascontiguousarray(obj).tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        items = [(encode_state(k, f"a key of {where}"), encode_state(v, f"{where}[{k!r}]")) for k, v in obj.items()]
        if type(obj) in (dict, OrderedDict) and all(a is k and b is v for (a, b), (k, v) in zip(items, obj.items())):
            return obj
        out = OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
        if isinstance(obj, OrderedDict) and hasattr(obj, "_metadata"):
            out._metadata = obj._metadata  # type: ignore[attr-defined]  # a module state dict's versions
        return out
    if type(obj) in (list, tuple, set):
        items = [encode_state(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return obj if all(a is b for a, b in zip(items, obj)) else type(obj)(items)
    raise TypeError(f"{where} holds a {type(obj).__module__}.{type(obj).__qualname__}, which "
                    "torch.load(weights_only=True) cannot read; store tensors and plain Python types")


def decode_state(obj: Any) -> Any:
    """The inverse of :func:`encode_state` (numpy arrays back); anything else is returned as it is."""
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY, "shape", "data"}:
            dtype = np.dtype(obj[_ARRAY])
            return np.frombuffer(obj["data"], dtype=dtype).reshape(obj["shape"]).copy()
        items = [(k, decode_state(v)) for k, v in obj.items()]
        if all(b is v for (_, b), v in zip(items, obj.values())):
            return obj
        out = OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if type(obj) in (list, tuple):
        items = [decode_state(v) for v in obj]
        return obj if all(a is b for a, b in zip(items, obj)) else type(obj)(items)
    return obj


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` atomically and durably; the checkpoint it replaces is kept as ``checkpoint.prev.pt``.

    There is a complete ``checkpoint.pt`` at every moment, also after a power cut or a
    SIGKILL: the new file is written beside it and fsynced, the old one is hard-linked
    (copied where links fail) to the previous name, the new one is renamed over it, and
    the directory is fsynced after each rename. A failed write (disk full, quota, I/O
    error) removes the partial file, leaves both older checkpoints untouched and raises
    :class:`~pcdarts.errors.CheckpointWriteError` in one line.

    ``PCDARTS_TEST_CHECKPOINT_PAUSE=SECONDS`` sleeps between the stages (tests kill the
    process there to prove the claim above).

    The state is written through :func:`encode_state`, so it loads with
    ``torch.load(weights_only=True)`` (:func:`load_checkpoint`).
    """
    path = Path(path)
    state = encode_state(state)  # before anything is opened: a state that cannot be encoded writes nothing
    tmp = path.with_name(path.name + ".tmp")
    prev = path.with_name(PREVIOUS)
    prev_tmp = prev.with_name(prev.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            _test_pause()
            f.flush()
            os.fsync(f.fileno())
        _test_pause()
        if path.is_file():
            prev_tmp.unlink(missing_ok=True)
            try:
                os.link(path, prev_tmp)
            except OSError:
                shutil.copyfile(path, prev_tmp)
                _fsync_file(prev_tmp)
            _test_pause()
            os.replace(prev_tmp, prev)
            _fsync_dir(path.parent)
            _test_pause()
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        for partial in (tmp, prev_tmp):
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
        raise CheckpointWriteError(checkpoint_write_message(path, e)) from None


def checkpoint_write_message(path: Path, e: OSError) -> str:
    """One line: which file could not be written, why (disk full named as such), what is kept."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "the disk is full (no space left on device)"
        fix = "free some space"
    else:
        why = f"the write failed ({e.strerror or e})"
        fix = "fix the cause"
    if path.is_file():
        kept = (f"the last complete checkpoint {path} is intact; {fix} and continue from it "
                f"with --resume {path.parent}")
    else:
        kept = f"no checkpoint had been written yet; {fix} and start the run again"
    return f"cannot write the checkpoint {path}: {why}; {kept}"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_rank_checkpoint(state: Callable[[], dict[str, Any]], meters: dict[str, Any], path: Path,
                         rundir: "RunDir") -> None:
    """Write a run's checkpoint from rank 0 (the one process when alone) with the epoch's running
    meter sums of every rank (so any number of processes can resume it), then wait for every
    rank: under torchrun nobody leaves while rank 0 is still writing. ``state()`` builds the
    checkpoint dict; it is called on rank 0 only."""
    from pcdarts.distributed import all_reduce_sum, barrier, dist_info
    info = dist_info()
    summed = None
    if info.is_distributed:
        summed = [v.detach().clone() for v in meters.values()]
        all_reduce_sum(summed)
    if info.is_main:
        ck = state()
        if summed is not None:
            ck["meters"] = {k: v.cpu() for k, v in zip(meters, summed)}
        save_checkpoint(ck, path)
        rundir.commit()
    barrier()


def rank_meters(saved: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The running meter sums of a checkpoint written by :func:`save_rank_checkpoint`: they are
    over every rank, so rank 0 carries them on and the other ranks start from zero."""
    from pcdarts.distributed import dist_info
    main = dist_info().is_main
    return {k: (v if main else torch.zeros_like(v)).to(device) for k, v in saved.items()}


def test_stop_after_steps() -> Optional[int]:
    """``PCDARTS_TEST_STOP_AFTER_STEPS``: the CLI stops a search or training after that many
    steps with a checkpoint, as Ctrl-C would, at the same step on every rank (tests of resume
    under torchrun use it; not a user option)."""
    value = os.environ.get("PCDARTS_TEST_STOP_AFTER_STEPS")
    return int(value) if value else None


def _test_pause() -> None:
    pause = os.environ.get("PCDARTS_TEST_CHECKPOINT_PAUSE")
    if pause:
        time.sleep(float(pause))


def load_checkpoint(path: Union[str, Path], kind: str, command: str, config: Optional[dict[str, Any]] = None,
                    sections: tuple[str, ...] = (), *, trust: bool = False,
                    normalise: Optional[Callable[[str, Any], Any]] = None) -> dict[str, Any]:
    """Read a checkpoint of ``kind``; a damaged file, one of another kind, one written by a newer
    pcdarts, or (given the run's ``config`` dict) one whose ``sections`` differ from it (a
    checkpoint of another space or method copied in) raises CheckpointError in one line that
    names the file and what to do (the older checkpoint, if one is kept). ``normalise(section,
    saved values)`` rewrites a saved section as this version writes it before the comparison
    (a checkpoint written before a section changed shape, e.g. the per-space ``space:`` section).

    The file is read with ``torch.load(weights_only=True)``, which runs no code. One that needs
    full unpickling (written by pcdarts before checkpoint version 2, or crafted to run code) is
    refused in one line naming ``--trust-checkpoint``; with ``trust`` (the user vouches for its
    source) it is unpickled in full."""
    path = Path(path)
    prev = path.with_name(PREVIOUS)
    older = (f"an older checkpoint is kept: rename {prev} to {path} to continue from it"
             if prev.is_file() and prev != path else "no older checkpoint is kept; start the run again")
    if not path.is_file():
        raise CheckpointError(f"{command}: {path} does not exist; {older}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{command}: {path} is damaged (empty file); {older}")
    ck = decode_state(_read_checkpoint(path, command, older, trust))
    found = next((k for k, f in FORMATS.items() if isinstance(ck, dict) and ck.get("format") == f), None)
    if found != kind:
        if found is not None:
            raise CheckpointError(wrong_kind_message(path.parent, found, command))
        raise CheckpointError(f"{command}: {path} is not a pcdarts {kind} checkpoint")
    version = ck.get("version", 1)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{command}: {path} was written by a newer pcdarts (checkpoint version {version!r}, "
                              f"this one reads up to {CHECKPOINT_VERSION}); upgrade pcdarts to continue it")
    saved = ck.get("config") if isinstance(ck.get("config"), dict) else {}
    for section in sections:
        now = (config or {}).get(section) or {}
        old = saved.get(section)
        if normalise is not None and isinstance(old, dict):
            old = normalise(section, old)
        if config is not None and section in saved and old != now:
            diff = sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))
            shown = ", ".join(f"{section}.{k} {old.get(k)!r} vs {now.get(k)!r}" for k in diff[:3])
            raise CheckpointError(f"{command}: {path} belongs to another run ({shown}: checkpoint vs "
                                  f"{path.parent / 'config.yaml'}); put back the run's own checkpoint, or "
                                  f"start a new run")
    return ck


_READ_ERRORS = (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, OSError,
                AttributeError, ImportError, IndexError, KeyError, TypeError)


def _read_checkpoint(path: Path, command: str, older: str, trust: bool) -> Any:
    """``torch.load`` of a checkpoint: weights only, or in full when it needs that and ``trust``."""
    def damaged(e: BaseException) -> CheckpointError:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        return CheckpointError(f"{command}: {path} is damaged (truncated or corrupt: {reason}); {older}")

    try:
        with warnings.catch_warnings():  # a damaged file is reported below; torch's protocol notice adds nothing
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # the weights-only unpickler refused something in it
        unsafe = _unsafe_globals(path)
        if not unsafe:
            raise damaged(e) from None
        if not trust:
            shown = ", ".join(unsafe[:3]) + (", ..." if len(unsafe) > 3 else "")
            raise CheckpointError(f"{command}: {path} can only be read by full unpickling, which would run any "
                                  f"code in the file (it imports {shown}: a checkpoint of an older pcdarts, or a "
                                  f"crafted one); if you trust where it came from, pass {TRUST_FLAG} "
                                  f"(trust_checkpoint=True in Python)") from None
    except _READ_ERRORS as e:
        raise damaged(e) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)  # trusted by the user
    except _READ_ERRORS as e:
        raise damaged(e) from None


def _unsafe_globals(path: Path) -> list[str]:
    """The names a checkpoint's pickle imports beyond what ``weights_only`` allows; [] when none
    or when its pickle cannot even be parsed (then it is damaged)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - anything unreadable is reported as damaged by the caller
        return []


# ---------------------------------------------------------------- claiming a run directory

class RunDir:
    """The directory of one run: checked before anything is built, claimed after.

    Args:
        path: the run directory.
        overwrite: a new run may replace an existing run in ``path``.
        resume: the run continues the one in ``path`` (nothing is moved).

    For a new run, :meth:`open` moves an existing run's files into a hidden
    ``.replaced-<time>`` folder and creates the directory; :meth:`commit` (after the
    first checkpoint, or at the end) deletes that folder; :meth:`abort` (a failure
    before any checkpoint) removes what the new run wrote and puts the old run back.
    """

    def __init__(self, path: Union[str, Path], *, overwrite: bool = False, resume: bool = False,
                 command: str = "pcdarts") -> None:
        self.path = Path(path)
        self.resume = resume
        self.opened = resume
        self._backup: Optional[Path] = None
        self._created = False
        if resume:
            return
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{command}: --out {self.path} is a file, not a directory; choose another --out")
        if is_run_dir(self.path) and not overwrite:
            raise RunDirError(f"{self.path} already holds a run; pass --overwrite to replace it, "
                              f"--resume {self.path} to continue it, or choose another --out")

    def open(self) -> Path:
        """Claim the directory for the new run (idempotent)."""
        if self.opened:
            return self.path
        if is_run_dir(self.path):
            backup = self.path / f"{BACKUP_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            backup.mkdir()
            for pattern in RUN_ENTRIES:
                for entry in sorted(self.path.glob(pattern)):
                    os.replace(entry, backup / entry.name)
            self._backup = backup
        elif not self.path.exists():
            self.path.mkdir(parents=True)
            self._created = True
        self.opened = True
        return self.path

    def commit(self) -> None:
        """The new run has a checkpoint: the replaced run can go."""
        if self._backup is not None:
            shutil.rmtree(self._backup, ignore_errors=True)
            self._backup = None
        for stale in self.path.glob(f"{BACKUP_PREFIX}*"):  # left by a run killed before its first checkpoint
            shutil.rmtree(stale, ignore_errors=True)

    def abort(self) -> None:
        """The new run failed before its first checkpoint: remove what it wrote, restore the old run."""
        if not self.opened or self.resume:
            return
        for pattern in RUN_ENTRIES:
            for entry in self.path.glob(pattern):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        if self._backup is not None:
            for entry in self._backup.iterdir():
                os.replace(entry, self.path / entry.name)
            self._backup.rmdir()
            self._backup = None
        elif self._created and not any(self.path.iterdir()):
            self.path.rmdir()
        self.opened = False

    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT).is_file() or any(self.path.glob(f"seed-*/{CHECKPOINT}"))

    @contextlib.contextmanager
    def claimed(self) -> Iterator[Path]:
        """``with run_dir.claimed():`` around a run: :meth:`open` first, then :meth:`finish`
        (commit, or put the old run back if the run failed before its first checkpoint)."""
        self.open()
        failed = True
        try:
            yield self.path
            failed = False
        finally:
            self.finish(failed)

    def finish(self, failed: bool) -> None:
        """End of a run call: commit when a checkpoint exists, else abort (on failure) or commit."""
        if failed and not self.has_checkpoint():
            self.abort()
        elif self.opened:
            self.commit()


# ---------------------------------------------------------------- stop signals

class StopFlag:
    """Context manager turning Ctrl-C and SIGTERM into a request to stop at the next step boundary.

    The loops check ``requested`` between steps, save a checkpoint and return, so an
    interruption loses nothing; a second Ctrl-C stops at once. SIGTERM is what SLURM
    and Kubernetes send before they kill a job.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        # handlers can only be installed from the main thread (not under some test runners)
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


def stop_exit_code(signal_name: str) -> int:
    """The exit code of a run stopped early: 128 + the signal's number, as a shell reports a
    process killed by it (SIGINT 130, SIGTERM 143); 130 for a stop without a signal (tests'
    ``stop_after_steps``)."""
    try:
        return 128 + int(signal.Signals[signal_name]) if signal_name else 130
    except KeyError:
        return 130


def stop_message(command: str, run_dir: Path, epoch: int, epochs: int, step: int, steps: int,
                 signal_name: str = "") -> str:
    """The one line printed when a run stops early; epochs and steps are 1-based as on the progress bar."""
    why = f"{signal_name}: " if signal_name else ""
    if step == 0:
        where = f"after epoch {epoch}/{epochs}"
    else:
        where = f"in epoch {epoch + 1}/{epochs} after step {step}/{steps}"
    return f"{why}stopped {where}; state saved. Continue with: {command} --resume {run_dir}"


def resume_message(epoch: int, epochs: int, step: int, steps: int) -> str:
    """Where a resumed run continues, 1-based like the progress bar; a run whose every epoch
    was done (stopped or killed after its last one) is finished instead."""
    if epoch >= epochs:
        return f"all {epochs} epochs were done before the stop: finishing the run (writing its final files)"
    return f"resuming at epoch {epoch + 1}/{epochs}, step {step + 1}/{steps}"




# ---------------------------------------------------------------- divergence

class NonFiniteWatch:
    """Flags non-finite losses on the device, without a host sync per step.

    ``observe`` ORs ``~isfinite(loss)`` into a device flag; the loop reads the flags
    (one sync) every ``period`` steps and before every checkpoint. On the CPU a read
    costs nothing, so the period is 1 there and a bad step is caught at once.
    """

    def __init__(self, names: tuple[str, ...], device: torch.device, period: int) -> None:
        self.names = names
        self.flags = torch.zeros(len(names), dtype=torch.bool, device=device)
        self.period = 1 if torch.device(device).type == "cpu" else max(1, int(period))

    def observe(self, name: str, loss: torch.Tensor) -> None:
        i = self.names.index(name)
        self.flags[i] |= ~torch.isfinite(loss.detach()).all()

    def due(self, step: int) -> bool:
        return step % self.period == 0

    def first_bad(self) -> Optional[str]:
        bad = self.flags.tolist()
        return next((n for n, b in zip(self.names, bad) if b), None)


def nonfinite_buffer(modules: dict[str, torch.nn.Module]) -> Optional[str]:
    """The name (``"supernet.cells.0...running_var"``) of the first floating-point buffer, a
    batch-norm running statistic, of the named ``modules`` holding a NaN or an inf, or None; one
    host sync for all of them. Training-mode batch norm normalises with the batch's own
    statistics, so the step losses stay finite while the running statistics that evaluation
    and the checkpoint use have diverged."""
    named = [(f"{label}.{n}", b) for label, m in modules.items() for n, b in m.named_buffers()
             if b.is_floating_point() and b.numel()]
    if not named:
        return None
    ok = torch.stack([torch.isfinite(b).all() for _, b in named]).tolist()
    return next((n for (n, _), good in zip(named, ok) if not good), None)


# an epoch loss this many times the reference (chance level, or the first epoch's) gets a warning line
EXPLOSION_FACTOR = 100.0


def explosion_warning(what: str, loss: float, reference: Optional[float], reference_name: str,
                      where: str, hint: str) -> Optional[str]:
    """The warning for a finite loss that grew by orders of magnitude (more than
    :data:`EXPLOSION_FACTOR` times ``reference``); None while it did not (or without a reference)."""
    if reference is None or not reference > 0 or not math.isfinite(loss) or loss <= EXPLOSION_FACTOR * reference:
        return None
    return (f"{what} is {loss:.3g} {where}, {loss / reference:.3g}x {reference_name} ({reference:.3g}): the run is "
            f"probably diverging and its results unlikely to mean anything; {hint}")


def divergence_message(what: str, where: str, hint: str, checkpoint: Path) -> str:
    """One line: which loss went non-finite, where, the likely cause, and what was kept."""
    kept = (f"the last good checkpoint {checkpoint} is kept" if checkpoint.is_file()
            else "no checkpoint was written")
    return f"{what} became non-finite (NaN or inf) {where}: {hint}; {kept}, no genotype was derived from it"


__all__ = ["CHECKPOINT", "CHECKPOINT_VERSION", "PREVIOUS", "TRUST_FLAG", "TRUST_HELP", "NonFiniteWatch", "RunDir",
           "StopFlag", "check_resumable", "checkpoint_write_message", "decode_state", "divergence_message",
           "encode_state", "is_run_dir", "load_checkpoint", "resume_message", "run_kind", "save_checkpoint",
           "stop_message", "wrong_kind_message"]
