"""``pcdarts query`` and ``python -m pcdarts.nb201 {query|convert}``."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any

from pcdarts.errors import report_user_errors
from pcdarts.nb201.arch import canonical_arch
from pcdarts.nb201.lookup import NB201Table, get_table
from pcdarts.nb201.official import build_table_from_official
from pcdarts.nb201.package import _INSTALL_HINT, _PACKAGE
from pcdarts.nb201.tables import DATASETS
from pcdarts.utils import STD_LABEL

# --------------------------------------------------------------------------- CLI


def _fmt(mean: float | None, std: float | None) -> str:
    return "n/a" if mean is None else f"{mean:6.2f}" + ("" if std is None else f" ± {std:.2f}")


def _cmd_query(args: argparse.Namespace) -> int:
    """Handler of ``pcdarts query``; returns the process exit code."""
    table = get_table(args.table)  # bad input or a missing source: one error line, exit 2 (the entry point's)
    # "all": every dataset the table has (the package data has all three)
    datasets = table.datasets if args.dataset == "all" else (args.dataset,)
    results = [table.query(args.arch, ds, hp=args.hp, canonical=args.canonical) for ds in datasets]
    canon = canonical_arch(args.arch)
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
    print(f"mean ± {STD_LABEL} over runs (seeds)")
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
        description="Print NAS-Bench-201 validation (and, with --table, test) accuracy, mean ± sample std over seeds, "
                    f"of an NB201 cell. Default source: the {_PACKAGE} package ({_INSTALL_HINT}).")
    p.add_argument("arch", metavar="ARCH_STRING|GENOTYPE_FILE",
                   help="NB201 arch string |op~0|+|op~0|op~1|+|op~0|op~1|op~2|, a genotype.json, or a run directory")
    p.add_argument("--dataset", default="cifar10", choices=[*DATASETS, "all"], help="dataset (default cifar10)")
    p.add_argument("--table", default=None, metavar="PATH",
                   help="compact table (.npz/.json/.jsonl) converted from the official files with "
                        "python -m pcdarts.nb201 convert SRC TABLE; adds test accuracy")
    p.add_argument("--hp", default="200", help="training schedule of the table (default 200 epochs)")
    p.add_argument("--canonical", action="store_true",
                   help="answer from the isomorphism-class representative (isomorphic cells give equal numbers)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cmd_query)


def _main(argv: Iterable[str] | None = None) -> int:
    """``python -m pcdarts.nb201 {query|convert} ...``."""
    parser = argparse.ArgumentParser(prog="python -m pcdarts.nb201")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommand(sub)
    conv = sub.add_parser("convert", help="build a compact table from official NAS-Bench-201 / NATS-Bench files")
    conv.add_argument("src", help="NATS-tss-v1_0-3ffb9-simple/, NAS-Bench-201-v1_1-096897.pth, ...")
    conv.add_argument("dst", help="output table (.npz recommended)")
    conv.add_argument("--hp", default="200")
    conv.add_argument("--trusted", action="store_true", help="unpickle without the plain-data allow-list")

    def _convert(a: argparse.Namespace) -> int:
        out = build_table_from_official(a.src, a.dst, hp=a.hp, trusted=a.trusted,
                                        progress=lambda n: print(f"{n} architectures", file=sys.stderr))
        print(f"wrote {out} ({len(NB201Table(out))} cells)")
        return 0

    conv.set_defaults(func=_convert)
    args = parser.parse_args(None if argv is None else list(argv))
    return report_user_errors(lambda: args.func(args))
