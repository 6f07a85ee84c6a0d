"""The ``folder`` dataset: your own images, one sub-folder per class, as a tensor dataset.

``folder:PATH`` reads ``PATH/train`` (and ``PATH/test`` or ``PATH/val`` for the test
split) when they exist, else ``PATH`` itself as the training set. Every image is decoded
once, resized (shorter side) and centre-cropped to ``input_size`` and kept in memory as
uint8, so the search uses the same device-resident loader as CIFAR. Custom data is one
config block: ``data: {dataset: folder, path: /my/images, input_size: 32, channels: 1}``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional


from pcdarts.data.folders import folder_info, load_folder_as_tensor, scan_folder, split_roots
from pcdarts.data.sources import DataError, ImageDataset, channel_stats
from pcdarts.registry import DATASETS


def split_root(path: Optional[str], split: str, name: str = "folder") -> Path:
    """The folder of ``split`` for ``--data NAME:PATH``: PATH/train and PATH/test (or val), or
    PATH itself for training when it has no such sub-folders (then there is no test split)."""
    train, test = split_roots(path, field=f"--data {name}:PATH")
    if split == "train":
        return train
    if test is None:
        raise DataError(f"{name}:{path}: no train/ + test/ (or val/) sub-folders, so there is no test split")
    return test


@DATASETS.register("folder", description="image folder, one sub-folder per class (decoded once into memory)")
def load_folder_dataset(path: Optional[str], split: str, input_size: Optional[int] = None,
                        channels: Optional[int] = None, bad_images: Optional[str] = None) -> ImageDataset:
    root = split_root(path, split)
    scan = scan_folder(root)  # listed once, for the size and the images
    size = input_size or min(folder_info(root, scan=scan, on_bad=bad_images or "fail")["sample_image_size"])
    images, labels, classes = load_folder_as_tensor(root, size, channels or 3, scan=scan,
                                                    on_bad=bad_images or "fail")
    mean, std = channel_stats(images)
    return ImageDataset(images=images, labels=labels, num_classes=len(classes), mean=mean, std=std,
                        name=f"folder:{root}", classes=list(classes))
