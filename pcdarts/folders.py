"""Image-folder data (``root/<class_name>/<image>``) without torchvision.

Contents: :class:`ImageFolderDataset`; Pillow + torch transforms and the
``train_transform`` / ``eval_transform`` presets; :func:`make_folder_loader` (worker
processes with a fallback to in-process loading); :func:`folder_info` and
:func:`load_folder_as_tensor` (small datasets decoded once into memory); and
:func:`build_subset` / :func:`add_subset_subcommand`, the reproducible per-class
PC-DARTS ImageNet search subsets (``pcdarts subset SRC DST``).

Randomness of the random transforms: each takes ``rng`` (a ``random.Random`` or a
``torch.Generator``). With ``rng=None`` they draw from Python's global ``random``
module, which :func:`make_folder_loader` seeds in every worker process; with
``num_workers=0`` call ``random.seed(s)`` yourself or pass ``rng=random.Random(s)``.
Transform ``rng`` objects reachable from a dataset are re-seeded per worker too, so
workers never repeat one another's augmentations.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import pickle
import random
import shutil
import sys
import warnings
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import DataLoader, Dataset, get_worker_info

IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
LAYOUT = "root/<class_name>/<image file>, one sub-folder per class"
Rng = random.Random | torch.Generator | None


class FolderError(ValueError):
    """A folder that is missing, empty or not laid out as ``root/<class>/<image>``,
    or an image that cannot be read; the message names the path and the fix."""


# ----------------------------------------------------------------------------- scanning
def find_classes(root: str | os.PathLike) -> list[str]:
    """Sorted class-folder names under ``root`` (hidden folders are ignored).

    Raises:
        FolderError: ``root`` is missing, not a folder, or has no class sub-folders.
    """
    path = Path(root)
    if not path.is_dir():
        raise FolderError(f"{path}: no such folder; expected the layout {LAYOUT}")
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise FolderError(f"{path}: no class sub-folders found; expected the layout {LAYOUT}")
    return classes


def _images_in(folder: Path, extensions: Sequence[str]) -> list[str]:
    exts = tuple(e.lower() for e in extensions)
    return sorted(e.name for e in os.scandir(folder)
                  if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(exts))


def scan_folder(root: str | os.PathLike, extensions: Sequence[str] = IMG_EXTENSIONS,
                class_to_idx: dict[str, int] | None = None,
                ) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes and sorted ``(path, label)`` samples of an image folder.

    Raises:
        FolderError: bad layout, a class folder without images, or a class named in
            ``class_to_idx`` that has no folder.
    """
    path = Path(root)
    if class_to_idx is None:
        class_to_idx = {c: i for i, c in enumerate(find_classes(path))}
    samples: list[tuple[str, int]] = []
    for name, idx in sorted(class_to_idx.items(), key=lambda kv: (kv[1], kv[0])):
        folder = path / name
        if not folder.is_dir():
            raise FolderError(f"{folder}: class folder of class_to_idx entry {name!r} is missing;"
                              f" expected the layout {LAYOUT}")
        files = _images_in(folder, extensions)
        if not files:
            raise FolderError(f"{folder}: class folder has no images with extensions "
                              f"{', '.join(extensions)}; add images or remove the folder "
                              f"(expected the layout {LAYOUT})")
        samples.extend((str(folder / f), idx) for f in files)
    return sorted(class_to_idx, key=class_to_idx.__getitem__), samples


def _open_image(path: str, channels: int = 3) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError, SyntaxError) as exc:  # PIL raises all three on bad files
        raise FolderError(f"{path}: cannot read image ({exc}); replace or delete the file") from exc


class ImageFolderDataset(Dataset):
    """Images in ``root/<class_name>/<image>`` as ``(float tensor [C,H,W], label)``.

    Class names are sorted to give the labels and files are sorted within a class,
    so the order is deterministic. Images are decoded with Pillow as RGB (``"L"``
    when ``channels=1``).

    Args:
        root: the dataset folder.
        transform: called on the PIL image; defaults to :class:`ToTensor` (floats in [0,1]).
        extensions: accepted file-name endings (case-insensitive).
        class_to_idx: explicit class -> label mapping (only these classes are used).
        channels: 3 (RGB) or 1 (grey).
    """

    def __init__(self, root: str | os.PathLike, transform: Callable[[Image.Image], Any] | None = None,
                 extensions: Sequence[str] = IMG_EXTENSIONS,
                 class_to_idx: dict[str, int] | None = None, *, channels: int = 3) -> None:
        if channels not in (1, 3):
            raise ValueError(f"ImageFolderDataset: channels must be 1 or 3, got {channels}")
        self.root = str(root)
        self.transform = transform if transform is not None else ToTensor()
        self.channels = channels
        self.classes, self.samples = scan_folder(root, extensions, class_to_idx)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)} if class_to_idx is None \
            else dict(class_to_idx)
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        return self.transform(_open_image(path, self.channels)), label

    def __repr__(self) -> str:
        return (f"ImageFolderDataset(root={self.root!r}, classes={len(self.classes)}, "
                f"images={len(self)}, transform={self.transform!r})")


# --------------------------------------------------------------------------- transforms
def _unit(rng: Rng) -> float:
    """A uniform float in [0, 1) from ``rng`` (or the global ``random`` module)."""
    if rng is None:
        return random.random()
    if isinstance(rng, torch.Generator):
        return float(torch.rand((), generator=rng, dtype=torch.float64))
    return rng.random()


def _randint(rng: Rng, lo: int, hi: int) -> int:
    """A uniform integer in [lo, hi] (inclusive)."""
    return lo + min(int(_unit(rng) * (hi - lo + 1)), hi - lo)


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h <= 0 or w <= 0:
        raise ValueError(f"{name}: size must be positive, got {size}")
    return int(h), int(w)


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


class RandomResizedCrop:
    """Crop a random area fraction ``scale`` and aspect ratio ``ratio``, resize to ``size``.

    Tries 10 random boxes; if none fits, takes the largest centred box with the
    aspect ratio clamped to ``ratio``.
    """

    def __init__(self, size: int | Sequence[int], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), rng: Rng = None,
                 interpolation: int = Image.Resampling.BILINEAR) -> None:
        if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"RandomResizedCrop: need 0 < scale[0] <= scale[1] and 0 < ratio[0] "
                             f"<= ratio[1], got scale={scale}, ratio={ratio}")
        self.size, self.scale, self.ratio = _pair(size, "RandomResizedCrop"), scale, ratio
        self.rng, self.interpolation = rng, interpolation

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """A random ``(left, top, right, bottom)`` crop box for a ``width`` x ``height`` image."""
        area = width * height
        log_lo, log_hi = np.log(self.ratio[0]), np.log(self.ratio[1])
        for _ in range(10):
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * _unit(self.rng))
            aspect = float(np.exp(log_lo + (log_hi - log_lo) * _unit(self.rng)))
            w, h = round((target * aspect) ** 0.5), round((target / aspect) ** 0.5)
            if 0 < w <= width and 0 < h <= height:
                left, top = _randint(self.rng, 0, width - w), _randint(self.rng, 0, height - h)
                return left, top, left + w, top + h
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif aspect > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, img: Image.Image) -> Image.Image:
        h, w = self.size
        return img.resize((w, h), self.interpolation, box=self.box(*img.size))

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class RandomHorizontalFlip:
    """Mirror the image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5, rng: Rng = None) -> None:
        self.p, self.rng = p, rng

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if _unit(self.rng) < self.p else img

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ColorJitter:
    """Random brightness, contrast, saturation and hue changes, applied in random order.

    Brightness/contrast/saturation factors are drawn from ``[max(0, 1-x), 1+x]`` and
    applied with ``PIL.ImageEnhance``. Hue is approximated in Pillow's 8-bit HSV space:
    the H channel is rotated by ``round(f * 255)`` for ``f`` in ``[-hue, hue]`` (so the
    hue step is 1/256 of a turn). Saturation and hue leave grey (``"L"``) images alone.
    """

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.2, rng: Rng = None) -> None:
        if min(brightness, contrast, saturation) < 0 or not 0 <= hue <= 0.5:
            raise ValueError("ColorJitter: brightness/contrast/saturation must be >= 0 and hue in "
                             f"[0, 0.5], got {brightness}, {contrast}, {saturation}, {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.rng = rng

    def _factor(self, x: float) -> float:
        lo = max(0.0, 1.0 - x)
        return lo + (1.0 + x - lo) * _unit(self.rng)

    def __call__(self, img: Image.Image) -> Image.Image:
        keys = [_unit(self.rng) for _ in range(4)]
        for op in sorted(range(4), key=keys.__getitem__):
            if op == 0 and self.brightness > 0:
                img = ImageEnhance.Brightness(img).enhance(self._factor(self.brightness))
            elif op == 1 and self.contrast > 0:
                img = ImageEnhance.Contrast(img).enhance(self._factor(self.contrast))
            elif op == 2 and self.saturation > 0 and img.mode == "RGB":
                img = ImageEnhance.Color(img).enhance(self._factor(self.saturation))
            elif op == 3 and self.hue > 0 and img.mode == "RGB":
                shift = round((2 * _unit(self.rng) - 1) * self.hue * 255)
                h, s, v = img.convert("HSV").split()
                h = h.point([(i + shift) % 256 for i in range(256)])
                img = Image.merge("HSV", (h, s, v)).convert("RGB")
        return img

    def __repr__(self) -> str:
        return (f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, "
                f"saturation={self.saturation}, hue={self.hue})")


class Resize:
    """Resize the shorter side to ``size`` keeping the aspect ratio (or to ``(h, w)`` exactly)."""

    def __init__(self, size: int | Sequence[int],
                 interpolation: int = Image.Resampling.BILINEAR) -> None:
        _pair(size, "Resize")
        self.size, self.interpolation = size, interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if isinstance(self.size, int):
            s = self.size
            new = (s, max(1, int(s * h / w))) if w <= h else (max(1, int(s * w / h)), s)
        else:
            new = (int(self.size[1]), int(self.size[0]))
        return img if new == (w, h) else img.resize(new, self.interpolation)

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class CenterCrop:
    """Crop the centre ``size`` (int or ``(h, w)``); smaller images are padded with black."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size, "CenterCrop")

    def __call__(self, img: Image.Image) -> Image.Image:
        (ch, cw), (w, h) = self.size, img.size
        left, top = int(round((w - cw) / 2.0)), int(round((h - ch) / 2.0))
        return img.crop((left, top, left + cw, top + ch))

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


class ToTensor:
    """PIL image -> ``[C,H,W]`` tensor: ``uint8`` as is, or a float dtype scaled to [0, 1]."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode not in ("L", "RGB", "RGBA"):
            img = img.convert("RGB")
        arr = np.array(img, dtype=np.uint8, copy=True)
        t = torch.from_numpy(arr[:, :, None] if arr.ndim == 2 else arr).permute(2, 0, 1).contiguous()
        return t if self.dtype == torch.uint8 else t.to(self.dtype).div_(255.0)

    def __repr__(self) -> str:
        return f"ToTensor(dtype={self.dtype})"


class Normalize:
    """``(x - mean) / std`` per channel of a float ``[C,H,W]`` (or ``[N,C,H,W]``) tensor."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"Normalize: mean and std need one value per channel and std > 0, "
                             f"got mean={tuple(mean)}, std={tuple(std)}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_floating_point(x):
            raise TypeError(f"Normalize: needs a float tensor, got {x.dtype}; put ToTensor() "
                            "(float) before Normalize")
        if x.shape[-3] != self.mean.shape[0]:
            raise ValueError(f"Normalize: image has {x.shape[-3]} channels but mean/std have "
                             f"{self.mean.shape[0]} values; pass one mean/std value per channel")
        return (x - self.mean.to(x)) / self.std.to(x)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def train_transform(size: int, jitter: bool = True, *, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD,
                    scale: tuple[float, float] = (0.08, 1.0), rng: Rng = None) -> Compose:
    """RandomResizedCrop + horizontal flip (+ ColorJitter) -> float tensor -> normalise."""
    steps: list[Callable[[Any], Any]] = [RandomResizedCrop(size, scale=scale, rng=rng),
                                          RandomHorizontalFlip(rng=rng)]
    if jitter:
        steps.append(ColorJitter(rng=rng))
    return Compose([*steps, ToTensor(), Normalize(mean, std)])


def eval_transform(size: int, resize: int | None = None, *, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> Compose:
    """Resize the shorter side to ``resize`` (default ``int(size / 0.875)``), centre-crop
    ``size`` -> float tensor -> normalise."""
    resize = int(size / 0.875) if resize is None else resize
    return Compose([Resize(resize), CenterCrop(size), ToTensor(), Normalize(mean, std)])


# ------------------------------------------------------------------------------ loading
def _reseed_transforms(root: Any, seed: int) -> None:
    """Re-seed every transform ``rng`` reachable from a dataset (distinct seed per rng)."""
    stack, seen, count = [root], set(), 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or obj is None:
            continue
        seen.add(id(obj))
        rng = getattr(obj, "rng", None)
        if isinstance(rng, (random.Random, torch.Generator)) and id(rng) not in seen:
            seen.add(id(rng))
            if isinstance(rng, random.Random):
                rng.seed(seed + count)
            else:
                rng.manual_seed(seed + count)
            count += 1
        children = [getattr(obj, "transform", None), getattr(obj, "dataset", None),
                    *(getattr(obj, "transforms", None) or [])]
        stack.extend(reversed(children))  # visit in order, so seeds follow the pipeline order


def seed_worker(worker_id: int, base_seed: int = 0) -> None:
    """``worker_init_fn``: seed ``random``, numpy, torch and transform rngs in a worker.

    The seed mixes ``base_seed``, the worker id and ``torch.initial_seed()`` (which the
    DataLoader draws from its seeded generator each epoch), so it is reproducible for
    a given base seed yet differs between workers and epochs.
    """
    digest = hashlib.sha256(f"{base_seed}:{worker_id}:{torch.initial_seed()}".encode()).digest()
    seed = int.from_bytes(digest[:4], "big")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    info = get_worker_info()
    if info is not None:
        _reseed_transforms(info.dataset, seed)


_SHM_WORDS = ("shared memory", "shm", "bus error", "sem_open")
_START_WORDS = ("worker", "fork", "spawn", "killed by signal", "exited unexpectedly", "pickl")


def _is_worker_start_failure(exc: BaseException) -> bool:
    msg = str(exc).lower()
    if "original traceback" in msg:  # raised by dataset code inside a worker
        return any(w in msg for w in _SHM_WORDS)
    if isinstance(exc, (OSError, ImportError, pickle.PicklingError)):
        return True
    if isinstance(exc, (RuntimeError, AttributeError, ValueError, TypeError)):
        return any(w in msg for w in _SHM_WORDS + _START_WORDS)
    return False


class FolderLoader(DataLoader):
    """A DataLoader that falls back to ``num_workers=0`` (with a warning) when its
    worker processes fail to start or to deliver the first batch of an epoch.
    Failures later in an epoch are raised as usual."""

    _fallback: DataLoader | None = None

    def __iter__(self) -> Iterator[Any]:
        if self._fallback is not None:
            return iter(self._fallback)
        if self.num_workers == 0:
            return super().__iter__()
        it = None
        try:
            it = super().__iter__()
            first = next(it)
        except StopIteration:
            return iter(())
        except Exception as exc:  # noqa: BLE001 - filtered just below
            if not _is_worker_start_failure(exc):
                raise
            self._use_fallback(f"{type(exc).__name__}: {exc}", it)
            return iter(self._fallback)
        return itertools.chain((first,), it)

    def _use_fallback(self, why: str, it: Any) -> None:
        warnings.warn(f"make_folder_loader: {self.num_workers} worker processes failed to start "
                      f"({why.strip().splitlines()[0]}); falling back to num_workers=0 (loading in "
                      "the main process, slower)", RuntimeWarning, stacklevel=3)
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._iterator = None
        self._fallback = DataLoader(self.dataset, batch_sampler=self.batch_sampler, num_workers=0,
                                    collate_fn=self.collate_fn, pin_memory=self.pin_memory)


def make_folder_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, num_workers: int = 4,
                       seed: int = 0, drop_last: bool = False, pin_memory: bool | None = None,
                       persistent_workers: bool = True) -> DataLoader:
    """A seeded DataLoader over an image dataset with a safe worker fallback.

    Args:
        dataset: e.g. an :class:`ImageFolderDataset`.
        batch_size: samples per batch (> 0).
        shuffle: reshuffle each epoch with a generator seeded by ``seed``.
        num_workers: worker processes; more than ``os.cpu_count()`` warns and uses 0.
            If the workers cannot start (OSError, shared-memory RuntimeError, fork
            forbidden, pickling), the loader warns and loads in the main process.
        seed: seeds the shuffling generator and (via :func:`seed_worker`) the workers.
        drop_last: drop the last incomplete batch.
        pin_memory: pin host memory; ``None`` means "when CUDA is available".
        persistent_workers: keep workers alive between epochs (only when ``num_workers > 0``).
    """
    if batch_size <= 0 or num_workers < 0:
        raise ValueError(f"make_folder_loader: need batch_size > 0 and num_workers >= 0, got "
                         f"batch_size={batch_size}, num_workers={num_workers}")
    cpus = os.cpu_count() or 1
    if num_workers > cpus:
        warnings.warn(f"make_folder_loader: num_workers={num_workers} exceeds os.cpu_count()={cpus};"
                      " falling back to num_workers=0 (set num_workers <= the CPU count)",
                      RuntimeWarning, stacklevel=2)
        num_workers = 0
    generator = torch.Generator()
    generator.manual_seed(seed)
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {"worker_init_fn": _WorkerInit(seed), "persistent_workers": persistent_workers}
    return FolderLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                        drop_last=drop_last, generator=generator,
                        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                        **extra)


class _WorkerInit:
    """Picklable ``worker_init_fn`` bound to a base seed."""

    def __init__(self, base_seed: int) -> None:
        self.base_seed = base_seed

    def __call__(self, worker_id: int) -> None:
        seed_worker(worker_id, self.base_seed)


# ------------------------------------------------------------------------ in-memory data
def folder_info(root: str | os.PathLike, extensions: Sequence[str] = IMG_EXTENSIONS) -> dict[str, Any]:
    """Summary of an image folder: ``num_classes``, ``classes``, ``counts`` (per class),
    ``num_images``, ``sample_image_size`` ((width, height) of the first image) and
    ``sample_image_mode``."""
    classes, samples = scan_folder(root, extensions)
    counts = {c: 0 for c in classes}
    for _, label in samples:
        counts[classes[label]] += 1
    try:
        with Image.open(samples[0][0]) as img:
            size, mode = img.size, img.mode
    except (OSError, ValueError, SyntaxError) as exc:
        raise FolderError(f"{samples[0][0]}: cannot read image ({exc}); replace or delete it") from exc
    return {"root": str(root), "num_classes": len(classes), "classes": classes, "counts": counts,
            "num_images": len(samples), "sample_image_size": size, "sample_image_mode": mode}


def load_folder_as_tensor(root: str | os.PathLike, size: int, channels: int = 3, *,
                          resize: int | None = None, max_bytes: int = 4 * 2**30,
                          extensions: Sequence[str] = IMG_EXTENSIONS,
                          ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode a whole image folder once into memory for the fast device-resident loader.

    Each image has its shorter side resized to ``resize`` (default ``size``) and its
    centre ``size`` x ``size`` cropped. Memory cost: ``N * channels * size * size``
    bytes (uint8), e.g. 50,000 RGB images at 64 px take ~0.6 GB.

    Returns:
        ``(images uint8 [N,C,size,size], labels int64 [N], classes)``.

    Raises:
        FolderError: bad layout, unreadable image, or the tensor would exceed ``max_bytes``.
    """
    if channels not in (1, 3):
        raise ValueError(f"load_folder_as_tensor: channels must be 1 or 3, got {channels}")
    classes, samples = scan_folder(root, extensions)
    need = len(samples) * channels * size * size
    if need > max_bytes:
        raise FolderError(f"{root}: {len(samples)} images at {channels}x{size}x{size} need "
                          f"{need / 2**30:.2f} GiB, above max_bytes={max_bytes / 2**30:.2f} GiB; "
                          "use the streaming loader (ImageFolderDataset + make_folder_loader) or "
                          "raise max_bytes")
    prep = Compose([Resize(size if resize is None else resize), CenterCrop(size),
                    ToTensor(torch.uint8)])
    images = torch.empty((len(samples), channels, size, size), dtype=torch.uint8)
    for i, (path, _) in enumerate(samples):
        images[i] = prep(_open_image(path, channels))
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return images, labels, classes


# -------------------------------------------------------------------------------- subset
LINK_MODES = ("symlink", "hardlink", "copy")


def _round_half_up(n: int, fraction: float) -> int:
    return int((Decimal(n) * Decimal(repr(fraction))).to_integral_value(rounding=ROUND_HALF_UP))


def _class_rng(seed: int, name: str) -> random.Random:
    digest = hashlib.sha256(f"pcdarts-subset:{seed}:{name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _place(src: Path, dst: Path, link: str) -> None:
    try:
        if link == "symlink":
            os.symlink(src.resolve(), dst)
        elif link == "hardlink":
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)
    except OSError as exc:
        hint = "" if link == "copy" else "; try --link copy"
        raise OSError(f"cannot {link} {src} -> {dst}: {exc}{hint}") from exc


def build_subset(src: str | os.PathLike, dst: str | os.PathLike, train: float = 0.1,
                 arch: float = 0.025, seed: int = 0, link: str = "symlink",
                 overwrite: bool = False) -> dict[str, Any]:
    """Build the per-class PC-DARTS search subsets ``dst/train`` and ``dst/arch``.

    For every class folder of ``src`` with ``n`` images, ``max(1, round_half_up(n *
    train))`` images go to ``dst/train/<class>/`` and a disjoint ``max(1,
    round_half_up(n * arch))`` to ``dst/arch/<class>/`` (if rounding makes them exceed
    ``n``, the arch, then the train count is reduced so both keep >= 1 image). Each
    class is sampled with its own RNG seeded from sha256(seed, class name), so adding
    or removing classes leaves the other classes' picks unchanged. ``dst/subset.json``
    records the seed, fractions, counts, source and chosen files.

    Args:
        src: ImageNet-style folder ``src/<class>/<image>``.
        dst: output folder; must be empty or absent unless ``overwrite``.
        train: fraction of each class for the weight-training split, in (0, 1).
        arch: fraction for the architecture split, in (0, 1); ``train + arch <= 1``.
        seed: base seed.
        link: ``"symlink"`` (default), ``"hardlink"`` or ``"copy"``.
        overwrite: replace ``dst/train``, ``dst/arch`` and ``dst/subset.json`` (other
            files in ``dst`` are left alone).

    Returns:
        The ``subset.json`` content as a dict.
    """
    if not (0 < train < 1 and 0 < arch < 1) or train + arch > 1 + 1e-12:
        raise ValueError(f"subset fractions must each be in (0, 1) with train + arch <= 1, got "
                         f"train={train}, arch={arch}")
    if link not in LINK_MODES:
        raise ValueError(f"subset link must be one of {', '.join(LINK_MODES)}, got {link!r}")
    src_p, dst_p = Path(src).resolve(), Path(dst).resolve()
    if dst_p == src_p or src_p in dst_p.parents:
        raise ValueError(f"subset destination {dst_p} lies inside the source {src_p}; pick a "
                         "folder outside it")
    classes, samples = scan_folder(src_p)
    if dst_p.exists() and not dst_p.is_dir():
        raise FileExistsError(f"subset destination {dst_p} exists and is not a folder")
    if dst_p.is_dir() and any(dst_p.iterdir()):
        if not overwrite:
            raise FileExistsError(f"subset destination {dst_p} is not empty; choose an empty "
                                  "folder or pass --overwrite (overwrite=True)")
        for sub in ("train", "arch"):
            if (dst_p / sub).is_symlink() or (dst_p / sub).is_file():
                (dst_p / sub).unlink()
            elif (dst_p / sub).exists():
                shutil.rmtree(dst_p / sub)
        (dst_p / "subset.json").unlink(missing_ok=True)
    by_class: dict[int, list[str]] = {}
    for path, label in samples:
        by_class.setdefault(label, []).append(os.path.basename(path))
    counts: dict[str, dict[str, int]] = {}
    files: dict[str, dict[str, list[str]]] = {"train": {}, "arch": {}}
    for label, name in enumerate(classes):
        names = by_class[label]
        n = len(names)
        if n < 2:
            raise FolderError(f"{src_p / name}: class has {n} image; need at least 2 for disjoint "
                              "train and arch samples")
        k_train, k_arch = max(1, _round_half_up(n, train)), max(1, _round_half_up(n, arch))
        k_arch = min(k_arch, n - k_train)
        if k_arch < 1:
            k_train, k_arch = n - 1, 1
        picked = _class_rng(seed, name).sample(names, k_train + k_arch)
        files["train"][name], files["arch"][name] = sorted(picked[:k_train]), sorted(picked[k_train:])
        counts[name] = {"total": n, "train": k_train, "arch": k_arch}
    for split in ("train", "arch"):
        for name in classes:
            out = dst_p / split / name
            out.mkdir(parents=True, exist_ok=True)
            for fname in files[split][name]:
                _place(src_p / name / fname, out / fname, link)
    record = {"version": 1, "source": str(src_p), "seed": seed,
              "fractions": {"train": train, "arch": arch}, "link": link,
              "num_classes": len(classes),
              "totals": {s: sum(c[s] for c in counts.values()) for s in ("total", "train", "arch")},
              "counts": counts, "files": files}
    (dst_p / "subset.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def _subset_main(args: argparse.Namespace) -> int:
    try:
        record = build_subset(args.src, args.dst, train=args.train, arch=args.arch, seed=args.seed,
                              link=args.link, overwrite=args.overwrite)
    except (ValueError, OSError) as exc:
        print(f"pcdarts subset: error: {exc}", file=sys.stderr)
        return 2
    t = record["totals"]
    print(f"pcdarts subset: {record['num_classes']} classes, {t['train']} train + {t['arch']} arch "
          f"images of {t['total']} ({args.link}) -> {args.dst} (see subset.json)")
    return 0


def add_subset_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``subset SRC DST`` to an argparse subparsers object; sets ``func`` to a handler
    that takes the parsed args and returns an exit code (0 ok, 2 error)."""
    p = subparsers.add_parser(
        "subset", help="build the per-class PC-DARTS ImageNet search subsets",
        description="Sample, for every class folder of SRC, a fraction of images into "
                    "DST/train/<class>/ and a disjoint fraction into DST/arch/<class>/, "
                    "reproducibly per class; writes DST/subset.json.")
    p.add_argument("src", metavar="SRC", help="image folder laid out as SRC/<class>/<image>")
    p.add_argument("dst", metavar="DST", help="output folder (must be empty unless --overwrite)")
    p.add_argument("--train", type=float, default=0.1, help="fraction per class for train (0.1)")
    p.add_argument("--arch", type=float, default=0.025, help="fraction per class for arch (0.025)")
    p.add_argument("--seed", type=int, default=0, help="base seed (0)")
    p.add_argument("--link", choices=LINK_MODES, default="symlink",
                   help="how files are placed (symlink)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DST/train, DST/arch and DST/subset.json in a non-empty DST")
    p.set_defaults(func=_subset_main)
    return p
