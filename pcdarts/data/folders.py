"""Image-folder data (``root/<class_name>/<image>``) without torchvision.

Contents: :class:`ImageFolderDataset`; :func:`make_folder_loader` (worker processes with
a fallback to in-process loading); :func:`folder_info` and :func:`load_folder_as_tensor`
(small datasets decoded once into memory). Listing a big folder takes seconds to minutes,
so these three accept an already-made :func:`scan_folder` result (``scan=``), and
:func:`select_classes` re-labels one, to list each folder only once. The transforms and the
train/eval presets are in :mod:`pcdarts.data.transforms`; the PC-DARTS search subsets
(``pcdarts subset``) in :mod:`pcdarts.data.subset`.

Randomness: :func:`make_folder_loader` seeds Python's global ``random`` module (which the
random transforms use with ``rng=None``) in every worker process, and re-seeds the
transform ``rng`` objects reachable from a dataset per worker too, so workers never
repeat one another's augmentations (see :mod:`pcdarts.data.transforms`).
"""
from __future__ import annotations

import hashlib
import itertools
import os
import pickle
import random
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info

from pcdarts.data.config import BAD_IMAGES
from pcdarts.errors import PcdartsError
from pcdarts.data.transforms import CenterCrop, Compose, Resize, ToTensor

IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
LAYOUT = "root/<class_name>/<image file>, one sub-folder per class"
Scan = tuple[list[str], list[tuple[str, int]]]  # what scan_folder returns: (classes, [(path, label), ...])


class FolderError(PcdartsError, ValueError):
    """A folder that is missing, empty or not laid out as ``root/<class>/<image>``,
    or an image that cannot be read; the message names the path and the fix."""


# ----------------------------------------------------------------------------- scanning
def split_roots(path: str | os.PathLike | None, test_path: str | os.PathLike | None = None,
                field: str = "data.path") -> tuple[Path, Path | None]:
    """(train folder, test folder or None) of an image-folder dataset: ``path/train`` with
    ``path/test`` or ``path/val``, else ``path`` itself (no test split); ``test_path``, when
    given, is the test folder. The one layout rule of search and training alike."""
    if not path:
        raise FolderError(f"{field}: dataset 'folder' needs the image folder, e.g. --data folder:/my/images "
                          "(one sub-folder per class, optionally inside train/ and test/ or val/)")
    root = Path(path).expanduser()
    if not root.exists():
        raise FolderError(f"{field} {str(root)!r} is not a folder: it does not exist; check the path")
    if not root.is_dir():
        raise FolderError(f"{field} {str(root)!r} is not a folder but a file; give the folder that holds the images")
    if test_path:
        return root, Path(test_path).expanduser()
    if (root / "train").is_dir():
        for name in ("test", "val"):
            if (root / name).is_dir():
                return root / "train", root / name
        return root / "train", None
    return root, None


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


def _missing_class(folder: Path, name: str) -> FolderError:
    return FolderError(f"{folder}: class folder of class_to_idx entry {name!r} is missing;"
                       f" expected the layout {LAYOUT}")


def scan_folder(root: str | os.PathLike, extensions: Sequence[str] = IMG_EXTENSIONS,
                class_to_idx: dict[str, int] | None = None) -> Scan:
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
            raise _missing_class(folder, name)
        files = _images_in(folder, extensions)
        if not files:
            raise FolderError(f"{folder}: class folder has no images with extensions "
                              f"{', '.join(extensions)}; add images or remove the folder "
                              f"(expected the layout {LAYOUT})")
        samples.extend((str(folder / f), idx) for f in files)
    return sorted(class_to_idx, key=class_to_idx.__getitem__), samples


def select_classes(root: str | os.PathLike, scan: Scan, class_to_idx: dict[str, int]) -> Scan:
    """``scan_folder(root, class_to_idx=class_to_idx)`` made from ``scan``, a full scan of
    ``root``, without listing the folder again: the classes named in ``class_to_idx``, labelled by it.

    Raises:
        FolderError: a class named in ``class_to_idx`` has no folder in ``scan``.
    """
    classes, samples = scan
    paths: dict[str, list[str]] = {c: [] for c in classes}
    for path, label in samples:
        paths[classes[label]].append(path)
    selected: list[tuple[str, int]] = []
    for name, idx in sorted(class_to_idx.items(), key=lambda kv: (kv[1], kv[0])):
        if name not in paths:
            raise _missing_class(Path(root) / name, name)
        selected.extend((path, idx) for path in paths[name])
    return sorted(class_to_idx, key=class_to_idx.__getitem__), selected


SKIP_HINT = "replace or delete the file, or leave unreadable images out with --data.bad_images skip"


def _open_image(path: str, channels: int = 3) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError, SyntaxError) as exc:  # PIL raises all three on bad files
        raise FolderError(f"{path}: cannot read image ({exc}); {SKIP_HINT}") from exc


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
        scan: ``root``'s :func:`scan_folder` result for these ``extensions`` and
            ``class_to_idx``, when the caller has it already; then the folder is not listed again.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable[[Image.Image], Any] | None = None,
                 extensions: Sequence[str] = IMG_EXTENSIONS,
                 class_to_idx: dict[str, int] | None = None, *, channels: int = 3,
                 scan: Scan | None = None) -> None:
        if channels not in (1, 3):
            raise ValueError(f"ImageFolderDataset: channels must be 1 or 3, got {channels}")
        self.root = str(root)
        self.transform = transform if transform is not None else ToTensor()
        self.channels = channels
        self.classes, self.samples = scan if scan is not None else scan_folder(root, extensions, class_to_idx)
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
def folder_info(root: str | os.PathLike, extensions: Sequence[str] = IMG_EXTENSIONS, *,
                scan: Scan | None = None, on_bad: str = "fail") -> dict[str, Any]:
    """Summary of an image folder: ``num_classes``, ``classes``, ``counts`` (per class),
    ``num_images``, ``sample_image_size`` ((width, height) of the first image) and
    ``sample_image_mode``. ``scan``: the folder's :func:`scan_folder` result, if already made.
    ``on_bad``: an unreadable first image raises with ``fail``; with ``skip`` the sample is the
    first readable image (a FolderError when there is none)."""
    if on_bad not in BAD_IMAGES:
        raise ValueError(f"on_bad must be one of {BAD_IMAGES}, got {on_bad!r}")
    classes, samples = scan if scan is not None else scan_folder(root, extensions)
    counts = {c: 0 for c in classes}
    for _, label in samples:
        counts[classes[label]] += 1
    size = mode = None
    for path, _ in samples:
        try:
            with Image.open(path) as img:
                size, mode = img.size, img.mode
            break
        except (OSError, ValueError, SyntaxError) as exc:
            if on_bad == "fail":
                raise FolderError(f"{path}: cannot read image ({exc}); {SKIP_HINT}") from exc
    if size is None:
        raise FolderError(f"{root}: none of its {len(samples)} image files can be read (e.g. {samples[0][0]}); "
                          "check the folder")
    return {"root": str(root), "num_classes": len(classes), "classes": classes, "counts": counts,
            "num_images": len(samples), "sample_image_size": size, "sample_image_mode": mode}


def _decoded(root: str | os.PathLike, samples: list[tuple[str, int]], channels: int,
             on_bad: str) -> Iterator[tuple[str, int, Image.Image]]:
    """(path, label, decoded image) of every readable sample. An unreadable one raises with
    ``on_bad`` ``fail`` and is left out with ``skip``: then one warning line gives the count
    and an example at the end, and a FolderError says so when nothing readable is left."""
    if on_bad not in BAD_IMAGES:
        raise ValueError(f"on_bad must be one of {BAD_IMAGES}, got {on_bad!r}")
    bad: list[str] = []
    for path, label in samples:
        try:
            img = _open_image(path, channels)
        except FolderError:
            if on_bad == "fail":
                raise
            bad.append(path)
            continue
        yield path, label, img
    if len(bad) == len(samples) and bad:
        raise FolderError(f"{root}: none of its {len(bad)} image files can be read (e.g. {bad[0]}); "
                          "check the folder")
    if bad:
        warnings.warn(f"{root}: skipped {len(bad)} of {len(samples)} image files that cannot be read "
                      f"(data.bad_images skip), e.g. {bad[0]}")


def readable_scan(root: str | os.PathLike, scan: Scan, channels: int = 3, on_bad: str = "fail") -> Scan:
    """``scan`` without its unreadable images when ``on_bad`` is ``skip`` (every file is decoded
    once to find them: for streamed folders, which decode lazily); unchanged for ``fail``,
    where the first bad file stops the run when it is read."""
    if on_bad == "fail":
        return scan
    classes, samples = scan
    return classes, [(path, label) for path, label, _ in _decoded(root, samples, channels, on_bad)]


def load_folder_as_tensor(root: str | os.PathLike, size: int, channels: int = 3, *,
                          resize: int | None = None, max_bytes: int = 4 * 2**30,
                          extensions: Sequence[str] = IMG_EXTENSIONS, scan: Scan | None = None,
                          on_bad: str = "fail") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode a whole image folder once into memory for the fast device-resident loader.

    Each image has its shorter side resized to ``resize`` (default ``size``) and its
    centre ``size`` x ``size`` cropped. Memory cost: ``N * channels * size * size``
    bytes (uint8), e.g. 50,000 RGB images at 64 px take ~0.6 GB. ``scan``: the folder's
    :func:`scan_folder` result, if already made (the folder is then not listed again).

    Returns:
        ``(images uint8 [N,C,size,size], labels int64 [N], classes)``.

    ``on_bad``: ``fail`` (an unreadable image raises) or ``skip`` (it is left out, with one
    warning line giving the count).

    Raises:
        FolderError: bad layout, unreadable image, or the tensor would exceed ``max_bytes``.
    """
    if channels not in (1, 3):
        raise ValueError(f"load_folder_as_tensor: channels must be 1 or 3, got {channels}")
    classes, samples = scan if scan is not None else scan_folder(root, extensions)
    need = len(samples) * channels * size * size
    if need > max_bytes:
        raise FolderError(f"{root}: {len(samples)} images at {channels}x{size}x{size} need "
                          f"{need / 2**30:.2f} GiB, above max_bytes={max_bytes / 2**30:.2f} GiB; "
                          "use the streaming loader (ImageFolderDataset + make_folder_loader) or "
                          "raise max_bytes")
    prep = Compose([Resize(size if resize is None else resize), CenterCrop(size),
                    ToTensor(torch.uint8)])
    images = torch.empty((len(samples), channels, size, size), dtype=torch.uint8)
    kept: list[int] = []
    for _, label, img in _decoded(root, samples, channels, on_bad):
        images[len(kept)] = prep(img)
        kept.append(label)
    return images[:len(kept)], torch.tensor(kept, dtype=torch.int64), classes
