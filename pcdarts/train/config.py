"""The configuration schema of ``pcdarts train``: the sections of a from-scratch training run,
``data``, ``model``, ``train`` and ``run``, built by the one machinery (:mod:`pcdarts.config`,
:data:`SCHEMA`: presets, dotted overrides, declared ranges, ConfigError). Presets live in
``pcdarts/configs/train_<name>.yaml``; the ``train_`` prefix keeps them apart from the
search presets in the same folder, and users name them without it
(``--preset cifar10_paper``). Defaults follow the DARTS evaluation protocol
(docs/methods.md, "Training a found cell"); each preset states where its numbers come from.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union

import yaml

from pcdarts import config
from pcdarts.data.config import TrainDataConfig, check_bad_images, has_labels
from pcdarts.errors import ConfigError, TrainError
from pcdarts.runs.loop import cosine_lr
from pcdarts.ranges import Count, Fraction, NonNegInt, Positive, Range, Rate, check_ranges

PRESET_DIR = config.PRESET_DIR
PRESET_PREFIX = "train_"
DEFAULT_PRESET = "short"
SCHEDULES = ("cosine", "exponential", "linear")
FOLDER_LOADERS = ("auto", "memory", "stream")


@dataclass(frozen=True)
class ModelConfig:
    """The evaluation network built from the genotype (docs/methods.md, "Training a found cell", "Search spaces").

    Attributes:
        C: initial channels of a DARTS network (CIFAR 36, ImageNet 48).
        layers: number of DARTS cells (CIFAR 20, ImageNet 14).
        stem: ``cifar`` (one 3x3 conv) or ``imagenet`` (three stride-2 convs); DARTS only.
        auxiliary: build the auxiliary head (DARTS only; its loss is used in training only).
        auxiliary_weight: weight of the auxiliary loss (0.4).
        drop_path_prob: final drop-path probability, ramped as ``p * epoch / epochs``.
            DARTS code value 0.2 (author-confirmed, quark0/darts#42); PC-DARTS used 0.3.
        nb201_C: stage-1 channels when the genotype is a NAS-Bench-201 cell (benchmark: 16).
        nb201_N: cells per stage of a NAS-Bench-201 network (benchmark: 5).
    """

    C: Count = 36
    layers: Count = 20
    stem: str = "cifar"
    auxiliary: bool = True
    auxiliary_weight: Rate = 0.4
    drop_path_prob: Annotated[float, Range(0, 1, hi_open=True)] = 0.2
    nb201_C: Count = 16
    nb201_N: Count = 5


@dataclass(frozen=True)
class TrainLoopConfig:
    """Optimiser, schedule and regularisation of the training loop.

    Attributes:
        epochs: training epochs.
        batch_size: the effective batch per optimiser step (the paper batch).
        grad_accum: split each batch into this many micro-batches whose gradients are
            summed before the step, so a paper batch fits a small GPU (quark0/darts#71).
            BatchNorm then sees micro-batches, so results are close to, not equal to,
            the full batch.
        lr: peak learning rate.
        lr_schedule: ``cosine`` (to ``lr_min``), ``exponential`` (x ``lr_gamma`` per epoch)
            or ``linear`` (to ``lr_min``). The lr is set once at the start of each epoch.
        lr_min: floor of the cosine and linear schedules.
        lr_gamma: per-epoch factor of the exponential schedule (0.97, DARTS ImageNet).
        warmup_epochs: linear warm-up: epoch e < W uses ``lr(e) * (e + 1) / W`` (PC-DARTS ImageNet: 5).
        momentum, weight_decay, nesterov: SGD settings (weight decay on all weights, as in DARTS).
        grad_clip: global-norm clip of the gradients (0 = off).
        label_smoothing: cross-entropy label smoothing of the training loss (ImageNet 0.1);
            the test loss is always plain cross-entropy.
        cutout: side of the cutout square, applied after normalisation (0 = off; CIFAR 16).
        amp: bf16 autocast on CUDA (ignored on CPU).
        drop_last: drop the final incomplete batch of each epoch (DARTS keeps it).
        eval_every: evaluate on the test split every N epochs (the last epoch always).
        log_every: progress-bar refresh period in steps (host syncs happen only then).
    """

    epochs: Count = 600
    batch_size: Count = 96
    grad_accum: Count = 1
    lr: Positive = 0.025
    lr_schedule: str = "cosine"
    lr_min: Rate = 0.0
    lr_gamma: Annotated[float, Range(0, 1, lo_open=True)] = 0.97
    warmup_epochs: NonNegInt = 0
    momentum: Fraction = 0.9
    weight_decay: Rate = 3e-4
    nesterov: bool = False
    grad_clip: Rate = 5.0
    label_smoothing: Annotated[float, Range(0, 1, hi_open=True)] = 0.0
    cutout: NonNegInt = 0
    amp: bool = True
    drop_last: bool = False
    eval_every: Count = 1
    log_every: Count = 10


@dataclass(frozen=True)
class TrainRunConfig(config.RunOptions):
    """Where and how the training run executes (:class:`pcdarts.config.RunOptions`)."""


SECTIONS: dict[str, type] = {"data": TrainDataConfig, "model": ModelConfig, "train": TrainLoopConfig,
                             "run": TrainRunConfig}
SCHEMA = config.Schema("pcdarts train", SECTIONS, example="--train.epochs 50", preset_prefix=PRESET_PREFIX,
                       preset_kind="training preset")


@dataclass(frozen=True)
class TrainConfig:
    """A whole training configuration (sections ``data``, ``model``, ``train``, ``run``)."""

    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    run: TrainRunConfig = field(default_factory=TrainRunConfig)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return {name: config.plain(dataclasses.asdict(getattr(self, name))) for name in SECTIONS}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **sections: dict[str, Any]) -> "TrainConfig":
        """A validated copy with some fields replaced, e.g. ``cfg.replace(run={"seed": 1})``."""
        d = self.to_dict()
        for name, values in sections.items():
            d.setdefault(name, {}).update(values)
        return build_train_config(d)


def validate(cfg: TrainConfig) -> None:
    """The checks across fields (each field's own range is declared on it and checked first);
    each message names the field and the fix."""
    d, m, t = cfg.data, cfg.model, cfg.train
    for name in SECTIONS:
        check_ranges(getattr(cfg, name), name)
    check_bad_images(d)
    if not has_labels(d.dataset):
        raise ConfigError(f"pcdarts train needs labels, and data.dataset {d.dataset!r} has none; train the found "
                          "cell on a labelled set (folder:DIR with one sub-folder per class, cifar10:PATH, ...)")
    checks = [
        (t.batch_size % t.grad_accum == 0, f"train.grad_accum={t.grad_accum} must divide train.batch_size="
                                           f"{t.batch_size} (each micro-batch has batch_size / grad_accum images)"),
        (t.lr_min <= t.lr, f"train.lr_min={t.lr_min} must not exceed train.lr={t.lr}"),
        (t.lr_schedule in SCHEDULES, f"train.lr_schedule must be one of {', '.join(SCHEDULES)}, got {t.lr_schedule!r}"),
        (t.warmup_epochs < t.epochs, f"train.warmup_epochs={t.warmup_epochs} must be smaller than train.epochs="
                                     f"{t.epochs}"),
        (not t.nesterov or t.momentum > 0, "train.nesterov needs train.momentum > 0"),
        (m.stem in ("cifar", "imagenet"), f"model.stem must be 'cifar' or 'imagenet', got {m.stem!r}"),
        (d.loader in FOLDER_LOADERS, f"data.loader must be one of {', '.join(FOLDER_LOADERS)}, got {d.loader!r}"),
        (d.channels in (None, 1, 3), f"data.channels must be 1 or 3, got {d.channels}"),
        ((d.mean is None) == (d.std is None), "set data.mean and data.std together (one value per channel)"),
        (d.test_path is None or d.dataset == "folder", "data.test_path is only used with data.dataset: folder"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def lr_at(t: TrainLoopConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based) under the configured schedule.

    A pure function of the epoch, so resuming needs no scheduler state and the
    schedule is the modern ordering (epoch 0 runs at the peak lr; docs/methods.md, "Training a found cell").
    """
    progress = epoch / t.epochs
    if t.lr_schedule == "cosine":
        lr = cosine_lr(t.lr, t.lr_min, epoch, t.epochs)
    elif t.lr_schedule == "exponential":
        lr = t.lr * t.lr_gamma ** epoch
    else:  # linear
        lr = t.lr_min + (t.lr - t.lr_min) * (1.0 - progress)
    if epoch < t.warmup_epochs:
        lr *= (epoch + 1) / t.warmup_epochs
    return lr


# ---------------------------------------------------------------- presets and overrides

def train_preset_names() -> list[str]:
    """Preset names (file names without the ``train_`` prefix and ``.yaml``)."""
    return SCHEMA.preset_names()


def load_train_preset(name_or_path: str) -> dict[str, Any]:
    """The nested dict of a preset name (``cifar10_paper``) or of a YAML file."""
    return SCHEMA.load_preset(name_or_path)


def parse_overrides(tokens: Sequence[str]) -> list[tuple[str, Any]]:
    """``["--train.epochs", "2", "--model.C=8"]`` -> ``[("train.epochs", 2), ("model.C", 8)]``."""
    return SCHEMA.parse_overrides(tokens)


def apply_override(d: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``d[section][key] = value``; an unknown section or key raises ConfigError."""
    SCHEMA.apply_override(d, dotted, value)


def build_train_config(d: dict[str, Any]) -> TrainConfig:
    """A validated :class:`TrainConfig` from a nested dict (preset + overrides)."""
    return TrainConfig(**SCHEMA.build_sections(d))


def load_train_config_file(path: Union[str, Path]) -> TrainConfig:
    """Read a run's ``config.yaml`` back into a TrainConfig."""
    return build_train_config(config.read_sections(path, "a training run's config"))


__all__ = [
    "TrainError", "TrainConfig", "SCHEMA", "validate",
    "TrainDataConfig", "ModelConfig", "TrainLoopConfig", "TrainRunConfig",
    "build_train_config", "load_train_preset", "load_train_config_file", "parse_overrides",
    "apply_override", "train_preset_names", "lr_at", "DEFAULT_PRESET",
]
