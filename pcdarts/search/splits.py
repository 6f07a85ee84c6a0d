"""The data of a search: the dataset (seeded subset), its weight and architecture splits on
the device, and their loaders (the weight and architecture streams, an evaluation pass, and
fixed un-augmented batches for scorers)."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from pcdarts.config import Config
from pcdarts.data.device_loader import Augment, DeviceLoader
from pcdarts.data.sources import (
    default_augment,
    labels_fingerprint,
    load_dataset,
    split_indices,
)
from pcdarts.distributed import DistInfo, per_process_batch
from pcdarts.registry import METHODS


class SearchData:
    """The search's splits and loaders, built from the config on ``device``.

    Attributes:
        train_loader, arch_loader: the weight and architecture streams (this rank's shard).
        eval_loader: one un-augmented pass over the architecture split (this rank's shard).
        num_classes, in_channels, input_size: the network's shape.
        info: what the manifest records about the data.
    """

    def __init__(self, cfg: Config, device: torch.device, dist: DistInfo) -> None:
        d = cfg.data
        ds = load_dataset(d.spec, "train", input_size=d.input_size, channels=d.channels,
                          bad_images=None if d.bad_images == "fail" else d.bad_images)
        images, labels = ds.images, ds.labels
        split_seed = cfg.run.seed if d.split_seed is None else d.split_seed
        if d.max_samples is not None and d.max_samples < len(labels):
            g = torch.Generator().manual_seed(split_seed)
            keep = torch.randperm(len(labels), generator=g)[: d.max_samples]
            images, labels = images[keep], labels[keep]
        self.num_classes, self.in_channels, self.input_size = ds.num_classes, images.shape[1], images.shape[-1]
        pad, flip = default_augment(d.dataset, self.input_size)
        aug = Augment(crop_padding=pad if d.crop_padding is None else d.crop_padding,
                      flip=flip if d.flip is None else d.flip, cutout=d.cutout)
        self.common: dict[str, Any] = {"mean": ds.mean, "std": ds.std, "device": device, "rank": dist.rank,
                                       "world_size": dist.world_size, "channels_last": device.type == "cuda"}
        # one device copy per split: the loaders that read the same split share it
        if METHODS.get(cfg.method_name).needs_arch_split:
            w_idx, a_idx = split_indices(len(labels), d.train_portion, split_seed)
            weight_split = images[w_idx].to(device), labels[w_idx].to(device)
            arch_split = images[a_idx].to(device), labels[a_idx].to(device)
        else:
            w_idx = a_idx = torch.arange(len(labels))
            weight_split = arch_split = images.to(device), labels.to(device)
        s = cfg.search
        # search.batch_size is the global batch: each of the torchrun processes reads its share
        batch = per_process_batch(s.batch_size, dist.world_size, "search.batch_size")
        arch_field = "search.arch_batch_size" if s.arch_batch_size else "search.batch_size"
        arch_batch = per_process_batch(s.arch_batch_size or s.batch_size, dist.world_size, arch_field)
        self.train_loader = DeviceLoader(*weight_split, batch, augment=aug, seed=cfg.run.seed,
                                         batch_field="search.batch_size", **self.common)
        self.arch_loader = DeviceLoader(*arch_split, arch_batch, augment=aug, seed=cfg.run.seed + 1,
                                        batch_field=arch_field, **self.common)
        self.eval_loader = DeviceLoader(*arch_split, max(batch, 256), augment=None, shuffle=False,
                                        drop_last=False, **self.common)
        self.splits = {"train": weight_split, "arch": arch_split}
        self.info = {"dataset": d.spec, "fingerprint": labels_fingerprint(labels), "n_weight": len(w_idx),
                     "n_arch": len(a_idx), "augment": dataclasses.asdict(aug)}

    def fixed_batches(self, n: int, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``n`` batches of a fixed, un-augmented view of a whole split (every rank's images)."""
        if split not in self.splits:
            raise ValueError(f"sample_batches: split must be one of {', '.join(self.splits)}, got {split!r}")
        images, labels = self.splits[split]  # a fresh view each time: no loader position moves
        whole = {**self.common, "rank": 0, "world_size": 1}
        view = DeviceLoader(images, labels, self.eval_loader.batch_size, augment=None, shuffle=False,
                            drop_last=False, **whole)
        out = []
        for batch in view:
            if len(out) == n:
                break
            out.append(batch)
        return out


__all__ = ["SearchData"]
