"""Runs built on the Trainer: several training seeds of one cell, and evaluating a checkpoint.

``train_seeds`` writes ``OUT/seed-N/`` per seed plus ``OUT/summary.json``. Its ± is the
spread over *training seeds of one cell*; it says nothing about how much the search
itself varies (PC-DARTS#47, PEOPLE_ASK 9), and every summary carries that label.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union


from pcdarts import utils
from pcdarts.distributed import require_single_process
from pcdarts.genotype import Genotype, load_genotype, parse_genotype, save_genotype
from pcdarts.train.config import TrainConfig, TrainError, build_train_config
from pcdarts.train.trainer import CHECKPOINT, new_run_dir, train

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
    stop_signal: str = ""  # "SIGINT" or "SIGTERM" when a signal stopped it


# ---------------------------------------------------------------- run directories

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
    mean, std = utils.mean_std(values)  # sample std (n - 1), None for one seed
    return {"mean": mean, "std": std, "values": values}


def summarize(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample std over training seeds, with the label that says what the ± means."""
    out: dict[str, Any] = {"seeds": sorted(per_seed), "n_seeds": len(per_seed), "variance": VARIANCE_LABEL,
                           "std_kind": f"{utils.STD_LABEL} (n-1) over training seeds"}
    for key in SUMMARY_METRICS:
        values = [float(m[key]) for _, m in sorted(per_seed.items()) if m.get(key) is not None]
        if values:
            out[key] = _stat(values)
    first = next(iter(per_seed.values()), {})
    out.update({k: first.get(k) for k in ("genotype", "params_m", "macs_m", "dataset", "epochs")})
    out["label"] = summary_line(out)
    return out


def summary_line(summary: dict[str, Any]) -> str:
    """``test accuracy: 97.10 ± 0.08 % (mean ± sample std over 3 training seeds: training-seed variance ...)``."""
    top1 = summary.get("final_test_top1")
    n = summary.get("n_seeds", 0)
    if not top1:
        return f"test accuracy: not available ({n} training seeds, no test split)"
    return (f"test accuracy: {utils.format_mean_std(top1['mean'], top1.get('std'))} % (mean ± {utils.STD_LABEL} "
            f"over {n} training seeds: {VARIANCE_LABEL})")


def train_seeds(genotype: Union[Genotype, str], config: Union[TrainConfig, dict[str, Any]],
                seeds: Sequence[int], *, stop_after_steps: Optional[int] = None) -> SeedsResult:
    """Train one cell once per seed into ``OUT/seed-N/`` and summarise into ``OUT/summary.json``.

    Args:
        genotype: the cell (Genotype or anything :func:`load_genotype` reads).
        config: the training config; ``run.out`` is the parent folder (``run.seed`` is ignored).
        seeds: training seeds.
        stop_after_steps: passed to each seed's run (tests).
    """
    require_single_process("train --seeds")
    g = genotype if not isinstance(genotype, str) else load_genotype(genotype)
    cfg = config if isinstance(config, TrainConfig) else build_train_config(config)
    with new_run_dir(cfg).claimed() as out:
        utils.write_json(out / SEEDS_FILE, {"seeds": list(seeds), "genotype": str(g), "config": cfg.to_dict()})
        save_genotype(g, out / "genotype.json")
        return _run_seeds(g, cfg, out, list(seeds), stop_after_steps)


def resume_seeds(out: Union[str, Path], stop_after_steps: Optional[int] = None, *, trust_checkpoint: bool = False,
                 **run: Any) -> SeedsResult:
    """Continue a :func:`train_seeds` folder: finished seeds are kept, the others resumed or started
    (``trust_checkpoint``: see :func:`~pcdarts.train.trainer.train`)."""
    p = Path(out)
    try:
        plan = json.loads((p / SEEDS_FILE).read_text())
        cfg = build_train_config(plan["config"])
        g = parse_genotype(plan["genotype"])
    except (OSError, ValueError, KeyError) as e:
        raise TrainError(f"--resume {p}: cannot read {p / SEEDS_FILE} ({e})") from None
    if run:
        cfg = cfg.replace(run=run)
    return _run_seeds(g, cfg, p, [int(s) for s in plan["seeds"]], stop_after_steps, trust_checkpoint)


def _run_seeds(g: Genotype, cfg: TrainConfig, out: Path, seeds: list[int],
               stop_after_steps: Optional[int], trust_checkpoint: bool = False) -> SeedsResult:
    per_seed: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        sub = out / f"seed-{seed}"
        if (sub / "metrics.json").is_file():
            per_seed[seed] = json.loads((sub / "metrics.json").read_text())
            continue
        if (sub / CHECKPOINT).is_file():
            result = train(resume=sub, stop_after_steps=stop_after_steps, device=cfg.run.device,
                           progress=cfg.run.progress, trust_checkpoint=trust_checkpoint)
        else:
            seed_cfg = cfg.replace(run={"seed": seed, "out": str(sub), "overwrite": True})
            print(f"training seed {seed} -> {sub}", flush=True)  # with --no-progress too, like the epoch lines
            result = train(g, seed_cfg, stop_after_steps=stop_after_steps)
        if result.interrupted:
            return SeedsResult({}, out, per_seed, interrupted=True, stop_signal=result.stop_signal)
        per_seed[seed] = result.metrics
    summary = summarize(per_seed)
    utils.write_json(out / SUMMARY_FILE, summary)
    return SeedsResult(summary, out, per_seed)
