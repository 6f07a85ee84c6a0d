"""``pcdarts train`` and ``pcdarts eval``: presets + options + dotted overrides -> library calls.

No training logic lives here. :func:`add_subcommands` is what ``pcdarts.cli`` calls
(through ``pcdarts.train.add_subcommands``); user errors are raised as
:class:`~pcdarts.errors.PcdartsError` (a bad config value: ``ConfigError``, from the one config
machinery), which the CLI's one error path prints as one line (exit code 2).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from pcdarts.runs import TRUST_FLAG, TRUST_HELP
from pcdarts.train.config import (DEFAULT_PRESET, TrainError, apply_override, build_train_config, load_train_preset,
                           parse_overrides, train_preset_names)


def train_config_dict(args: argparse.Namespace, overrides: Sequence[str]) -> dict[str, Any]:
    """Preset -> shortcut options -> dotted overrides, as one nested dict."""
    d = load_train_preset(args.preset or DEFAULT_PRESET)
    if args.data:
        name, sep, path = args.data.partition(":")
        data = d.setdefault("data", {})
        if data.get("dataset") != name:
            # another dataset: the preset's dataset-specific knobs (sizes, statistics) do not apply
            for key in ("input_size", "channels", "num_classes", "mean", "std", "crop_padding", "flip"):
                data.pop(key, None)
        data["dataset"], data["path"] = name, (path if sep else None)
    run = d.setdefault("run", {})
    for key in ("seed", "out", "device"):
        if getattr(args, key, None) is not None:
            run[key] = getattr(args, key)
    if args.overwrite:
        run["overwrite"] = True
    if args.no_progress:
        run["progress"] = False
    if args.tensorboard:
        run["tensorboard"] = True
    for dotted, value in parse_overrides(overrides):
        apply_override(d, dotted, value)
    return d


def cmd_train(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    """Handler of ``pcdarts train``; returns the exit code (130 when stopped by Ctrl-C, 143 by SIGTERM)."""
    from pcdarts.runs import test_stop_after_steps
    from pcdarts.train.trainer import train
    from pcdarts.train.seeds import SEEDS_FILE, parse_seeds, resume_seeds, summary_line, train_seeds
    if args.resume:
        if overrides or args.preset or args.data or args.seeds or args.genotype:
            raise TrainError("--resume continues a run with its saved config.yaml and genotype; "
                             "drop the genotype, --preset, --data, --seeds and overrides")
        run: dict[str, Any] = {}
        if args.device:
            run["device"] = args.device
        if args.no_progress:
            run["progress"] = False
        if (Path(args.resume) / SEEDS_FILE).is_file():
            res = resume_seeds(args.resume, trust_checkpoint=args.trust_checkpoint, **run)
            return _report_seeds(res, summary_line)
        result = train(resume=args.resume, stop_after_steps=test_stop_after_steps(),
                       trust_checkpoint=args.trust_checkpoint, **run)
        return _report(result)
    if args.trust_checkpoint:
        raise TrainError(f"{TRUST_FLAG} only applies to --resume RUN_DIR (a new run reads no checkpoint); drop it")
    if not args.genotype:
        raise TrainError("pcdarts train needs a genotype: a published name (e.g. DARTS_V2), a genotype.json, "
                         "a search run directory or a genotype string")
    if args.seeds and args.seed is not None:
        raise TrainError("give either --seed N (one run) or --seeds 0,1,2 (one run per seed), not both")
    cfg = build_train_config(train_config_dict(args, overrides))
    if args.seeds:
        return _report_seeds(train_seeds(args.genotype, cfg, parse_seeds(args.seeds)), summary_line)
    return _report(train(args.genotype, cfg, stop_after_steps=test_stop_after_steps()))


def _report(result: Any) -> int:
    from pcdarts.distributed import dist_info
    from pcdarts.runs import stop_exit_code
    if result.interrupted:
        return stop_exit_code(result.stop_signal)  # SIGINT 130, SIGTERM 143
    if not dist_info().is_main:  # under torchrun one summary, from rank 0
        return 0
    m = result.metrics
    print(f"run directory: {result.run_dir}")
    top5 = f", top-5 {m['final_test_top5']:.2f}%" if m.get("final_test_top5") is not None else ""
    if m.get("final_test_top1") is not None:
        print(f"final test accuracy: top-1 {m['final_test_top1']:.2f}%{top5} "
              f"(best top-1 {m['best_test_top1']:.2f}% at epoch {m['best_epoch'] + 1})")
    print(f"parameters: {m['params_m']:.3f} M (auxiliary head excluded); multiply-adds: {m['macs_m']:.1f} M; "
          f"training time: {m['train_time_s']:.1f} s")
    return 0


def _report_seeds(res: Any, line: Any) -> int:
    from pcdarts.runs import stop_exit_code
    if res.interrupted:
        return stop_exit_code(res.stop_signal)  # SIGINT 130, SIGTERM 143
    for seed, m in sorted(res.per_seed.items()):
        if m.get("final_test_top1") is not None:
            print(f"seed {seed}: final test top-1 {m['final_test_top1']:.2f}%")
    print(f"summary: {res.run_dir / 'summary.json'}")
    print(line(res.summary))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Handler of ``pcdarts eval``: print loss, top-1 and top-5 of a trained network."""
    from pcdarts.train.evaluate import evaluate_checkpoint
    r = evaluate_checkpoint(args.run, args.data, split=args.split, batch_size=args.batch_size,
                            device=args.device or "auto", trust_checkpoint=args.trust_checkpoint)
    top5 = f"  top-5 {r['top5']:.2f}%" if r["top5"] is not None else ""
    print(f"{r['dataset']} {r['split']} split, {r['images']} images (network after epoch {r['epoch']}):")
    print(f"loss {r['loss']:.4f}  top-1 {r['top1']:.2f}%{top5}")
    return 0


def add_subcommands(subparsers: Any) -> None:
    """Register ``train`` (dotted overrides allowed) and ``eval`` on the CLI's subparsers."""
    presets = ", ".join(train_preset_names())
    t = subparsers.add_parser(
        "train", help="train a searched cell from scratch (default preset: short, on digits)",
        description="Train a genotype from scratch and evaluate it on the test split. Any config field can be "
                    "overridden with --SECTION.KEY VALUE (sections data, model, train, run), e.g. "
                    "--train.epochs 100 --model.C 16 --train.grad_accum 2. Custom data is one block: "
                    "--data folder:/my/images --data.input_size 64 --data.channels 1. "
                    f"Presets: {presets}.")
    t.add_argument("genotype", nargs="?", metavar="GENOTYPE_OR_NAME",
                   help="published name (DARTS_V2, PC_DARTS_cifar, ...), genotype.json, search run directory, "
                        "or genotype string")
    t.add_argument("--preset", help=f"{presets}, or a YAML file (default: {DEFAULT_PRESET})")
    t.add_argument("--data", help="digits, cifar10:PATH, cifar100:PATH or folder:DIR")
    t.add_argument("--seed", type=int, help="training seed (run.seed)")
    t.add_argument("--seeds", help="comma-separated seeds: one run per seed in OUT/seed-N plus OUT/summary.json")
    t.add_argument("--out", help="run directory (default runs/train-<data>-s<seed>-<time>)")
    t.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (or --seeds folder) exactly")
    t.add_argument(TRUST_FLAG, action="store_true", help=f"with --resume: {TRUST_HELP}")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar (the per-epoch lines, the stop and resume messages still print)")
    t.add_argument("--tensorboard", action="store_true",
                   help="write TensorBoard events to RUN_DIR/tb (run.tensorboard; needs "
                        "pip install \"pcdarts[tensorboard]\")")
    t.set_defaults(func=cmd_train, takes_overrides=True)

    e = subparsers.add_parser("eval", help="evaluate a trained network (run directory or checkpoint.pt)",
                              description="Print loss, top-1 and top-5 accuracy of a network trained by "
                                          "pcdarts train on one split of a dataset.")
    e.add_argument("run", metavar="CHECKPOINT_OR_RUN_DIR")
    e.add_argument("--data", help="dataset spec (default: the run's own data), e.g. cifar10:PATH or folder:DIR")
    e.add_argument("--split", default="test", choices=("test", "train"))
    e.add_argument("--batch-size", type=int, help="evaluation batch size")
    e.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    e.add_argument(TRUST_FLAG, action="store_true", help=TRUST_HELP)
    e.set_defaults(func=cmd_eval)
