"""The data sections: :class:`DataSource` (the fields search and training share) and the
training one (:class:`TrainDataConfig`), here so that the data loaders that read them
(:mod:`pcdarts.data.stream`, :mod:`pcdarts.train.data`) may import them; the search's
``DataConfig`` (:mod:`pcdarts.search.config`) and ``pcdarts.train.config`` build on them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Optional

from pcdarts.errors import ConfigError
from pcdarts.ranges import Count, NonNegInt, Range, Seed
from pcdarts.registry import DATASETS

BAD_IMAGES = ("fail", "skip")
FOLDER_DATASETS = ("folder", "unlabelled")  # the datasets read from image files


def has_labels(dataset: str) -> bool:
    """Whether the registered dataset ``dataset`` has labels (``unlabelled`` has none); an
    unknown name counts as labelled (loading it gives the named error)."""
    name = dataset.lower()
    return name not in DATASETS or getattr(DATASETS.get(name), "labelled", True)


def check_bad_images(d: DataSource) -> None:
    """``data.bad_images skip`` only where images are read one file at a time."""
    if d.bad_images != "fail" and d.dataset not in FOLDER_DATASETS:
        raise ConfigError(f"data.bad_images={d.bad_images} applies to image folders ({', '.join(FOLDER_DATASETS)}), "
                          f"not to {d.dataset}; remove it")


@dataclass(frozen=True)
class DataSource:
    """The fields of a data block that search (:class:`DataConfig`) and training
    (``pcdarts.train.config.TrainDataConfig``) share: one shape, one meaning.

    Attributes:
        dataset: registered dataset name (``digits``, ``cifar10``, ``cifar100``, ``folder``).
        path: archive or folder for datasets that need one.
        max_samples: use only this many training images (quick experiments); None = all.
        crop_padding: random-crop padding; None = the dataset's default (0 for digits, side/8 else).
        flip: random horizontal flip; None = the dataset's default (off for digits, on else).
        input_size: square input side (None = the dataset's; folders: a sample image's shorter side).
        channels: 1 or 3 (None = the dataset's; folders: 3).
        bad_images: image folders: what an unreadable or non-image file does: ``fail`` (the
            default: one error line naming the file) or ``skip`` (left out, and one warning
            line with the count and an example). Mixed sizes and colour modes are never an
            error: every image is converted to ``channels`` and resized + centre-cropped.
    """

    dataset: str = "digits"
    path: Optional[str] = None
    max_samples: Optional[Count] = None
    crop_padding: Optional[NonNegInt] = None
    flip: Optional[bool] = None
    input_size: Optional[Count] = None
    channels: Optional[Count] = None
    bad_images: str = "fail"

    def __post_init__(self) -> None:
        if self.bad_images not in BAD_IMAGES:
            raise ConfigError(f"data.bad_images must be {' or '.join(BAD_IMAGES)}, got {self.bad_images!r}")

    @property
    def spec(self) -> str:
        """``NAME`` or ``NAME:PATH`` as written on the command line."""
        return f"{self.dataset}:{self.path}" if self.path else self.dataset


@dataclass(frozen=True)
class TrainDataConfig(DataSource):
    """Where the training images come from and how they are augmented. The fields shared
    with the search (``dataset``, ``path``, ``max_samples``, ``crop_padding``, ``flip``,
    ``input_size``, ``channels``) are :class:`DataSource`'s; for training,
    ``dataset`` may also be ``folder`` (``path/train`` + ``path/test`` or ``path/val`` with one
    sub-folder per class; a path without such split folders is split 90/10), tensor datasets
    are resized / converted once to ``input_size`` / ``channels`` when those differ, and
    ``crop_padding`` defaults to 4 for folders in memory.

    Attributes:
        test_path: explicit test folder (``folder`` only); then ``path`` is the train folder.
        test_portion: fraction held out as the test split when a folder has no split folders.
        split_seed: seed of that held-out split and of ``max_*_samples`` subsets. It is
            separate from ``run.seed`` so that several training seeds see the same test set.
        num_classes: classifier outputs; None = from the dataset (folder: number of class folders).
        mean, std: per-channel normalisation in [0, 1] units; None = the dataset's
            (folder: measured on the training images in memory, ImageNet values when streaming).
        max_test_samples: seeded subset of the test split for quick runs; None = all.
        loader: folders only: ``memory`` (decode once into a tensor, fast device loader),
            ``stream`` (decode per batch with worker processes, RandomResizedCrop + flip
            [+ colour jitter]; for ImageNet-sized data) or ``auto`` (memory when it fits in 2 GiB).
        workers: worker processes of the streaming loader (0 = load in this process).
        color_jitter: streaming only: ColorJitter(0.4, 0.4, 0.4, 0.2) as in the DARTS/PC-DARTS ImageNet code.
        eval_batch_size: batch of the test pass; None = max(256, train batch).
    """

    test_path: Optional[str] = None
    test_portion: Annotated[float, Range(0, 1, lo_open=True, hi_open=True)] = 0.1
    split_seed: Seed = 0
    num_classes: Optional[Annotated[int, Range(2)]] = None
    mean: Optional[Annotated[tuple[float, ...], Range()]] = None
    std: Optional[Annotated[tuple[float, ...], Range(0, lo_open=True)]] = None
    max_test_samples: Optional[Count] = None
    loader: str = "auto"
    workers: NonNegInt = 4
    color_jitter: bool = True
    eval_batch_size: Optional[Count] = None


__all__ = ["DataSource", "TrainDataConfig", "BAD_IMAGES", "FOLDER_DATASETS", "has_labels", "check_bad_images"]
