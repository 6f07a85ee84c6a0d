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

import torch

from pcdarts.data.sources import DataError, ImageDataset
from pcdarts.data.folders import folder_info, load_folder_as_tensor, scan_folder
from pcdarts.registry import DATASETS


def _root(path: Optional[str], split: str) -> Path:
    if not path:
        raise DataError("dataset 'folder' needs a path: --data folder:/my/images (one sub-folder per class, "
                        "optionally inside train/ and test/ or val/)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"folder:{root}: no such folder; expected one sub-folder per class "
                        "(optionally inside train/ and test/ or val/)")
    if (root / "train").is_dir():
        if split == "train":
            return root / "train"
        for name in ("test", "val"):
            if (root / name).is_dir():
                return root / name
        raise DataError(f"folder:{root}: has train/ but no test/ or val/ folder for the test split")
    if split == "test":
        raise DataError(f"folder:{root}: no train/ + test/ (or val/) sub-folders, so there is no test split")
    return root


def _stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.float().div_(255.0)
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())


@DATASETS.register("folder", description="image folder, one sub-folder per class (decoded once into memory)")
def load_folder_dataset(path: Optional[str], split: str, input_size: Optional[int] = None,
                        channels: Optional[int] = None) -> ImageDataset:
    root = _root(path, split)
    scan = scan_folder(root)  # listed once, for the size and the images
    size = input_size or min(folder_info(root, scan=scan)["sample_image_size"])
    images, labels, classes = load_folder_as_tensor(root, size, channels or 3, scan=scan)
    mean, std = _stats(images)
    return ImageDataset(images=images, labels=labels, num_classes=len(classes), mean=mean, std=std,
                        name=f"folder:{root}", classes=list(classes))
