"""Data for ``pcdarts train``: tensor datasets and image folders behind one batch interface.

Two kinds of source behind one interface (:class:`BatchSource`), both resumable mid-epoch:

* **in memory** (digits, CIFAR, small image folders): uint8 tensors on the device,
  served by :class:`pcdarts.data.device_loader.DeviceLoader` (pad-crop, flip, cutout after
  normalisation; one seeded generator, so the batches are a function of the seed).
* **streaming** (ImageNet-sized folders): :class:`pcdarts.data.stream.StreamSource`.

Custom data is one config block (PEOPLE_ASK 23): ``data: {dataset: folder, path: DIR,
input_size: 64, channels: 1}``; the class count comes from the folder. Each folder is listed
once per command (:class:`_TrainFolder` carries the training folder's listing to every step).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Protocol

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from pcdarts.data.sources import channel_stats, default_augment, labels_fingerprint, load_dataset, seeded_subset
from pcdarts.data.folders import (ImageFolderDataset, Scan, folder_info, load_folder_as_tensor, make_folder_loader,
                                  readable_scan, scan_folder)
from pcdarts.data.device_loader import Augment, DeviceLoader
from pcdarts.train.config import TrainDataConfig, TrainError
from pcdarts.data.stream import Batch, StreamSource, DeviceBatches, stream_sets, check_stats, folder_roots
from pcdarts.data.transforms import eval_transform

# dataset -> (crop padding, flip) when the config leaves them unset (DARTS CIFAR: 4, flip)
MEMORY_LIMIT = 2 * 2**30  # "auto" keeps a folder in memory below this many uint8 bytes


class BatchSource(Protocol):
    """What the trainer needs from a training loader (DeviceLoader and StreamSource)."""

    steps_per_epoch: int

    def next(self) -> Batch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainData:
    """Loaders plus the shape facts the network is built from.

    Attributes:
        train: the training batch source (micro-batches when gradients are accumulated).
        test: re-iterable evaluation batches (no augmentation), or None.
        num_classes, in_channels, input_size: what the network must accept and produce.
        info: a JSON-able description for the run manifest.
    """

    train: BatchSource
    test: Optional[Iterable[Batch]]
    num_classes: int
    in_channels: int
    input_size: int
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- tensors

@dataclass
class _Arrays:
    """Both splits of an in-memory dataset after subsetting and shape adaptation."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: Optional[list[str]]


def _adapt(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Convert uint8 images to ``channels`` and a square ``size`` (chunked to bound memory)."""
    n, c, h, w = images.shape
    if c == channels and h == size and w == size:
        return images
    out = torch.empty((n, channels, size, size), dtype=torch.uint8)
    for i in range(0, n, 2048):
        x = images[i:i + 2048].float()
        if c != channels:
            # grey = plain channel mean; RGB from grey = the grey value in all three channels
            x = x.mean(1, keepdim=True) if channels == 1 else x.expand(-1, 3, -1, -1)
        if (h, w) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[i:i + 2048] = x.round().clamp(0, 255).to(torch.uint8)
    return out


@dataclass
class _TrainFolder:
    """The training folder of a ``folder`` dataset, listed once, and the input shape the run uses."""

    root: Path
    scan: Scan
    size: int
    channels: int

    @property
    def num_images(self) -> int:
        return len(self.scan[1])


def _train_folder(d: TrainDataConfig) -> _TrainFolder:
    root = folder_roots(d)[0]
    scan = scan_folder(root)
    size = d.input_size or min(folder_info(root, scan=scan, on_bad=d.bad_images)["sample_image_size"])
    return _TrainFolder(root, scan, size, d.channels or 3)


def _folder_arrays(d: TrainDataConfig, folder: _TrainFolder) -> _Arrays:
    """Both splits of a folder in memory; mean/std are left empty for :func:`load_arrays`."""
    test_root = folder_roots(d)[1]
    size, channels = folder.size, folder.channels
    x, y, classes = load_folder_as_tensor(folder.root, size, channels, scan=folder.scan, on_bad=d.bad_images)
    if test_root is None:
        # no split folders: a seeded hold-out, fixed by data.split_seed (not by the training seed)
        n_test = max(1, int(round(len(y) * d.test_portion)))
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(d.split_seed))
        test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
        tx, ty = x[test_idx], y[test_idx]
        x, y = x[train_idx], y[train_idx]
    else:
        tx, ty, test_classes = load_folder_as_tensor(test_root, size, channels, on_bad=d.bad_images)
        ty = _remap(ty, test_classes, classes, test_root)
    return _Arrays(x, y, tx, ty, len(classes), (), (), classes)


def _remap(labels: torch.Tensor, names: list[str], train_names: list[str], where: Path) -> torch.Tensor:
    """Re-index test labels by class name so they agree with the training folder."""
    index = {c: i for i, c in enumerate(train_names)}
    unknown = [c for c in names if c not in index]
    if unknown:
        raise TrainError(f"{where}: class folder(s) {unknown} do not exist in the training folder; "
                         "the test split must use the training classes")
    table = torch.tensor([index[c] for c in names], dtype=torch.int64)
    return table[labels]


def load_arrays(d: TrainDataConfig, folder: Optional[_TrainFolder] = None) -> tuple[_Arrays, int, int]:
    """Both splits in memory, shaped as configured; returns (arrays, channels, input_size).

    ``folder``: the training folder already listed by the caller (``folder`` datasets only).
    """
    measure = d.mean is None or d.std is None  # given data.mean/std replace measured statistics
    if d.dataset == "folder":
        if folder is None:
            folder = _train_folder(d)
        size, channels = folder.size, folder.channels
        arr = _folder_arrays(d, folder)
        if measure:
            arr.mean, arr.std = channel_stats(arr.train_x)
    else:
        train, test = load_dataset(d.spec, "train"), load_dataset(d.spec, "test")
        size = d.input_size or train.input_size
        channels = d.channels or train.in_channels
        arr = _Arrays(train.images, train.labels, test.images, test.labels, train.num_classes,
                      train.mean, train.std, train.classes)
        if channels != train.in_channels or size != train.input_size:
            arr.train_x, arr.test_x = _adapt(arr.train_x, channels, size), _adapt(arr.test_x, channels, size)
            if channels != train.in_channels and measure:  # the dataset's statistics describe other channels
                arr.mean, arr.std = channel_stats(arr.train_x)
    arr.train_x, arr.train_y = seeded_subset(arr.train_x, arr.train_y, d.max_samples, d.split_seed, keep_order=True)
    arr.test_x, arr.test_y = seeded_subset(arr.test_x, arr.test_y, d.max_test_samples, d.split_seed + 1,
                                           keep_order=True)
    arr.num_classes = _num_classes(d, arr.num_classes, arr.train_y, arr.test_y)
    if not measure:
        arr.mean, arr.std = check_stats(d, channels)
    return arr, channels, size


def _num_classes(d: TrainDataConfig, found: int, *labels: torch.Tensor) -> int:
    if d.num_classes is None:
        return found
    top = max((int(y.max()) + 1 for y in labels if y.numel()), default=0)
    if d.num_classes < top:
        raise TrainError(f"data.num_classes={d.num_classes} but the data has labels up to {top - 1}; "
                         f"set data.num_classes >= {top} or leave it null to take it from the data")
    return d.num_classes


def _use_stream(d: TrainDataConfig, folder: _TrainFolder) -> bool:
    if d.loader == "memory":
        return False
    if d.loader == "stream":
        return True
    return folder.num_images * folder.channels * folder.size * folder.size > MEMORY_LIMIT


# ---------------------------------------------------------------- entry points

def build_train_data(d: TrainDataConfig, *, batch_size: int, eval_batch_size: int, seed: int, cutout: int,
                     drop_last: bool, device: torch.device, with_test: bool = True,
                     rank: int = 0, world_size: int = 1) -> TrainData:
    """Build the training source and the test batches of a run.

    Args:
        d: the data section of the config.
        batch_size: images per training (micro-)batch.
        eval_batch_size: images per test batch.
        seed: the training seed (data order and augmentation).
        cutout: cutout square side (tensor sources; applied after normalisation).
        drop_last: drop the last incomplete training batch of each epoch.
        device: where batches are produced.
        with_test: also build the test batches.
        rank, world_size: under torchrun, this process's shard of every epoch's shared order
            (``batch_size`` is then this process's share of the batch); the test batches are
            not sharded here (the evaluation takes every ``world_size``-th batch).
    """
    channels_last = device.type == "cuda"
    folder = _train_folder(d) if d.dataset == "folder" else None
    if folder is not None and _use_stream(d, folder):
        size, channels = folder.size, folder.channels
        view, test, classes, mean, std = stream_sets(
            d, size, channels, seed, train_scan=readable_scan(folder.root, folder.scan, channels, d.bad_images))
        num_classes = d.num_classes or len(classes)
        if d.num_classes is not None and d.num_classes < len(classes):
            raise TrainError(f"data.num_classes={d.num_classes} but {folder.root} has {len(classes)} class "
                             "folders; raise it or leave it null")
        src = StreamSource(view, batch_size, seed=seed, drop_last=drop_last, workers=d.workers,
                           device=device, channels_last=channels_last, rank=rank, world_size=world_size)
        test_batches = DeviceBatches(make_folder_loader(test, eval_batch_size, shuffle=False,
                                                         num_workers=min(d.workers, os.cpu_count() or 1),
                                                         seed=seed), device, channels_last) if with_test else None
        info = {"dataset": d.spec, "loader": "stream", "n_train": len(view), "n_test": len(test),  # type: ignore
                "classes": classes, "mean": list(mean), "std": list(std)}
        return TrainData(src, test_batches, num_classes, channels, size, info)
    arr, channels, size = load_arrays(d, folder)
    pad_default, flip_default = default_augment(d.dataset, size)
    aug = Augment(crop_padding=pad_default if d.crop_padding is None else d.crop_padding,
                  flip=flip_default if d.flip is None else d.flip, cutout=cutout)
    common = dict(mean=arr.mean, std=arr.std, device=device, channels_last=channels_last)
    train = DeviceLoader(arr.train_x, arr.train_y, batch_size, augment=aug, shuffle=True, drop_last=drop_last,
                         seed=seed, rank=rank, world_size=world_size, **common)
    test = None
    if with_test and len(arr.test_y):
        test = DeviceLoader(arr.test_x, arr.test_y, eval_batch_size, augment=None, shuffle=False,
                            drop_last=False, **common)
    info = {"dataset": d.spec, "loader": "memory", "n_train": len(arr.train_y), "n_test": len(arr.test_y),
            "fingerprint": labels_fingerprint(arr.train_y), "augment": dataclasses.asdict(aug),
            "mean": list(arr.mean), "std": list(arr.std), "classes": arr.classes}
    return TrainData(train, test, arr.num_classes, channels, size, info)


def build_split_batches(d: TrainDataConfig, split: str, *, batch_size: int, device: torch.device
                        ) -> tuple[Iterable[Batch], int, int]:
    """Un-augmented batches of one split for ``pcdarts eval``: (batches, images, num_classes).

    Args:
        d: the data section, with ``input_size``/``channels`` set to what the model expects.
        split: ``train`` or ``test``.
        batch_size: images per batch.
        device: where batches are produced.
    """
    if split not in ("train", "test"):
        raise TrainError(f"--split must be 'train' or 'test', got {split!r}")
    channels_last = device.type == "cuda"
    size, channels = d.input_size, d.channels
    assert size is not None and channels is not None
    folder = _train_folder(d) if d.dataset == "folder" else None
    if folder is not None and _use_stream(d, folder):
        view, test, classes, mean, std = stream_sets(d, size, channels, 0, train_scan=folder.scan)
        if split == "train":  # evaluate the training images with the test-time transform
            ev = eval_transform(size, mean=mean, std=std)
            base = ImageFolderDataset(view.base.root, ev, channels=channels, scan=folder.scan)
            ds: Dataset = torch.utils.data.Subset(base, view.indices)
        else:
            ds = test
        loader = make_folder_loader(ds, batch_size, shuffle=False, num_workers=min(d.workers, os.cpu_count() or 1))
        return DeviceBatches(loader, device, channels_last), len(ds), len(classes)  # type: ignore[arg-type]
    arr, _, _ = load_arrays(d, folder)
    x, y = (arr.train_x, arr.train_y) if split == "train" else (arr.test_x, arr.test_y)
    if not len(y):
        raise TrainError(f"the {split} split of {d.spec} is empty")
    loader = DeviceLoader(x, y, batch_size, mean=arr.mean, std=arr.std, augment=None, shuffle=False,
                          drop_last=False, device=device, channels_last=channels_last)
    return loader, len(y), arr.num_classes
