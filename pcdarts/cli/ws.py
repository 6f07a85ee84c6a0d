"""``pcdarts ws-analysis``: argparse front of :mod:`pcdarts.analysis.ws` (docs/methods.md, "Weight-sharing analysis").

Two modes: the weight-sharing analysis (single-path supernet training on the tiny space
or an NB201 sample, every child evaluated with shared weights every epoch), and
``--edge-check RUN_DIR``, the IS-DARTS paper's §3.2 check on a finished DARTS-family search.
The search run is loaded here, by the one assembly (:func:`pcdarts.search.build.load_run`),
because the analysis package does not import search code.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Optional

import torch

from pcdarts.errors import ConfigError
from pcdarts.runs import TRUST_FLAG, TRUST_HELP


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--{what} must be whole numbers separated by commas, e.g. --{what} 0,1; "
                          f"got {text!r}") from None


def _prefixes(text: str) -> tuple[Optional[int], ...]:
    out: list[Optional[int]] = []
    for x in (t.strip() for t in text.split(",")):
        if x == "all":
            out.append(None)
        elif x:
            try:
                out.append(int(x))
            except ValueError:
                raise ConfigError(f"--prefix takes depths and 'all' separated by commas, e.g. --prefix all,2,0; "
                                  f"got {text!r}") from None
    return tuple(out)


# the command line's epochs per run: about a CPU-minute each on the bundled digits (tiny space,
# one thread); WSConfig keeps the paper's 200 for the Python API
CLI_EPOCHS = 10


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~pcdarts.analysis.ws.WSConfig` of a command line (unset options keep the defaults;
    the flat option names go to their sections by :meth:`~pcdarts.analysis.ws.WSConfig.from_flat`)."""
    from pcdarts.analysis.ws import WSConfig
    picks: dict[str, Any] = {}
    for name in ("space", "sample", "C", "layers", "epochs", "order", "epoch_unit", "bn", "recal_batches",
                 "bn_momentum", "partition", "data", "validation", "train_portion", "max_samples", "val_samples",
                 "batch_size", "eval_batch_size", "lr", "lr_min", "weight_decay", "standalone_epochs", "gt_dataset",
                 "ground_truth", "interference", "impl", "device", "sample_seed"):
        v = getattr(args, name, None)
        if v is not None:
            picks[name] = v
    if args.seeds is not None:
        picks["seeds"] = _ints(args.seeds, "seeds")
    if args.groups is not None:
        picks["groups"] = _ints(args.groups, "groups")
    if args.prefix is not None:
        picks["prefix"] = _prefixes(args.prefix)
    if args.stale_momentum:
        picks["stale_momentum"] = True
    return WSConfig.from_flat(**picks)


def cmd_ws(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.edge_check:
        return cmd_edge_check(args)
    from pcdarts.analysis.ws import run_ws_analysis
    cfg = config_from_args(args)
    stamp = time.strftime('%Y%m%d-%H%M%S')
    out = Path(args.out or f"runs/ws-{cfg.space.name}-{cfg.data.dataset.split(':')[0]}-{stamp}")
    report = run_ws_analysis(cfg, out, progress=not args.no_progress)
    print(f"ground truth: {report['ground_truth']['source']}")
    for s in report["settings"]:
        rs = [r for r in report["runs"] if r["label"] == s["setting"]]
        for r in rs:
            taus = [e.get("kendall") for e in r["epochs"]]
            if taus[0] is not None:
                print(f"{s['setting']} seed {r['seed']}: Kendall tau first epoch {taus[0]:+.3f}, "
                      f"last epoch {taus[-1]:+.3f}")
        sel = s["across_seeds"]
        line = f"{s['setting']}: selected {', '.join(sel['selected'])}"
        if "selected_gt" in sel:
            line += (f" (ground truth {sel['selected_gt']['mean']:.2f} of best "
                     f"{sel['selected_gt']['best_possible']:.2f})")
        print(line)
    gt_csv = ", ground_truth.csv" if report["ground_truth"]["accuracy"] is not None else ""
    print(f"report: {out / 'report.json'} (+ children.csv, accuracy.csv, epochs.csv, sweep.csv{gt_csv}, "
          f"manifest.json); plots: "
          f"{out / 'tau_vs_epoch.png'}, {out / 'rank_heatmap.png'}, {out / 'top1_histogram.png'}")
    return 0


# ---------------------------------------------------------------------------- the IS-DARTS edge check


def load_search_run(run_dir: str | Path, device: torch.device, trust_checkpoint: bool = False) -> dict[str, Any]:
    """Supernet (with the run's weights and masks), method mixing and scores, config of a search
    run, loaded by the one assembly (:func:`pcdarts.search.build.load_run`: the method prepares
    the supernet, e.g. MSR-DARTS's spectral norms, before the checkpoint is loaded);
    ``trust_checkpoint``: unpickle its checkpoint in full when it needs that (``--trust-checkpoint``)."""
    from pcdarts.search.build import load_run
    command = "pcdarts ws-analysis --edge-check"
    run = load_run(run_dir, device=device, command=command, trust_checkpoint=trust_checkpoint)
    cfg, space, supernet, method = run.cfg, run.parts.space, run.parts.supernet, run.parts.method
    try:
        with torch.no_grad():
            mixing, scores = method.mixing(), method.scores()
    except (TypeError, AttributeError, NotImplementedError) as e:
        raise ConfigError(f"{command}: method {cfg.method_name!r} cannot give its mixing and op scores without "
                          f"a running search ({e}); the check needs a method with architecture weights "
                          "(darts, pc-darts, drnas, darts-minus)") from None
    return {"cfg": cfg, "supernet": supernet, "mixing": mixing, "scores": scores, "space": space,
            "masks": run.checkpoint.get("masks") or None}


def cmd_edge_check(args: argparse.Namespace) -> int:
    from pcdarts.analysis.ws import WSConfig, build_data, edge_check
    from pcdarts.distributed import resolve_device
    from pcdarts.utils import progress_bar, write_json
    device = resolve_device(args.device or "cpu")
    run = load_search_run(args.edge_check, device, trust_checkpoint=args.trust_checkpoint)
    cfg = run["cfg"]
    wcfg = WSConfig.from_flat(data=args.data or cfg.data.spec, validation=args.validation or "test",
                              val_samples=args.val_samples, batch_size=args.batch_size or 64,
                              eval_batch_size=args.eval_batch_size or 256, recal_batches=args.recal_batches or 4,
                              bn=args.bn or "recalibrate")
    data = build_data(wcfg, device)
    live = [o for o, name in enumerate(run["space"].primitives) if name != "none"]
    n = sum(int((run["masks"][ct] if run["masks"] else torch.ones_like(s, dtype=torch.bool))[:, live].sum())
            for ct, s in run["scores"].items())
    bar = progress_bar(not args.no_progress, n, "edge check")
    result = edge_check(run["supernet"], run["mixing"], run["scores"], run["space"].primitives, run["masks"],
                        data.val_batches, wcfg.eval.bn, data.recal_batches, bar)
    if bar is not None:
        bar.close()
    result.update(run_dir=str(args.edge_check), method=cfg.method_name, space=cfg.space.name, data=data.info)
    out = Path(args.out or f"runs/ws-edge-check-{Path(args.edge_check).resolve().name}")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "edge_check.json", result)
    with open(out / "edge_check.csv", "w") as f:
        f.write("cell_type,edge,op,score,accuracy_after_discretising\n")
        for e in result["edges"]:
            for op, s, a in zip(e["ops"], e["scores"], e["accuracy_after_discretising"]):
                f.write(f"{e['cell_type']},{e['edge']},{op},{s:.6g},{a:.4f}\n")
    print(f"supernet accuracy {result['supernet_accuracy']:.2f} % ({wcfg.eval.bn} BN, {data.info['n_val']} images)")
    for e in result["edges"]:
        print(f"{e['cell_type']} edge {e['edge']:2d}: tau {e['kendall']:+.2f}  best by score {e['best_by_score']:<14} "
              f"best by accuracy {e['best_by_accuracy']}")
    print(f"mean Kendall tau over edges {result['mean_kendall']:+.3f}; best op agrees on "
          f"{100 * result['best_op_agreement']:.0f} % of edges; written to {out / 'edge_check.json'}")
    return 0


def add_subcommand(sub: Any) -> None:
    from pcdarts.analysis.ws import BN_POLICIES, ORDERS
    w = sub.add_parser(
        "ws-analysis", help="how far a weight-sharing supernet's ranking can be trusted (docs/methods.md, "
                            "\"Weight-sharing analysis\")",
        description="Train a supernet single-path (one child per step) on the tiny 64-child space or a sample "
                    "of NAS-Bench-201 cells, evaluate every child with the shared weights every epoch, and "
                    "report Kendall tau / Spearman rho / top-k overlap against the ground truth (NB201 lookup, "
                    "--ground-truth CSV or --standalone-epochs), rank stability within a run and across seeds, "
                    "the recency (interference) correlation and the degree-of-sharing sweep (--groups, "
                    "--prefix). Writes report.json, CSVs and plots into --out. With --edge-check RUN_DIR: the "
                    "IS-DARTS check of a finished DARTS-family search instead. The paper's protocol and what "
                    "differs from its code: docs/methods.md, \"Weight-sharing analysis\".")
    w.add_argument("--space", choices=("tiny", "nb201"), help="analysed space (default tiny)")
    w.add_argument("--sample", type=int, help="NB201 children sampled (default 50; 0 = all 15,625)")
    w.add_argument("--sample-seed", type=int, help="seed of the NB201 sample and the group partition (default 0)")
    w.add_argument("--epochs", type=int, default=CLI_EPOCHS,
                   help=f"training epochs per run (default {CLI_EPOCHS}: minutes on a CPU; the paper's setting: "
                        "--epochs 200 --data cifar10:PATH, also 2000)")
    w.add_argument("--seeds", help="comma-separated run seeds (default 0)")
    w.add_argument("--order", choices=ORDERS, help="child order (default round-robin)")
    w.add_argument("--epoch-unit", choices=("data", "children"),
                   help="an epoch is one pass over the training data (default) or one cycle over the children")
    w.add_argument("--bn", choices=BN_POLICIES, help="BN at evaluation (default recalibrate)")
    w.add_argument("--recal-batches", type=int, help="training batches that re-estimate BN stats (default 4)")
    w.add_argument("--bn-momentum", type=float, help="BN momentum in training (default 0.4, the official code's)")
    w.add_argument("--groups", help="sharing sweep: comma-separated group counts G (default 1)")
    w.add_argument("--partition", choices=("random", "sequential"), help="how children form groups (default random)")
    w.add_argument("--prefix", help="sharing sweep: comma-separated shared prefix depths k or 'all' (default all)")
    w.add_argument("--data", help="dataset spec: digits (default), synthetic:8x3x256, cifar10:PATH, ...")
    w.add_argument("--validation", choices=("test", "split"),
                   help="evaluate on the test split (default, as the official code) or a held-out train split")
    w.add_argument("--train-portion", type=float, help="training share under --validation split (default 0.5)")
    w.add_argument("--max-samples", type=int, help="use only this many training images")
    w.add_argument("--val-samples", type=int, help="evaluate on only this many validation images")
    w.add_argument("--batch-size", type=int, help="training batch (default 256)")
    w.add_argument("--eval-batch-size", type=int, help="evaluation batch (default 256)")
    w.add_argument("--C", type=int, help="channels (default 16)")
    w.add_argument("--layers", type=int, help="NB201 cells per stage (default 5)")
    w.add_argument("--lr", type=float, help="SGD learning rate (default 0.025, cosine to --lr-min 0.001)")
    w.add_argument("--lr-min", type=float)
    w.add_argument("--weight-decay", type=float, help="default 1e-3")
    w.add_argument("--stale-momentum", action="store_true",
                   help="let momentum/decay move inactive ops, like the official code under PyTorch < 1.7")
    w.add_argument("--standalone-epochs", type=int, help="train every child alone for N epochs as ground truth")
    w.add_argument("--ground-truth", metavar="CSV", help="stand-alone accuracies, CSV with columns arch,accuracy")
    w.add_argument("--gt-dataset", help="NB201 lookup dataset (default: the data's, else cifar10)")
    w.add_argument("--interference", type=int, help="children whose one-step interference row is measured")
    w.add_argument("--impl", choices=("auto", "fast", "reference"), help="supernet path (default auto)")
    w.add_argument("--device", help="auto, cpu (default), cuda, cuda:N")
    w.add_argument("--threads", type=int, help="torch CPU threads")
    w.add_argument("--out", help="output folder (default runs/ws-<space>-<data>-<time>)")
    w.add_argument("--no-progress", action="store_true", help="no progress bar")
    w.add_argument("--edge-check", metavar="RUN_DIR",
                   help="the IS-DARTS paper's §3.2 check: per edge, the search's op scores vs the supernet "
                        "accuracy after discretising that edge (uses --data, --bn, --val-samples, --out)")
    w.add_argument(TRUST_FLAG, action="store_true", help=f"with --edge-check: {TRUST_HELP}")
    w.set_defaults(func=cmd_ws)


__all__ = ["add_subcommand", "config_from_args", "load_search_run"]
