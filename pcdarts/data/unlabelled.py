"""The ``unlabelled`` dataset: a folder of images without classes, for label-free search.

``unlabelled:DIR`` reads every image under ``DIR`` (sub-folders included, their names
ignored; hidden files and folders skipped), or under ``DIR/train`` (with ``DIR/test`` or
``DIR/val`` as the test split) when it exists: the layout rule of the ``folder`` source.
Images are decoded once, resized (shorter side) and centre-cropped to ``input_size`` like the
``folder`` source, and kept in memory as uint8 for the device-resident loader.

There are no labels: every label is :data:`UNLABELLED` (-1), a placeholder the loaders carry
and no label-free objective reads, and the loader is marked ``labelled = False``, so a search
with an objective that reads labels (cross-entropy) is refused by the config check before
anything runs. ``num_classes`` is 1 (the supernet's unused classifier, and the evaluation
network whose size the search reports, get one output).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from pcdarts.data.folder_source import split_root
from pcdarts.data.folders import IMG_EXTENSIONS, folder_info, load_folder_as_tensor
from pcdarts.data.sources import DataError, ImageDataset, channel_stats
from pcdarts.registry import DATASETS

UNLABELLED = -1  # the label of every image of an unlabelled set


def list_images(root: Path) -> list[str]:
    """Every image file under ``root``, in sorted relative-path order (hidden entries skipped)."""
    exts = tuple(e.lower() for e in IMG_EXTENSIONS)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(folder, f) for f in files if not f.startswith(".") and f.lower().endswith(exts)]
    return sorted(found, key=lambda p: Path(p).relative_to(root).parts)


def _root(path: Optional[str], split: str) -> Path:
    if not path:
        raise DataError("--data unlabelled:DIR needs the image folder, e.g. --data unlabelled:/my/images "
                        "(every image under it, sub-folders included; no classes)")
    return split_root(path, split, "unlabelled")


@DATASETS.register("unlabelled", description="images without labels: every image under a folder "
                                             "(label-free objectives, e.g. --objective mae)")
def load_unlabelled(path: Optional[str], split: str, input_size: Optional[int] = None,
                    channels: Optional[int] = None, bad_images: Optional[str] = None) -> ImageDataset:
    root = _root(path, split)
    files = list_images(root)
    if not files:
        raise DataError(f"unlabelled:{root}: no images with extensions {', '.join(IMG_EXTENSIONS)} under it")
    scan = (["unlabelled"], [(f, 0) for f in files])  # the folder reader's scan, one pseudo-class
    size = input_size or min(folder_info(root, scan=scan, on_bad=bad_images or "fail")["sample_image_size"])
    images, _, _ = load_folder_as_tensor(root, size, channels or 3, scan=scan, on_bad=bad_images or "fail")
    mean, std = channel_stats(images)
    labels = torch.full((images.shape[0],), UNLABELLED, dtype=torch.int64)
    return ImageDataset(images=images, labels=labels, num_classes=1, mean=mean, std=std,
                        name=f"unlabelled:{root}", classes=None)


load_unlabelled.labelled = False  # type: ignore[attr-defined]  (read by config.validate)

__all__ = ["UNLABELLED", "list_images", "load_unlabelled"]
