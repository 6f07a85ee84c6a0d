"""Evaluating a trained network: a training run directory or checkpoint on one split."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Union

from pcdarts import runs
from pcdarts.distributed import resolve_device
from pcdarts.genotype import parse_genotype
from pcdarts.train.config import TrainError, build_train_config
from pcdarts.train.data import build_split_batches
from pcdarts.train.model import build_model, evaluate
from pcdarts.train.trainer import CHECKPOINT


def evaluate_checkpoint(path: Union[str, Path], data: Optional[str] = None, *, split: str = "test",
                        batch_size: Optional[int] = None, device: str = "auto",
                        trust_checkpoint: bool = False) -> dict[str, Any]:
    """Load a trained network (run directory or ``checkpoint.pt``) and evaluate it on one split.

    Args:
        path: a training run directory or its checkpoint file.
        data: dataset spec (``cifar10:PATH``, ``folder:DIR``, ``digits``); None = the run's own data.
        split: ``test`` or ``train`` (un-augmented).
        batch_size: evaluation batch; None = the run's evaluation batch.
        device: ``auto``, ``cpu``, ``cuda``...
        trust_checkpoint: unpickle a checkpoint in full when it needs that (one written by an
            older pcdarts); only for a source you trust (``--trust-checkpoint``).

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
    ck = runs.load_checkpoint(file, "train", "pcdarts eval", trust=trust_checkpoint)
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
