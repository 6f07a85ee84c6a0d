"""Streaming image folders for ``pcdarts train`` (ImageNet-sized data that does not fit in memory).

Pillow decoding runs in worker processes with RandomResizedCrop + flip (+ colour jitter).
Two choices make a run reproducible and resumable mid-epoch whatever the worker count:
the epoch's order is a seeded function of (seed, epoch), and every sample's augmentation
is seeded by (seed, epoch, index) just before it is decoded. Also here: where a folder
dataset's train and test images are (:func:`folder_roots`).
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import Dataset, Sampler

from pcdarts.data.folders import (split_roots, FolderLoader, ImageFolderDataset, Scan, readable_scan, scan_folder,
                                  select_classes)
from pcdarts.data.config import TrainDataConfig
from pcdarts.errors import TrainError
from pcdarts.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform

Batch = tuple[torch.Tensor, torch.Tensor]


def folder_roots(d: TrainDataConfig) -> tuple[Path, Optional[Path]]:
    """(train folder, test folder or None when the train folder must be split)."""
    return split_roots(d.path, d.test_path)


def check_stats(d: TrainDataConfig, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    assert d.mean is not None and d.std is not None
    if len(d.mean) != channels or len(d.std) != channels:
        raise TrainError(f"data.mean/data.std need {channels} value(s) (one per channel), "
                         f"got {list(d.mean)} / {list(d.std)}")
    return tuple(d.mean), tuple(d.std)


class _EpochBatches(Sampler[list[int]]):
    """Batches of one epoch: a permutation seeded by (seed, epoch), from batch ``start`` on."""

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool, drop_last: bool,
                 rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.shuffle, self.drop_last = n, batch_size, seed, shuffle, drop_last
        # under torchrun: rank r reads entries r, r + W, ... of the epoch's (shared) permutation
        self.rank, self.world_size, self.per_rank = rank, world_size, n // world_size
        full, rest = divmod(self.per_rank, batch_size)
        self.batches_per_epoch = full + (1 if rest and not drop_last else 0)
        if self.batches_per_epoch == 0:
            raise TrainError(f"train.batch_size {batch_size * world_size} is larger than the {n} training images and "
                             "train.drop_last is on; lower the batch size or set train.drop_last false")
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        order = order[self.rank::self.world_size][:self.per_rank]
        for b in range(self.start, self.batches_per_epoch):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start


class _SeededView(Dataset):
    """Indices into an image folder whose random transforms are re-seeded per sample.

    Seeding by (seed, epoch, index) makes each sample's augmentation independent of
    which worker loads it and of where a resumed run starts.
    """

    def __init__(self, base: ImageFolderDataset, indices: list[int], rng: Optional[random.Random],
                 seed: int) -> None:
        self.base, self.indices, self.rng, self.seed, self.epoch = base, indices, rng, seed, 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        if self.rng is not None:
            self.rng.seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
        return self.base[self.indices[i]]


class StreamSource:
    """A resumable training source over a streamed image folder (same interface as DeviceLoader)."""

    def __init__(self, view: _SeededView, batch_size: int, *, seed: int, drop_last: bool, workers: int,
                 device: torch.device, channels_last: bool, rank: int = 0, world_size: int = 1) -> None:
        self.view, self.device, self.channels_last = view, device, channels_last
        self.sampler = _EpochBatches(len(view), batch_size, seed, True, drop_last, rank, world_size)
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.num_samples = len(view)
        workers = min(workers, os.cpu_count() or 1)
        # a private generator: the loader's worker base seed must not consume the global
        # torch RNG, or drop-path masks would depend on when the iterator was created
        self.loader = FolderLoader(view, batch_sampler=self.sampler, num_workers=workers,
                                   pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed),
                                   persistent_workers=False)
        self.epoch, self.position = 0, 0
        self._it: Optional[Iterator[Any]] = None

    def next(self) -> Batch:
        if self.position >= self.steps_per_epoch:
            self.epoch, self.position, self._it = self.epoch + 1, 0, None
        if self._it is None:
            self.sampler.set_epoch(self.epoch, self.position)
            self.view.epoch = self.epoch  # read by the workers created by iter() just below
            self._it = iter(self.loader)
        x, y = next(self._it)
        self.position += 1
        return _to_device(x, y, self.device, self.channels_last)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "n": len(self.view),
                "batch_size": self.sampler.batch_size, "world_size": self.sampler.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state; one saved by another number of ranks at the same global batch
        continues at the same step (the ranks together read a prefix of the epoch's order)."""
        world = self.sampler.world_size
        saved_global = state.get("batch_size", 0) * state.get("world_size", 1)
        if state.get("n") != len(self.view) or saved_global != self.sampler.batch_size * world:
            raise TrainError("the checkpoint's training data differs from the folder now on disk "
                             f"(saved {state.get('n')} images / global batch {saved_global}, found "
                             f"{len(self.view)} / {self.sampler.batch_size * world}); resume with the same data")
        self.epoch, self.position, self._it = int(state["epoch"]), int(state["position"]), None
        self.position = min(self.position, self.steps_per_epoch)


class DeviceBatches:
    """Re-iterable evaluation batches from a DataLoader, moved to the device."""

    def __init__(self, loader: Any, device: torch.device, channels_last: bool) -> None:
        self.loader, self.device, self.channels_last = loader, device, channels_last

    def __iter__(self) -> Iterator[Batch]:
        for x, y in self.loader:
            yield _to_device(x, y, self.device, self.channels_last)


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool) -> Batch:
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def stream_sets(d: TrainDataConfig, size: int, channels: int, seed: int, train_scan: Optional[Scan] = None
                ) -> tuple[_SeededView, Dataset, list[str], tuple[float, ...], tuple[float, ...]]:
    """(training view, test dataset, classes, mean, std) of a streamed folder; each folder is
    listed once (the training folder not at all when ``train_scan``, its scan, is given)."""
    train_root, test_root = folder_roots(d)
    if d.mean is not None:
        mean, std = check_stats(d, channels)
    else:  # measuring a streamed set would mean decoding it; use the ImageNet statistics
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.25,))
    rng = random.Random(0)
    base = ImageFolderDataset(train_root, train_transform(size, d.color_jitter, mean=mean, std=std, rng=rng),
                              channels=channels, scan=train_scan)
    classes = base.classes
    ev = eval_transform(size, mean=mean, std=std)
    n = len(base)
    if test_root is None:
        n_test = max(1, int(round(n * d.test_portion)))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(d.split_seed)).tolist()
        train_idx, test_idx = sorted(perm[n_test:]), sorted(perm[:n_test])
        test: Dataset = torch.utils.data.Subset(
            ImageFolderDataset(train_root, ev, channels=channels, scan=(classes, base.samples)), test_idx)
    else:
        train_idx = list(range(n))
        # all of it: a clear error for a bad test folder before anything trains
        test_scan = readable_scan(test_root, scan_folder(test_root), channels, d.bad_images)
        class_to_idx = {c: i for i, c in enumerate(classes)}
        test = ImageFolderDataset(test_root, ev, class_to_idx=class_to_idx, channels=channels,
                                  scan=select_classes(test_root, test_scan, class_to_idx))
    train_idx = _subset_list(train_idx, d.max_samples, d.split_seed)
    if d.max_test_samples is not None and d.max_test_samples < len(test):  # type: ignore[arg-type]
        test = torch.utils.data.Subset(test, _subset_list(list(range(len(test))),  # type: ignore[arg-type]
                                                          d.max_test_samples, d.split_seed + 1))
    return _SeededView(base, train_idx, rng, seed), test, classes, mean, std


def _subset_list(idx: list[int], k: Optional[int], seed: int) -> list[int]:
    if k is None or k >= len(idx):
        return idx
    keep = torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:k].sort().values
    return [idx[i] for i in keep.tolist()]
