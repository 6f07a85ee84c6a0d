"""``pcdarts zero-cost``: zero-cost proxies of NAS-Bench-201 cells against the benchmark.

What each proxy computes, and where it follows or differs from the official code: docs/methods.md,
"Zero-cost proxies"."""
from __future__ import annotations

import argparse
from typing import Any

from pcdarts.analysis.zero_cost import DEFAULT_ENSEMBLE
from pcdarts.errors import ConfigError


def _cmd(args: argparse.Namespace) -> int:
    import torch

    from pcdarts.analysis.zero_cost import (ENSEMBLE, NUM_CELLS, default_proxies, format_table, known_proxy,
                                            proxy_names, run_zero_cost)
    from pcdarts.distributed import resolve_device
    from pcdarts.nb201 import DATASETS
    from pcdarts.registry import PROXIES

    from pcdarts.spaces import SPACES, get_space
    if args.space not in SPACES or get_space(args.space).benchmark is None:
        # the proxies are scored against a benchmark's accuracies of every cell of the space
        with_one = [n for n in SPACES.names() if get_space(n).benchmark is not None]
        raise ConfigError(f"pcdarts zero-cost scores the cells of a space with a benchmark (--space "
                          f"{' or --space '.join(with_one)}), got {args.space!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    proxies = [p.strip() for p in args.proxies.split(",") if p.strip()] if args.proxies else default_proxies()
    members = [p.strip() for p in args.ensemble_of.split(",") if p.strip()] if args.ensemble_of else list(
        DEFAULT_ENSEMBLE)
    for p in proxies + ([args.search] if args.search else []):
        if not known_proxy(p):
            raise ConfigError(f"unknown proxy {p!r}; choose from: {', '.join(proxy_names())}")
    for p in members:
        if p not in PROXIES:
            raise ConfigError(f"--ensemble-of: unknown proxy {p!r} (the ensemble's members are single proxies); "
                              f"choose from: {', '.join(PROXIES.names())}")
    for name, v in (("--C", args.C), ("--N", args.N), ("--batch-size", args.batch_size)):
        if v < 1:
            raise ConfigError(f"{name} must be >= 1, got {v}")
    asked = proxies + ([args.search] if args.search else [])
    single = [p for p in asked if p != ENSEMBLE] + (members if ENSEMBLE in asked else [])

    def need_of(q: str) -> int:  # the ensemble needs what its members need
        return max(need_of(m) for m in members) if q == ENSEMBLE else getattr(PROXIES.get(q), "min_images", 1)

    for p in dict.fromkeys(single):
        need = need_of(p)
        if args.batch_size < need:
            others = [q for q in proxies if need_of(q) <= args.batch_size]
            raise ConfigError(f"--batch-size {args.batch_size}: the {p} proxy needs at least {need} images; "
                              f"use --batch-size {need} or more, or leave {p} out (e.g. --proxies "
                              f"{','.join(others) or 'naswot'})")
    if not args.all and not 1 <= args.sample <= NUM_CELLS:
        raise ConfigError(f"--sample must be between 1 and {NUM_CELLS}, got {args.sample} (or use --all)")
    data_name = args.data.partition(":")[0].strip().lower()
    dataset = args.benchmark or (data_name if data_name in DATASETS else "cifar10")
    if dataset not in DATASETS:
        raise ConfigError(f"--benchmark must be one of {', '.join(DATASETS)}, got {dataset!r}")
    n = NUM_CELLS if args.all else args.sample
    print(f"scoring {n} NB201 cells (NB201 network C={args.C}, N={args.N}; {args.batch_size} images of "
          f"{args.data}; seed {args.seed}) with: {', '.join(proxies)}", flush=True)
    res = run_zero_cost(args.data, sample=None if args.all else args.sample, proxies=proxies, C=args.C, N=args.N,
                        batch_size=args.batch_size, seed=args.seed, dataset=dataset, out=args.out,
                        cache_dir=args.cache_dir, use_cache=not args.no_cache, search=args.search,
                        device=resolve_device(args.device), progress=not args.no_progress,
                        ensemble_of=members if ENSEMBLE in proxies or args.search == ENSEMBLE else None)
    where = res.settings.get("cache")
    print(f"{len(res.rows)} cells in {res.seconds:.1f} s ({res.cache_hits} scores from the cache"
          f"{f' {where}' if where else ''})")
    if res.lookup_error:
        print(f"no NAS-Bench-201 lookup ({res.lookup_error}): scores only, no correlations")
    elif res.correlations:
        print(format_table(res.correlations, dataset))
    if res.best is not None:
        b = res.best
        line = f"training-free search ({b['proxy']}): best of {len(res.rows)} cells {b['arch']}"
        if b.get("valid_acc") is not None:
            line += (f"  NB201 {dataset} valid {b['valid_acc']:.2f}% (rank {b['rank_in_sample']} of {len(res.rows)}; "
                     f"best in the sample {b['best_in_sample']:.2f}%)")
        print(line)
    for f in res.files:
        print(f"written: {f}")
    return 0


def add_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``pcdarts zero-cost``; the handler is stored as ``func``."""
    p = subparsers.add_parser(
        "zero-cost", help="rank NAS-Bench-201 cells with zero-cost proxies (NASWOT, synflow, ...) without training",
        description="Score sampled (or all) NAS-Bench-201 cells at initialisation with zero-cost proxies "
                    "(naswot, synflow, snip, grad_norm, jacob_cov, meco, zico, the rank ensemble of several, and the "
                    "params / macs baselines) on one batch of "
                    "images, print each proxy's Kendall tau and Spearman rho against the benchmark's validation "
                    "accuracy (needs the NB201 lookup: pip install \"pcdarts[nb201]\"), and with --out write "
                    "scores.csv, correlations.json and scatter.png. Scores are cached per (cell, proxy, seed, "
                    "data, network size): a re-run is instant. What each proxy computes: docs/methods.md, "
                    "\"Zero-cost proxies\".")
    p.add_argument("--space", default="nb201", help="search space whose cells are scored (nb201)")
    p.add_argument("--sample", type=int, default=200, help="score this many cells drawn at random (default 200)")
    p.add_argument("--all", action="store_true", help="score all 15,625 cells")
    p.add_argument("--data", default="digits",
                   help="images the proxies see, e.g. cifar10:PATH (default digits: offline, but NB201 is CIFAR)")
    p.add_argument("--benchmark", default=None,
                   help="NB201 dataset to correlate with: cifar10, cifar100, imagenet16-120 (default: the data's "
                        "name when it is one of them, else cifar10)")
    p.add_argument("--proxies", default=None,
                   help="comma-separated proxies (default: all registered, and 'ensemble', the mean rank of the "
                        "--ensemble-of proxies over the scored cells)")
    p.add_argument("--ensemble-of", default=None, metavar="P1,P2,...",
                   help=f"members of the 'ensemble' proxy (default {','.join(DEFAULT_ENSEMBLE)})")
    p.add_argument("--batch-size", type=int, default=64, help="images in the one batch (default 64; NASWOT used 128)")
    p.add_argument("--C", type=int, default=16, help="NB201 network channels (default 16, the benchmark's)")
    p.add_argument("--N", type=int, default=5, help="cells per stage (default 5, the benchmark's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample, the batch and the initial weights")
    p.add_argument("--search", nargs="?", const="naswot", default=None, metavar="PROXY",
                   help="also report the best-scored cell by PROXY (default naswot): a training-free search")
    p.add_argument("--out", default=None, help="write scores.csv, correlations.json, scatter.png (and the cache) here")
    p.add_argument("--cache-dir", default=None, help="cache folder (default: --out, else ~/.cache/pcdarts/zero-cost)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached scores")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd)
    return p


__all__ = ["add_subcommand"]
