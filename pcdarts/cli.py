"""Command line: ``pcdarts search | derive | show | ...``.

Turns presets, options and dotted overrides into configs and calls the library; no
search logic lives here. Errors a user can fix are printed as one ``error:`` line
(exit code 2); set PCDARTS_DEBUG=1 to see the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .config import ConfigError, apply_override, build_config, merge_onto_preset, parse_overrides, preset_names
from .registry import METHODS, SPACES, UnknownNameError

DEFAULT_PRESET = "quick"

# (module, function) pairs that add further subcommands; a missing module is skipped
EXTRA_COMMANDS: list[tuple[str, str]] = [
    ("pcdarts.train", "add_subcommands"),
    ("pcdarts.stats", "add_info_subcommand"),
    ("pcdarts.plot", "add_plot_subcommand"),
    ("pcdarts.nb201", "add_subcommand"),
    ("pcdarts.subset", "add_subset_subcommand"),
    ("pcdarts.planner", "add_subcommand"),
]


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input rather than a bug."""
    from .genotype import GenotypeError
    from .distributed import DeviceError, DistributedError
    from .search import RunDirError
    errors: list[type[BaseException]] = [ConfigError, UnknownNameError, GenotypeError, RunDirError, DeviceError,
                                         DistributedError, FileNotFoundError]
    for mod, name in (("pcdarts.data", "DataError"), ("pcdarts.nb201", "BenchmarkError"),
                      ("pcdarts.folders", "FolderError"), ("pcdarts.train", "TrainError")):
        try:
            errors.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


# ---------------------------------------------------------------- search

def search_config_dict(args: argparse.Namespace, overrides: Sequence[str]) -> dict[str, Any]:
    """Preset -> shortcut options -> dotted overrides, as one nested dict."""
    picks: dict[str, Any] = {}
    if args.method:
        picks["method"] = {"name": METHODS.get(args.method) and args.method}
    if args.space:
        picks["space"] = {"name": SPACES.get(args.space) and args.space}
    d = merge_onto_preset(args.preset or DEFAULT_PRESET, picks)
    if args.data:
        name, _, path = args.data.partition(":")
        d.setdefault("data", {})["dataset"] = name
        d["data"]["path"] = path or None
    run = d.setdefault("run", {})
    for key in ("seed", "out", "device"):
        if getattr(args, key) is not None:
            run[key] = getattr(args, key)
    if args.overwrite:
        run["overwrite"] = True
    if args.no_progress:
        run["progress"] = False
    if args.nb201_lookup:
        d.setdefault("search", {})["nb201_lookup"] = True
    for dotted, value in parse_overrides(overrides):
        apply_override(d, dotted, value)
    return d


def cmd_search(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    from .search import search
    if args.resume:
        if overrides or args.preset:
            raise ConfigError("--resume continues a run with its saved config.yaml; drop the preset/overrides")
        result = search(resume=args.resume)
    else:
        cfg = build_config(search_config_dict(args, overrides))
        result = search(cfg)
    if result.interrupted:
        return 130
    print(f"run directory: {result.run_dir}")
    print(f"genotype:      {result.run_dir / 'genotype.json'}")
    print(str(result.genotype))
    return 0


# ---------------------------------------------------------------- derive / show

def cmd_derive(args: argparse.Namespace) -> int:
    from .genotype import save_genotype
    genotype = derive_from_run(args.run_dir)
    print(str(genotype))
    if args.out:
        save_genotype(genotype, Path(args.out))
        print(f"written to {args.out}")
    return 0


def derive_from_run(run_dir: str | Path) -> Any:
    """The genotype of a run's latest checkpoint (works on unfinished runs too)."""
    import torch
    from .config import load_config_file
    from .search import CHECKPOINT, check_resumable
    from .spaces import get_space
    p = check_resumable(run_dir)
    cfg = load_config_file(p / "config.yaml")
    ck = torch.load(p / CHECKPOINT, map_location="cpu", weights_only=False)
    space = get_space(cfg.space.name)
    method = METHODS.get(cfg.method_name)(cfg.method, space, cfg.space, "cpu")
    method.load_state_dict(ck["method"])
    return space.derive(method.scores(), ck.get("masks") or None)


def cmd_show(args: argparse.Namespace) -> int:
    from .genotype import load_genotype
    from .stats import describe_cells, genotype_stats
    g = load_genotype(args.genotype)
    print(str(g))
    print("\n".join(describe_cells(g)))
    st = genotype_stats(g)
    print(f"parameters: {st['params']:.3f} M (evaluation network, auxiliary head excluded); "
          f"multiply-adds: {st['macs']:.1f} M")
    return 0


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pcdarts", description="Differentiable architecture search (PC-DARTS family).")
    from . import __version__
    p.add_argument("--version", action="version", version=f"pcdarts {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("search", help="run an architecture search (default: short PC-DARTS search on digits)",
                       description="Run an architecture search. Any config field can be overridden with "
                                   "--SECTION.KEY VALUE, e.g. --search.epochs 50 --method.arch_lr 1e-3 "
                                   f"--space.C 8. Presets: {', '.join(preset_names())}.")
    s.add_argument("--preset", help=f"YAML preset name or file (default: {DEFAULT_PRESET})")
    s.add_argument("--space", help=f"search space: {', '.join(SPACES.names())}")
    s.add_argument("--method", help=f"method: {', '.join(METHODS.names())}")
    s.add_argument("--data", help="dataset, e.g. digits, cifar10:PATH, cifar100:PATH")
    s.add_argument("--seed", type=int)
    s.add_argument("--out", help="run directory (default runs/<space>-<method>-<data>-s<seed>-<time>)")
    s.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly")
    s.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--nb201-lookup", action="store_true",
                   help="NB201 space: log the benchmark accuracy of each epoch's cell in history.jsonl")
    s.set_defaults(func=cmd_search, takes_overrides=True)

    d = sub.add_parser("derive", help="derive the genotype from a run's checkpoint")
    d.add_argument("run_dir")
    d.add_argument("--out", help="also write the genotype JSON here")
    d.set_defaults(func=cmd_derive)

    sh = sub.add_parser("show", help="print a genotype: ops per node and parameter count")
    sh.add_argument("genotype", help="genotype.json, run directory, genotype string or published name")
    sh.set_defaults(func=cmd_show)

    for mod, fn in EXTRA_COMMANDS:
        try:
            add: Callable[[Any], None] = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError):
            continue
        add(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        argv = ["search"]  # `pcdarts` alone runs the default search
    args, rest = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "takes_overrides", False):
            return int(args.func(args, rest))
        if rest:
            parser.error(f"unrecognised arguments: {' '.join(rest)}")
        return int(args.func(args) or 0)
    except _user_errors() as e:
        if os.environ.get("PCDARTS_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
