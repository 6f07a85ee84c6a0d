"""The data section of ``pcdarts train`` (:class:`TrainDataConfig`), here so that the data
loaders that read it (:mod:`pcdarts.data.stream`, :mod:`pcdarts.train.data`) may import it;
``pcdarts.train.config`` builds and validates the whole training config around it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Optional

from pcdarts import config
from pcdarts.ranges import Count, NonNegInt, Range, Seed


@dataclass(frozen=True)
class TrainDataConfig(config.DataSource):
    """Where the training images come from and how they are augmented. The fields shared
    with the search (``dataset``, ``path``, ``max_samples``, ``crop_padding``, ``flip``,
    ``input_size``, ``channels``) are :class:`pcdarts.config.DataSource`'s; for training,
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


__all__ = ["TrainDataConfig"]
