"""What a search reports, apart from its loop: the run's first files, one ``history.jsonl``
record per epoch (losses, the epoch's genotype and its size, the collapse diagnostics, the
space's extras such as the NB201 lookup, the method's own fields), the epoch line, the
loss checks of an epoch, TensorBoard, and the final files (genotype, manifest, pictures).
"""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from pcdarts import runs, utils
from pcdarts.analysis.stats import collapse_stats, collapse_warning
from pcdarts.config import Config, has_labels
from pcdarts.errors import DivergenceError
from pcdarts.genotype import Genotype, save_genotype
from pcdarts.methods import Method, SearchContext


class SearchReport:
    """The per-epoch reporting of one search (rank 0 writes; every rank keeps the history).

    Args:
        cfg: the run's configuration (the NB201 lookup switches itself off in it on failure).
        space: the search space (genotype statistics, per-space extras).
        run_dir: the run directory.
        shape: the network's ``num_classes``, ``in_channels``, ``input_size``.
        main: this process writes files and prints (rank 0).
        tb: the TensorBoard writer, or None.
    """

    def __init__(self, cfg: Config, space: Any, run_dir: Path, shape: dict[str, int], main: bool, tb: Any) -> None:
        self.cfg, self.space, self.run_dir, self.main, self.tb = cfg, space, run_dir, main, tb
        self.shape = {**shape, "labelled": has_labels(cfg.data.dataset)}
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ files
    def write_start(self, device: torch.device, extra: dict[str, Any]) -> None:
        """``config.yaml`` and ``manifest.json`` of a new run."""
        (self.run_dir / "config.yaml").write_text(self.cfg.to_yaml())
        utils.write_json(self.run_dir / "manifest.json",
                         utils.manifest(self.cfg.run.seed, str(device),
                                        {"kind": "search", **extra, "network": self.shape}))

    def finish(self, genotype: Genotype, epoch: int, device: torch.device) -> None:
        """The final files (rank 0): the collapse warning, ``genotype.json``, the manifest's end, pictures."""
        if not self.main:
            return
        warning = collapse_warning(genotype, self.history[-1].get("arch_entropy") if self.history else None)
        if warning:
            warnings.warn(warning)
        save_genotype(genotype, self.run_dir / "genotype.json")
        if self.tb is not None:
            self.tb.cell(genotype, epoch)
        utils.close_manifest(self.run_dir, genotype=str(genotype),
                             search_time_s=round(sum(r.get("time_s", 0.0) for r in self.history), 3),
                             peak_memory_mib=round(utils.peak_memory_mib(device), 1),
                             peak_memory_kind="CUDA allocated" if device.type == "cuda" else "process RSS")
        if self.cfg.run.plots:
            self._plots(genotype)

    def _plots(self, genotype: Genotype) -> None:
        try:
            from pcdarts.analysis.plot import plot_arch_weights, plot_genotype
            plot_genotype(genotype, self.run_dir / "genotype")
            if self.history:
                plot_arch_weights(self.history, self.run_dir / "arch_weights.png")
        except Exception as e:  # pictures are a convenience; never lose a finished search over them
            warnings.warn(f"could not draw the run's pictures: {e}")

    # ------------------------------------------------------------------ one epoch
    def epoch_record(self, rec: dict[str, Any], genotype: Genotype, method: Method, masks: dict[str, torch.Tensor],
                     ctx: SearchContext) -> dict[str, Any]:
        """``rec`` (the epoch's losses) completed with the genotype, its size, the space's extras,
        the architecture weights, the live ops, the collapse diagnostics and the method's fields."""
        rec["genotype"] = str(genotype)
        st = self.space.genotype_stats(genotype, **self.shape)
        rec.update(genotype_params_m=st["params"], genotype_macs_m=st["macs"], genotype_network=st["network"])
        if self.cfg.search.nb201_lookup:  # the space's per-epoch extras (NB201: the benchmark lookup of the cell)
            rec.update(self._epoch_extras(genotype))
        rec["primitives"] = list(self.space.primitives)
        rec.update(method.arch_weights())
        if any(not bool(m.all()) for m in masks.values()):  # ops were removed: the live ones, for the entropy
            rec["op_masks"] = {ct: m.int().cpu().tolist() for ct, m in masks.items()}
        rec.update(collapse_stats(genotype, rec.get("arch_weights") if method.op_weights_move else None,
                                  rec.get("op_masks")))
        extra = method.epoch_record(ctx)  # the method's own per-epoch fields (e.g. a student's loss)
        if set(extra) & set(rec):
            raise ValueError(f"{type(method).__name__}.epoch_record returns fields the search already "
                             f"logs: {sorted(set(extra) & set(rec))}; name them otherwise")
        rec.update(extra)
        return rec

    def _epoch_extras(self, genotype: Genotype) -> dict[str, Any]:
        """The space's fields of this epoch's record (``space.epoch_extras``: NB201's benchmark
        accuracies of the cell, the AutoDL code's most useful diagnostic)."""
        from pcdarts.nb201 import BenchmarkError
        try:
            return self.space.epoch_extras(genotype, table=self.cfg.search.nb201_table)
        except BenchmarkError as e:
            warnings.warn(f"NAS-Bench-201 lookup disabled: {e}")
            self.cfg = dataclasses.replace(self.cfg, search=dataclasses.replace(self.cfg.search, nb201_lookup=False))
        return {}

    def check_losses(self, rec: dict[str, Any], *, classifying: bool, weight_hint: str, arch_hint: str) -> None:
        """A non-finite validation loss is divergence (a DivergenceError, so ``search.rollback``
        applies); a finite train or architecture loss more than ``runs.EXPLOSION_FACTOR`` times its
        reference gets one warning line. The reference is the loss at chance, log(num_classes),
        for a classifying objective, else the first epoch's."""
        where = f"in epoch {rec['epoch'] + 1}/{self.cfg.search.epochs}"
        if "valid_loss" in rec and not math.isfinite(rec["valid_loss"]):
            raise DivergenceError(runs.divergence_message("the validation loss", where, weight_hint,
                                                          self.run_dir / runs.CHECKPOINT))
        if not self.main:
            return
        k = self.shape["num_classes"]
        for key, what, hint in (("train_loss", "the train loss", weight_hint),
                                ("arch_loss", "the architecture loss", arch_hint)):
            if classifying and k > 1:
                reference, name = math.log(k), f"the loss at chance, log({k})"
            else:
                reference, name = (self.history[0].get(key) if self.history else None), "the first epoch's"
            message = runs.explosion_warning(what, rec.get(key, math.nan), reference, name, where, hint)
            if message:
                warnings.warn(message)
                return  # one line per epoch is enough

    def publish(self, rec: dict[str, Any]) -> None:
        """The epoch's record into the history, ``history.jsonl``, TensorBoard and the epoch line."""
        self.history.append(rec)
        if self.main:
            utils.append_jsonl(self.run_dir / "history.jsonl", rec)
            if self.tb is not None:
                self.tb.epoch(rec)
            print(epoch_line(rec, self.cfg.search.epochs), flush=True)  # with --no-progress too: no terminal

    def search_time(self) -> float:
        return sum(r.get("time_s", 0.0) for r in self.history)


def epoch_line(rec: dict[str, Any], epochs: int) -> str:
    """The one line printed after each search epoch: losses and accuracies, then the collapse
    diagnostics (parameter-free ops in the epoch's cell, entropy of the op weights per cell
    type, the NB201 lookup accuracy when on)."""
    parts = [f"epoch {rec['epoch'] + 1}/{epochs}", f"loss {rec['train_loss']:.3f}"]
    for key, name in (("train_acc", "acc"), ("arch_acc", "arch acc"), ("valid_acc", "valid acc")):
        if rec.get(key) is not None:
            parts.append(f"{name} {rec[key]:.1f}")
    line = "  ".join(parts) + f" | cell: {rec['param_free_ops']}/{rec['cell_ops']} parameter-free"
    if rec.get("arch_entropy"):
        line += " | entropy " + " ".join(f"{ct} {v:.2f}" for ct, v in rec["arch_entropy"].items())
    for ds, acc in (rec.get("nb201") or {}).items():
        value = acc.get("test") if acc.get("test") is not None else acc.get("valid")
        kind = "test" if acc.get("test") is not None else "valid"
        line += f" | NB201 {ds} {kind} {value:.2f}"
        break  # the first dataset (cifar10) on the line; all of them are in history.jsonl
    return line + f" ({rec['time_s']:.1f} s)"


def epoch_losses(meters: dict[str, float], *, epoch: int, lr: float, arch_active: bool,
                 has_accuracy: bool) -> dict[str, Any]:
    """The start of an epoch's record from its summed meters: lr, train (and architecture) loss and accuracy."""
    m = meters
    rec: dict[str, Any] = {"epoch": epoch, "lr": lr, "train_loss": m["loss"] / max(m["n"], 1),
                           "arch_active": arch_active}
    if has_accuracy:
        rec["train_acc"] = 100 * m["correct"] / max(m["n"], 1)
    if m["arch_n"] > 0:
        rec["arch_loss"] = m["arch_loss"] / m["arch_n"]
        if has_accuracy:
            rec["arch_acc"] = 100 * m["arch_correct"] / m["arch_n"]
    return rec


def closed_run(run_dir: Path) -> bool:
    """Whether a run's final files exist (genotype.json, the manifest's end time): a run
    resumed after them has nothing left to do."""
    try:
        closed = "end_time" in json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        closed = False
    return closed and (run_dir / "genotype.json").is_file()


__all__ = ["SearchReport", "closed_run", "epoch_line", "epoch_losses"]
