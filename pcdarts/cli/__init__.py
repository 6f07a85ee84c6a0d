"""Command line: ``pcdarts search | derive | show | ...``.

Turns presets, options and dotted overrides into configs and calls the library; no
search logic lives here. Errors a user can fix (every :class:`~pcdarts.errors.PcdartsError`)
are printed as one ``error:`` line (exit code 2), warnings as one ``warning:`` line; set
``--debug`` (or PCDARTS_DEBUG=1) to see the traceback. A run stopped by Ctrl-C exits 130, by
SIGTERM 143. Under torchrun only rank 0 prints these lines (the other ranks exit with the same
code in silence); ``PCDARTS_ALL_RANKS=1`` lets every rank print them, prefixed by its rank.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

from pcdarts.config import (ConfigError, apply_override, build_config, describe_budget, has_labels,
                            merge_onto_preset, parse_overrides, preset_names, scale_budget)
from pcdarts.errors import PcdartsError
from pcdarts.registry import METHODS, OBJECTIVES, SPACES
from pcdarts.runs import TRUST_FLAG, TRUST_HELP

DEFAULT_PRESET = "quick"
ALL_RANKS_ENV = "PCDARTS_ALL_RANKS"  # set (not 0): every torchrun rank prints its errors and warnings

USER_ERRORS: tuple[type[BaseException], ...] = (PcdartsError, FileNotFoundError)  # bad input, not a bug


def rank_prefix() -> Optional[str]:
    """What starts this process's own lines (errors, warnings, the budget line): ``""`` alone and
    on torchrun's rank 0; None (print nothing) on the other ranks, which would repeat rank 0's
    lines, unless ``PCDARTS_ALL_RANKS`` is set (then ``"[rank N] "``)."""
    rank, world = int(os.environ.get("RANK", "0") or 0), int(os.environ.get("WORLD_SIZE", "1") or 1)
    if os.environ.get(ALL_RANKS_ENV, "0") not in ("", "0") and world > 1:
        return f"[rank {rank}] "
    return "" if rank == 0 else None


def say(text: str, file: Any = None) -> None:
    """Print one of the command's own lines on the ranks that print (see :func:`rank_prefix`)."""
    prefix = rank_prefix()
    if prefix is not None:
        print(prefix + text, file=sys.stdout if file is None else file, flush=True)


def _one_line_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                      line: Any = None) -> None:
    """Warnings reach a user as ``warning: ...``, without a source path and line."""
    say(f"warning: {message}", file=sys.stderr if file is None else file)


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the other arguments, the dotted overrides with their values) of a command line.

    ``--SECTION.KEY VALUE`` and ``--SECTION.KEY=VALUE`` are taken out before argparse
    sees the line, so an override's value is never mistaken for a positional argument
    (``pcdarts train --train.lr 1e-3`` has no genotype rather than the genotype ``1e-3``).
    """
    rest: list[str] = []
    overrides: list[str] = []
    items, i = list(argv), 0
    while i < len(items):
        tok = items[i]
        key = tok[2:].split("=", 1)[0]
        if tok.startswith("--") and "." in key and key.split(".", 1)[0].isidentifier():
            overrides.append(tok)
            if "=" not in tok and i + 1 < len(items):
                overrides.append(items[i + 1])
                i += 1
        else:
            rest.append(tok)
        i += 1
    return rest, overrides


# ---------------------------------------------------------------- search

def search_config_dict(args: argparse.Namespace, overrides: Sequence[str]) -> dict[str, Any]:
    """Preset -> shortcut options -> dotted overrides, as one nested dict."""
    picks: dict[str, Any] = {}
    if args.method:
        picks["method"] = {"name": METHODS.get(args.method) and args.method}
    if args.space:
        picks["space"] = {"name": SPACES.get(args.space) and args.space}
    if args.objective:
        picks["objective"] = {"name": OBJECTIVES.get(args.objective) and args.objective}
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
    if args.tensorboard:
        run["tensorboard"] = True
    if args.nb201_lookup:
        d.setdefault("search", {})["nb201_lookup"] = True
    if args.prune:
        d.setdefault("search", {})["prune"] = args.prune
    for dotted, value in parse_overrides(overrides):
        apply_override(d, dotted, value)
    return d


def cmd_search(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    from pcdarts.runs import test_stop_after_steps
    from pcdarts.search.searcher import search
    stop = test_stop_after_steps()
    if args.resume:
        if overrides or args.preset or args.budget is not None:
            raise ConfigError("--resume continues a run with its saved config.yaml; drop the preset/overrides/--budget")
        result = search(resume=args.resume, stop_after_steps=stop, trust_checkpoint=args.trust_checkpoint)
    else:
        if args.trust_checkpoint:
            raise ConfigError(f"{TRUST_FLAG} only applies to --resume RUN_DIR (a new run reads no checkpoint); "
                              "drop it")
        try:
            cfg = build_config(search_config_dict(args, overrides))
            if args.budget is not None:
                cfg, changes = scale_budget(cfg, args.budget)
                say(describe_budget(cfg, changes))
        except ConfigError as e:
            raise ConfigError(f"{e}{switched_method_hint(args)}") from None
        result = search(cfg, stop_after_steps=stop)
    if result.interrupted:
        from pcdarts.runs import stop_exit_code
        return stop_exit_code(result.stop_signal)  # SIGINT 130, SIGTERM 143
    from pcdarts.distributed import dist_info
    if dist_info().is_main:  # under torchrun one summary, from rank 0
        for line in search_summary(result):
            print(line)
    return 0


def switched_method_hint(args: argparse.Namespace) -> str:
    """When ``--method`` names another method than the preset's, the tail of a config error:
    the other sections (epochs, space, data) are still the preset's, so name the presets made
    for that method (those of the preset's space first); empty otherwise."""
    from pcdarts.config import load_preset
    preset = args.preset or DEFAULT_PRESET
    try:
        base = load_preset(preset)
    except ConfigError:  # an unknown preset: that error says so itself
        return ""
    made_for = (base.get("method") or {}).get("name", "pc-darts")
    if not args.method or args.method == made_for:
        return ""
    space = args.space or (base.get("space") or {}).get("name", "darts")
    own = [(((d.get("space") or {}).get("name") != space), name) for name in preset_names()
           for d in [load_preset(name)] if (d.get("method") or {}).get("name") == args.method]
    names = [name for _, name in sorted(own)]
    where = f"--method {args.method} on the {preset} preset keeps that preset's other settings (made for {made_for})"
    if not names:
        return f"; {where}: set the fields named above for {args.method}"
    also = f" (also: {', '.join(names[1:])})" if len(names) > 1 else ""
    return f"; {where}: start from a preset made for {args.method} instead, e.g. --preset {names[0]}{also}"


def search_summary(result: Any) -> list[str]:
    """The lines printed when a search ends: where it is, the cell, its size, how far the
    architecture weights moved from uniform, and what to run next."""
    from pcdarts.analysis.stats import arch_weight_summary
    run_dir, cfg = result.run_dir, result.config
    last = result.history[-1] if result.history else {}
    lines = [f"run directory: {run_dir}", f"genotype:      {run_dir / 'genotype.json'}", str(result.genotype)]
    if "genotype_params_m" in last:
        lines.append(f"cell size:     {last['genotype_params_m']:.3f} M parameters, {last['genotype_macs_m']:.1f} M "
                     f"multiply-adds ({last.get('genotype_network', 'evaluation network')})")
    # over each edge's live ops; only where the op weights can move (the searcher then logs arch_entropy)
    moved = arch_weight_summary(last.get("arch_weights"), last.get("op_masks")) if "arch_entropy" in last else {}
    if moved:
        lines.append(f"arch weights:  mean entropy {moved['entropy']:.2f} of uniform (1.00 = not moved), "
                     f"strongest op {moved['max']:.2f} on average (uniform {moved['uniform']:.2f})")
    for ds, acc in (last.get("nb201") or {}).items():
        test = f", test {acc['test']:.2f}" if acc.get("test") is not None else ""
        lines.append(f"NAS-Bench-201: {ds} valid {acc['valid']:.2f}{test}")
    g = run_dir / "genotype.json"
    data = cfg.data.spec if has_labels(cfg.data.dataset) else "LABELLED_SET:PATH"  # training needs labels
    from pcdarts.spaces import get_space
    space = get_space(cfg.space.name)
    if space.benchmark is not None:  # a benchmark's cell: look it up (pcdarts query) or train it
        lines.append(f"next:          pcdarts query {g}   or   pcdarts train {g} --data {data}")
    elif cfg.data.dataset == "digits":
        lines.append(f"next:          pcdarts train {g} --preset short")
    else:
        lines.append(f"next:          pcdarts train {g} --preset {space.train_preset} --data {data}")
    return lines


# ---------------------------------------------------------------- derive / show

def cmd_derive(args: argparse.Namespace) -> int:
    from pcdarts.genotype import save_genotype
    genotype = derive_from_run(args.run_dir, trust_checkpoint=args.trust_checkpoint)
    print(str(genotype))
    if args.out:
        save_genotype(genotype, Path(args.out))
        print(f"written to {args.out}")
    return 0


def derive_from_run(run_dir: str | Path, trust_checkpoint: bool = False) -> Any:
    """The genotype of a run's latest checkpoint (works on unfinished runs too): the run loaded
    by the one assembly (:func:`pcdarts.search.build.load_run`), its method's scores over the
    supernet's live ops (a space pruned before the search: as in the run); ``trust_checkpoint``
    unpickles the checkpoint in full when it needs that (``--trust-checkpoint``)."""
    from pcdarts.search.build import load_run
    return load_run(run_dir, command="pcdarts derive", trust_checkpoint=trust_checkpoint).parts.derive()


def cmd_show(args: argparse.Namespace) -> int:
    from pcdarts.genotype import load_genotype
    from pcdarts.analysis.stats import describe_cells, genotype_stats
    g = load_genotype(args.genotype)
    print(str(g))
    print("\n".join(describe_cells(g)))
    st = genotype_stats(g, **run_network_shape(args.genotype))
    print(f"parameters: {st['params']:.3f} M (auxiliary head excluded); multiply-adds: {st['macs']:.1f} M "
          f"({st['network']})")
    return 0


def run_network_shape(source: str) -> dict[str, Any]:
    """The data shape (classes, channels, input side; ``labelled`` False for a search on data
    without classes) of the run a genotype comes from, read from its manifest.json, so that
    ``pcdarts show RUN`` reports the network that the run's history.jsonl reports; empty (the
    CIFAR defaults) for anything else."""
    p = Path(source)
    run_dir = p if p.is_dir() else p.parent
    try:
        shape = json.loads((run_dir / "manifest.json").read_text()).get("network") or {}
    except (OSError, ValueError):
        return {}
    keys = ("num_classes", "in_channels", "input_size")
    out: dict[str, Any] = {k: int(shape[k]) for k in keys if k in shape}
    if shape.get("labelled") is False:
        out["labelled"] = False
    return out if p.exists() else {}


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pcdarts", description="Differentiable architecture search (PC-DARTS family).")
    from pcdarts import __version__
    p.add_argument("--version", action="version", version=f"pcdarts {__version__}")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an error (also PCDARTS_DEBUG=1); may stand anywhere on the line")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("search", help="run an architecture search (default: short PC-DARTS search on digits)",
                       description="Run an architecture search. Any config field can be overridden with "
                                   "--SECTION.KEY VALUE, e.g. --search.epochs 50 --method.arch_lr 1e-3 "
                                   f"--space.C 8. Presets: {', '.join(preset_names())}.")
    s.add_argument("--preset", help=f"YAML preset name or file (default: {DEFAULT_PRESET})")
    s.add_argument("--space", help=f"search space: {', '.join(SPACES.names())}")
    s.add_argument("--method", help=f"method: {', '.join(METHODS.names())}")
    s.add_argument("--objective", help=f"search objective (objective.name): {', '.join(OBJECTIVES.names())}; "
                                       "mae needs no labels (e.g. --data unlabelled:DIR)")
    s.add_argument("--data", help="dataset: digits (bundled), cifar10:PATH, cifar100:PATH, folder:DIR (one "
                                  "sub-folder of images per class), unlabelled:DIR (no labels: --objective mae) "
                                  "or synthetic:SIZExCHANNELSxCOUNT")
    s.add_argument("--seed", type=int,
                   help="run seed (run.seed, default 0): weight initialisation, data order, architecture draws "
                        "and, unless data.split_seed is set, the weight/architecture split")
    s.add_argument("--out", help="run directory (default runs/<space>-<method>-<data>-s<seed>-<time>)")
    s.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly")
    s.add_argument(TRUST_FLAG, action="store_true", help=f"with --resume: {TRUST_HELP}")
    s.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    s.add_argument("--no-progress", action="store_true",
                   help="no progress bar (the per-epoch lines, the stop and resume messages still print)")
    s.add_argument("--tensorboard", action="store_true",
                   help="write TensorBoard events to RUN_DIR/tb (run.tensorboard; needs "
                        "pip install \"pcdarts[tensorboard]\")")
    s.add_argument("--budget", type=int, metavar="EPOCHS",
                   help="run EPOCHS search epochs, scaling every epoch-based field of the preset (warm-up, "
                        "stage starts, shrink epochs, decay horizons) by EPOCHS/search.epochs")
    s.add_argument("--prune", metavar="PROXY[:FRACTION]",
                   help="zero-shot pruning before the search: remove FRACTION (default 0.5) of each edge's ops, "
                        "ranked by a zero-cost proxy, e.g. naswot:0.5 (search.prune; docs/methods.md, "
                        "\"Zero-shot pruning\")")
    s.add_argument("--nb201-lookup", action="store_true",
                   help="NB201 space: log the benchmark accuracy of each epoch's cell in history.jsonl")
    s.set_defaults(func=cmd_search, takes_overrides=True)

    d = sub.add_parser("derive", help="derive the genotype from a run's checkpoint")
    d.add_argument("run_dir")
    d.add_argument("--out", help="also write the genotype JSON here")
    d.add_argument(TRUST_FLAG, action="store_true", help=TRUST_HELP)
    d.set_defaults(func=cmd_derive)

    sh = sub.add_parser("show", help="print a genotype: ops per node and parameter count")
    sh.add_argument("genotype", help="genotype.json, run directory, genotype string or published name")
    sh.set_defaults(func=cmd_show)

    from pcdarts.cli import compare, tools, train, ws, zero_cost
    from pcdarts.nb201.cli import add_subcommand as add_nb201
    compare.add_subcommand(sub)
    train.add_subcommands(sub)
    tools.add_subcommands(sub)
    add_nb201(sub)
    zero_cost.add_subcommand(sub)
    ws.add_subcommand(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(os.environ.get("PCDARTS_DEBUG")) or "--debug" in argv  # anywhere on the line
    argv = [a for a in argv if a != "--debug"]
    try:
        parser = build_parser()
    except ImportError as e:  # a broken install: say which module, not a traceback
        if debug:
            raise
        print(f"error: pcdarts is not installed correctly: {e}; reinstall it with pip install -e .", file=sys.stderr)
        return 1
    if not argv:
        argv = ["search"]  # `pcdarts` alone runs the default search
    rest, overrides = split_overrides(argv)
    args = parser.parse_args(rest)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _one_line_warning
        rc = 1
        try:
            if getattr(args, "takes_overrides", False):
                rc = int(args.func(args, overrides))
            else:
                if overrides:
                    parser.error(f"unrecognised arguments: {' '.join(overrides)}")
                rc = int(args.func(args) or 0)
            return rc
        except USER_ERRORS as e:
            if debug:
                raise
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            say(f"error: {msg}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            say("interrupted", file=sys.stderr)
            return 130
        finally:
            if "torch.distributed" in sys.modules:  # torchrun: every rank ends together
                from pcdarts.distributed import leave_process_group
                leave_process_group(clean=rc == 0)


if __name__ == "__main__":
    raise SystemExit(main())
