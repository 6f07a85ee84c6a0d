"""Device-resident loader for in-memory image tensors.

The whole set is moved once to the device as uint8; every batch is gathered, augmented
(pad-crop, flip, cutout) and normalised there with batched tensor ops. There are no
worker processes and no per-sample Python loops.

All randomness (the per-epoch permutation and every augmentation draw) comes from one
seeded CPU ``torch.Generator``; the small random tensors are moved to the device. A run
therefore gives the same batches on CPU and GPU, and :meth:`DeviceLoader.state_dict`
captures everything needed to resume mid-epoch bit-identically.

What must not live here: dataset parsing (``data``) and device selection policy
(``distributed``); this module only follows the ``device`` it is given.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pcdarts.data.sources import DataError

__all__ = ["Augment", "DeviceLoader", "normalise"]


@dataclass(frozen=True)
class Augment:
    """Batched training augmentations.

    Attributes:
        crop_padding: random crop after zero padding by this many pixels per side
            (4 for CIFAR); 0 turns it off.
        flip: random horizontal flip with probability 1/2.
        cutout: side of the square zeroed after normalisation (centre uniform over the
            image, clipped at the borders); 0 turns it off.
    """

    crop_padding: int = 0
    flip: bool = False
    cutout: int = 0

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise DataError(f"Augment.crop_padding must be >= 0, got {self.crop_padding}")
        if self.cutout < 0:
            raise DataError(f"Augment.cutout must be >= 0, got {self.cutout}")

    @property
    def is_identity(self) -> bool:
        """True when no augmentation is switched on."""
        return self.crop_padding == 0 and not self.flip and self.cutout == 0


def normalise(x: torch.Tensor, mean: torch.Tensor | Sequence[float], std: torch.Tensor | Sequence[float]
              ) -> torch.Tensor:
    """The one normalisation of uint8 images [B, C, H, W]: ``(x / 255 - mean) / std`` per
    channel, in float32 (``mean``/``std`` in [0, 1] units, as ``ImageDataset.mean``/``std``)."""
    c = x.shape[1]
    m = mean if isinstance(mean, torch.Tensor) else torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
    s = std if isinstance(std, torch.Tensor) else torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
    return (x.float() / 255.0 - m.to(x.device)) / s.to(x.device)


def _channel_tensor(values: float | Sequence[float], channels: int, field: str, device: torch.device) -> torch.Tensor:
    vals = [float(values)] * channels if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(vals) != channels:
        raise DataError(f"DeviceLoader: {field} has {len(vals)} values but the images have {channels} channels")
    if field == "std" and min(vals) <= 0:
        raise DataError(f"DeviceLoader: every std value must be > 0, got {vals}")
    return torch.tensor(vals, dtype=torch.float32, device=device).view(1, channels, 1, 1)


class DeviceLoader:
    """A persistent, cycling, resumable batch iterator over device-resident images.

    Args:
        images: uint8 [N, C, H, W] images (any device; moved once to ``device``).
        labels: integer [N] labels.
        batch_size: samples per batch.
        mean: per-channel mean in [0, 1] units (pixel / 255); a scalar is broadcast.
        std: per-channel standard deviation in the same units.
        augment: augmentations to apply; None or ``Augment()`` for none.
        shuffle: draw a fresh random permutation each epoch (else keep the order).
        drop_last: drop the final partial batch of every epoch. With ``drop_last`` a
            ``batch_size`` larger than this rank's share of samples raises
            :class:`DataError` (no silent clamping).
        seed: seed of the CPU generator behind shuffling and augmentation.
        device: where the data and the batches live.
        rank: this process's rank; with ``world_size > 1`` every rank builds the same
            permutation and keeps ``perm[rank::world_size]``, truncated to
            ``N // world_size`` so all ranks run the same number of steps.
        world_size: number of ranks.
        channels_last: return batches in ``torch.channels_last`` memory format.

    Attributes:
        steps_per_epoch: batches per epoch for this rank.
        epoch: index of the epoch batches are currently drawn from (starts at 0).
        position: batches already drawn from that epoch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        mean: float | Sequence[float],
        std: float | Sequence[float],
        augment: Augment | None = None,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        batch_field: str = "",
    ) -> None:
        """``batch_field``: the config field the (global) batch size comes from, named in the
        error when the data holds no full batch."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(
                f"DeviceLoader: images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(f"DeviceLoader: labels must be [N] with N={images.shape[0]}, got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex():
            raise DataError(f"DeviceLoader: labels must be integers, got {labels.dtype}")
        if int(batch_size) < 1:
            raise DataError(f"DeviceLoader: batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"DeviceLoader: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.device = torch.device(device)
        self.images = images.to(self.device, torch.uint8).contiguous()  # [N, C, H, W], stays uint8
        self.labels = labels.to(self.device, torch.int64)  # [N]
        self.batch_size = int(batch_size)
        self.augment = augment or Augment()
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        channels = int(images.shape[1])
        self._mean = _channel_tensor(mean, channels, "mean", self.device)
        self._std = _channel_tensor(std, channels, "std", self.device)

        self.num_samples = int(images.shape[0]) // world_size  # this rank's share per epoch
        if self.num_samples == 0:
            raise DataError(f"DeviceLoader: {images.shape[0]} samples cannot be sharded over {world_size} ranks")
        if drop_last and self.batch_size > self.num_samples:
            if batch_field:  # a config field the user can change
                raise DataError(
                    f"{batch_field}={self.batch_size * world_size} is larger than the {images.shape[0]} images "
                    f"this loader reads per epoch, so no full batch would be drawn; lower {batch_field} or use "
                    "more images (data.max_samples, data.train_portion)")
            raise DataError(
                f"DeviceLoader: batch_size {self.batch_size} is larger than the {self.num_samples} samples per "
                f"epoch{' on this rank' if world_size > 1 else ''}; with drop_last=True no batch would be produced - "
                "lower batch_size or pass drop_last=False"
            )
        full, rest = divmod(self.num_samples, self.batch_size)
        self.steps_per_epoch = full + (1 if rest and not drop_last else 0)

        self._gen = torch.Generator().manual_seed(self.seed)
        self.epoch = 0
        self.position = 0
        self._new_order()

    # ------------------------------------------------------------------ epochs

    def _new_order(self) -> None:
        """Draw this epoch's permutation (same on every rank) and keep this rank's shard."""
        n_total = int(self.images.shape[0])
        perm = torch.randperm(n_total, generator=self._gen) if self.shuffle else torch.arange(n_total)
        self._set_order(perm)

    def _set_order(self, perm: torch.Tensor) -> None:
        """Keep the epoch's global permutation and this rank's shard of it (on the device)."""
        self._perm = perm
        self._put_order(perm[self.rank :: self.world_size][: self.num_samples].contiguous())

    def _put_order(self, order: torch.Tensor) -> None:
        """This rank's order: on the CPU for state_dict, and on the device for the batches."""
        self._order = order
        if self.device.type == "cuda":  # pinned + non_blocking: no host sync at an epoch boundary
            self._order_dev = self._order.pin_memory().to(self.device, non_blocking=True)
        else:
            self._order_dev = self._order.to(self.device)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield one epoch of batches through :meth:`next`.

        From an epoch boundary this is exactly ``steps_per_epoch`` batches; after a
        mid-epoch resume it is the rest of the current epoch.
        """
        remaining = self.steps_per_epoch if self.position in (0, self.steps_per_epoch) else (
            self.steps_per_epoch - self.position)
        for _ in range(remaining):
            yield self.next()

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the next batch, starting a new epoch when the current one is used up.

        Returns:
            ``(x, y)``: float32 normalised images [B, C, H, W] and int64 labels [B],
            both on the loader's device.
        """
        if self.position >= self.steps_per_epoch:
            self.epoch += 1
            self.position = 0
            self._new_order()
        start = self.position * self.batch_size
        idx = self._order_dev[start : start + self.batch_size]
        self.position += 1
        x = self.images[idx]  # uint8 [B, C, H, W]
        y = self.labels[idx]
        return self._transform(x), y

    # ------------------------------------------------------------------ augmentation

    def _draws(self, b: int, h: int, w: int) -> dict[str, torch.Tensor]:
        """Draw every random number this batch needs on the CPU generator, in a fixed order."""
        aug, g = self.augment, self._gen
        draws: dict[str, torch.Tensor] = {}
        if aug.crop_padding:
            draws["crop"] = torch.randint(0, 2 * aug.crop_padding + 1, (2, b), generator=g)  # [dy; dx]
        if aug.flip:
            draws["flip"] = torch.randint(0, 2, (b,), generator=g)
        if aug.cutout:
            draws["cut"] = torch.stack([torch.randint(0, h, (b,), generator=g), torch.randint(0, w, (b,), generator=g)])
        return {k: v.to(self.device, non_blocking=True) for k, v in draws.items()}

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        aug = self.augment
        draws = self._draws(b, h, w) if not aug.is_identity else {}
        if "crop" in draws:
            x = _pad_crop(x, draws["crop"], aug.crop_padding)
        if "flip" in draws:
            x = torch.where(draws["flip"].view(b, 1, 1, 1).bool(), x.flip(3), x)
        if self.channels_last:
            # convert while still uint8 (4x less to move); the float ops below keep the layout
            x = x.contiguous(memory_format=torch.channels_last)
        out = normalise(x, self._mean, self._std)
        if "cut" in draws:
            out = out.masked_fill(_cutout_mask(draws["cut"], aug.cutout, h, w).unsqueeze(1), 0.0)
            if self.channels_last:  # masked_fill with a broadcast mask falls back to NCHW
                out = out.contiguous(memory_format=torch.channels_last)
        return out

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: generator state, epoch, position, this rank's
        order and the epoch's global permutation (so another number of ranks can take over)."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "order": self._order.clone(),
            "perm": self._perm.clone(),
            "generator": self._gen.get_state(),
            "seed": self.seed,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the next batches equal an uninterrupted run's.

        A state saved by another number of ranks is resharded when the global batch
        (``batch_size x world_size``) is the same: after ``p`` steps the ranks together have
        read exactly the first ``p x global batch`` entries of the epoch's permutation
        (rank r reads entries r, r + W, ...), so the new ranks continue with the entries not
        yet read, at the same step. The epoch's order and the generator carry over; what
        follows is deterministic but not bit-identical to a run that kept its rank count
        (the augmentation draws per batch differ in number).

        Raises:
            DataError: the state was saved by a loader with a different sample count,
                batch size or sharding (and cannot be resharded), or it lacks a field.
        """
        for key in ("num_samples", "batch_size", "rank", "world_size"):
            if key not in state:
                raise DataError(
                    f"DeviceLoader.load_state_dict: state has no {key!r} field; was it saved by state_dict()?"
                )
        if (state["world_size"], state["rank"]) != (self.world_size, self.rank):
            self._load_resharded(state)
            return
        for key in ("num_samples", "batch_size"):
            if state[key] != getattr(self, key):
                raise DataError(
                    f"DeviceLoader.load_state_dict: saved {key}={state[key]} but this loader has "
                    f"{key}={getattr(self, key)}; build the loader with the same data and settings"
                )
        order = torch.as_tensor(state["order"], dtype=torch.int64).cpu()
        if order.shape != (self.num_samples,):
            raise DataError(f"DeviceLoader.load_state_dict: 'order' has shape {tuple(order.shape)}, "
                            f"expected ({self.num_samples},)")
        self._restore_common(state)
        if "perm" in state:
            self._set_order(torch.as_tensor(state["perm"], dtype=torch.int64).cpu())
        else:  # saved before the global permutation was kept: this rank's order is all there is
            self._perm = order.clone()
            self._put_order(order.clone())

    def _load_resharded(self, state: dict[str, Any]) -> None:
        saved_global = int(state["batch_size"]) * int(state["world_size"])
        if saved_global != self.batch_size * self.world_size:
            raise DataError(
                f"DeviceLoader.load_state_dict: the state was saved by {state['world_size']} rank(s) x "
                f"{state['batch_size']} images (global batch {saved_global}); this loader has {self.world_size} "
                f"x {self.batch_size} = {self.batch_size * self.world_size}: keep the global batch to change the "
                "number of processes")
        if "perm" not in state:
            raise DataError("DeviceLoader.load_state_dict: the state has no global permutation ('perm'), so it "
                            f"can only be resumed by {state['world_size']} rank(s)")
        perm = torch.as_tensor(state["perm"], dtype=torch.int64).cpu()
        if perm.shape != self.images.shape[:1]:
            raise DataError(f"DeviceLoader.load_state_dict: 'perm' has {perm.shape[0]} entries but the loader has "
                            f"{self.images.shape[0]} samples; build the loader with the same data")
        self._restore_common(state)
        self._set_order(perm)
        self.position = min(self.position, self.steps_per_epoch)

    def _restore_common(self, state: dict[str, Any]) -> None:
        self._gen.set_state(state["generator"])
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


def _pad_crop(x: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Random crops of a zero-padded batch by index arithmetic.

    Args:
        x: uint8 [B, C, H, W].
        offsets: [2, B] top-left corners (dy, dx) in the padded image, each in [0, 2*pad].
        pad: padding per side.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # [B, C, H+2p, W+2p], zeros
    dev = x.device
    rows = offsets[0].view(b, 1) + torch.arange(h, device=dev)  # [B, H]
    cols = offsets[1].view(b, 1) + torch.arange(w, device=dev)  # [B, W]
    bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
    ci = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def _cutout_mask(centres: torch.Tensor, size: int, h: int, w: int) -> torch.Tensor:
    """Bool [B, H, W] mask, True inside each sample's square (clipped at the borders).

    Args:
        centres: [2, B] square centres (cy, cx).
        size: side of the square.
    """
    dev = centres.device
    top = centres[0].view(-1, 1) - size // 2  # [B, 1]
    left = centres[1].view(-1, 1) - size // 2
    ys = torch.arange(h, device=dev).view(1, h)
    xs = torch.arange(w, device=dev).view(1, w)
    in_rows = (ys >= top) & (ys < top + size)  # [B, H]
    in_cols = (xs >= left) & (xs < left + size)  # [B, W]
    return in_rows.unsqueeze(2) & in_cols.unsqueeze(1)  # [B, H, W]
