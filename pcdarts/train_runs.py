"""Runs built on the Trainer: several training seeds of one cell, and evaluating a checkpoint.

``train_seeds`` writes ``OUT/seed-N/`` per seed plus ``OUT/summary.json``. Its ± is the
spread over *training seeds of one cell*; it says nothing about how much the search
itself varies (PC-DARTS#47, PEOPLE_ASK 9), and every summary carries that label.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union


from . import runs, utils
from .distributed import require_single_process, resolve_device
from .genotype import Genotype, load_genotype, parse_genotype, save_genotype
from .train_config import TrainConfig, TrainError, build_train_config
from .train_data import build_split_batches
from .train_model import build_model, evaluate

CHECKPOINT = runs.CHECKPOINT
FORMAT = runs.FORMATS["train"]
VARIANCE_LABEL = "training-seed variance of one cell, not search variance"
SEEDS_FILE = "seeds.json"
SUMMARY_FILE = "summary.json"
SUMMARY_METRICS = ("final_test_top1", "final_test_top5", "best_test_top1", "train_time_s")


@dataclass
class SeedsResult:
    """What :func:`train_seeds` returns: the summary, per-seed metrics and the output folder."""

    summary: dict[str, Any]
    run_dir: Path
    per_seed: dict[int, dict[str, Any]] = field(default_factory=dict)
    interrupted: bool = False


# ---------------------------------------------------------------- run directories

def new_run_dir(cfg: TrainConfig) -> runs.RunDir:
    """The run directory of a new training run (or ``--seeds`` folder): checked now, claimed
    when the run starts, after its data and network are built."""
    return runs.RunDir(Path(cfg.run.out) if cfg.run.out else default_out(cfg), overwrite=cfg.run.overwrite,
                       command="pcdarts train")


def default_out(cfg: TrainConfig) -> Path:
    return Path("runs") / f"train-{cfg.data.dataset}-s{cfg.run.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_resumable(run_dir: Union[str, Path], command: str = "pcdarts train --resume") -> Path:
    """A training run directory that can be resumed (one-line RunDirError otherwise)."""
    return runs.check_resumable(run_dir, "train", command, required=("config.yaml", "genotype.json", CHECKPOINT))


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; duplicates and non-integers raise TrainError."""
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s != ""]
    except ValueError:
        raise TrainError(f"--seeds {text!r}: give comma-separated integers, e.g. --seeds 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise TrainError(f"--seeds {text!r}: give distinct comma-separated integers, e.g. --seeds 0,1,2")
    return seeds


def _stat(values: list[float]) -> dict[str, Any]:
    # sample standard deviation (n - 1): the usual "mean ± std over N runs" of NAS papers
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def summarize(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample std over training seeds, with the label that says what the ± means."""
    out: dict[str, Any] = {"seeds": sorted(per_seed), "n_seeds": len(per_seed), "variance": VARIANCE_LABEL,
                           "std_kind": "sample standard deviation (n-1) over training seeds"}
    for key in SUMMARY_METRICS:
        values = [float(m[key]) for _, m in sorted(per_seed.items()) if m.get(key) is not None]
        if values:
            out[key] = _stat(values)
    first = next(iter(per_seed.values()), {})
    out.update({k: first.get(k) for k in ("genotype", "params_m", "macs_m", "dataset", "epochs")})
    out["label"] = summary_line(out)
    return out


def summary_line(summary: dict[str, Any]) -> str:
    """``test accuracy: 97.10 ± 0.08 % (mean ± std over 3 training seeds: training-seed variance ...)``."""
    top1 = summary.get("final_test_top1")
    n = summary.get("n_seeds", 0)
    if not top1:
        return f"test accuracy: not available ({n} training seeds, no test split)"
    return (f"test accuracy: {top1['mean']:.2f} ± {top1['std']:.2f} % (mean ± std over {n} training seeds: "
            f"{VARIANCE_LABEL})")


def train_seeds(genotype: Union[Genotype, str], config: Union[TrainConfig, dict[str, Any]],
                seeds: Sequence[int], *, stop_after_steps: Optional[int] = None) -> SeedsResult:
    """Train one cell once per seed into ``OUT/seed-N/`` and summarise into ``OUT/summary.json``.

    Args:
        genotype: the cell (Genotype or anything :func:`load_genotype` reads).
        config: the training config; ``run.out`` is the parent folder (``run.seed`` is ignored).
        seeds: training seeds.
        stop_after_steps: passed to each seed's run (tests).
    """
    require_single_process("train")
    g = genotype if not isinstance(genotype, str) else load_genotype(genotype)
    cfg = config if isinstance(config, TrainConfig) else build_train_config(config)
    run = new_run_dir(cfg)
    out = run.open()
    failed = True
    try:
        utils.write_json(out / SEEDS_FILE, {"seeds": list(seeds), "genotype": str(g), "config": cfg.to_dict()})
        save_genotype(g, out / "genotype.json")
        result = _run_seeds(g, cfg, out, list(seeds), stop_after_steps)
        failed = False
        return result
    finally:
        run.finish(failed)


def resume_seeds(out: Union[str, Path], stop_after_steps: Optional[int] = None, **run: Any) -> SeedsResult:
    """Continue a :func:`train_seeds` folder: finished seeds are kept, the others resumed or started."""
    p = Path(out)
    try:
        plan = json.loads((p / SEEDS_FILE).read_text())
        cfg = build_train_config(plan["config"])
        g = parse_genotype(plan["genotype"])
    except (OSError, ValueError, KeyError) as e:
        raise TrainError(f"--resume {p}: cannot read {p / SEEDS_FILE} ({e})") from None
    if run:
        cfg = cfg.replace(run=run)
    return _run_seeds(g, cfg, p, [int(s) for s in plan["seeds"]], stop_after_steps)


def _run_seeds(g: Genotype, cfg: TrainConfig, out: Path, seeds: list[int],
               stop_after_steps: Optional[int]) -> SeedsResult:
    from .train import train  # late: pcdarts.train imports this module
    per_seed: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        sub = out / f"seed-{seed}"
        if (sub / "metrics.json").is_file():
            per_seed[seed] = json.loads((sub / "metrics.json").read_text())
            continue
        if (sub / CHECKPOINT).is_file():
            result = train(resume=sub, stop_after_steps=stop_after_steps, device=cfg.run.device,
                           progress=cfg.run.progress)
        else:
            seed_cfg = cfg.replace(run={"seed": seed, "out": str(sub), "overwrite": True})
            if cfg.run.progress:
                print(f"training seed {seed} -> {sub}", flush=True)
            result = train(g, seed_cfg, stop_after_steps=stop_after_steps)
        if result.interrupted:
            return SeedsResult({}, out, per_seed, interrupted=True)
        per_seed[seed] = result.metrics
    summary = summarize(per_seed)
    utils.write_json(out / SUMMARY_FILE, summary)
    return SeedsResult(summary, out, per_seed)


def evaluate_checkpoint(path: Union[str, Path], data: Optional[str] = None, *, split: str = "test",
                        batch_size: Optional[int] = None, device: str = "auto") -> dict[str, Any]:
    """Load a trained network (run directory or ``checkpoint.pt``) and evaluate it on one split.

    Args:
        path: a training run directory or its checkpoint file.
        data: dataset spec (``cifar10:PATH``, ``folder:DIR``, ``digits``); None = the run's own data.
        split: ``test`` or ``train`` (un-augmented).
        batch_size: evaluation batch; None = the run's evaluation batch.
        device: ``auto``, ``cpu``, ``cuda``...

    Returns:
        ``{"split", "images", "loss", "top1", "top5"}`` (top-5 None below 5 classes).
    """
    p = Path(path)
    if p.is_dir():
        runs.check_resumable(p, "train", "pcdarts eval", required=(CHECKPOINT,))
    file = p / CHECKPOINT if p.is_dir() else p
    if not file.is_file():
        raise TrainError(f"pcdarts eval {p}: no training checkpoint here (expected a run directory holding "
                         f"{CHECKPOINT} or the checkpoint file itself)")
    ck = runs.load_checkpoint(file, "train", "pcdarts eval")
    cfg = build_train_config(ck["config"])
    g = parse_genotype(ck["genotype"])
    shape = ck["network"]
    d = cfg.data
    if data is not None:
        name, sep, rest = data.partition(":")
        d = dataclasses.replace(d, dataset=name, path=rest if sep else None, test_path=None, max_samples=None,
                                max_test_samples=None, mean=None, std=None)
    # the network fixes the input shape; the data follows it (resized / converted if needed)
    d = dataclasses.replace(d, input_size=shape["input_size"], channels=shape["in_channels"], num_classes=None)
    saved = ck.get("data_info") or {}
    if d.mean is None and saved.get("mean") and len(saved["mean"]) == shape["in_channels"]:
        d = dataclasses.replace(d, mean=tuple(saved["mean"]), std=tuple(saved["std"]))  # training normalisation
    dev = resolve_device(device)
    batches, n, num_classes = build_split_batches(d, split, batch_size=batch_size or d.eval_batch_size or 256,
                                                  device=dev)
    if num_classes > shape["num_classes"]:
        raise TrainError(f"{d.spec} has {num_classes} classes but the network was trained for "
                         f"{shape['num_classes']}; evaluate on data with the training classes")
    net = build_model(g, cfg, num_classes=shape["num_classes"], in_channels=shape["in_channels"])
    net.load_state_dict(ck["model"])
    net.to(dev)
    res = evaluate(net, batches, dev, cfg.train.amp)
    return {"split": split, "images": n, "loss": res["test_loss"], "top1": res["test_top1"],
            "top5": res["test_top5"], "dataset": d.spec, "epoch": int(ck["epoch"])}
