"""Dataset sources: in-memory uint8 image tensors plus labels.

What lives here: the :class:`ImageDataset` record, the registered tensor dataset loaders
(``digits`` bundled with scikit-learn, ``synthetic``, ``cifar10`` / ``cifar100`` from the
official *python* archive; image folders register in :mod:`.folder_source` and
:mod:`.unlabelled`), :func:`load_dataset` (dispatches through ``DATASETS``), the seeded
weight/architecture split (:func:`split_indices`), per-channel statistics
(:func:`channel_stats`), the datasets' default augmentation and the fingerprints recorded
in run manifests.

What must not: device placement, normalisation, augmentation and batching
(:mod:`.device_loader`, :mod:`.transforms`).
"""
from __future__ import annotations

import codecs
import hashlib
import inspect
import pickle
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional

import numpy as np
import torch

from pcdarts.errors import PcdartsError
from pcdarts.registry import DATASETS, UnknownNameError

__all__ = [
    "DataError",
    "ImageDataset",
    "load_dataset",
    "split_indices",
    "subset_indices",
    "seeded_subset",
    "dataset_fingerprint",
]

SPLITS = ("train", "test")


class DataError(PcdartsError, ValueError):
    """Bad data input: a wrong spec, a missing path or an unreadable archive."""


@dataclass
class ImageDataset:
    """An image classification set held in memory.

    Attributes:
        images: uint8 [N, C, H, W] pixels on the CPU.
        labels: int64 [N] class indices.
        num_classes: number of classes.
        mean: per-channel mean in [0, 1] units (pixel / 255), used for normalisation.
        std: per-channel standard deviation in the same units.
        name: dataset name as registered (``"digits"``, ``"cifar10"``, ...).
        classes: class names when the source provides them.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    classes: list[str] | None = None

    @property
    def in_channels(self) -> int:
        """Number of image channels (C)."""
        return int(self.images.shape[1])

    @property
    def input_size(self) -> int:
        """Image height H (all bundled sets are square)."""
        return int(self.images.shape[2])

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# --------------------------------------------------------------------------- public API


def load_dataset(spec: str, split: str = "train", **options: Any) -> ImageDataset:
    """Load a registered dataset.

    Args:
        spec: ``"digits"``, or ``"NAME:PATH"`` for sets that live on disk, e.g.
            ``"cifar10:/data/cifar-10-python.tar.gz"`` or ``"cifar100:/data/cifar-100-python"``.
        split: ``"train"`` or ``"test"``.
        **options: loader-specific settings (``input_size``, ``channels`` for ``folder``); only
            the options that are not None are passed on.

    Returns:
        The requested split as an :class:`ImageDataset`.

    Raises:
        DataError: unknown dataset name (the message lists the valid ones), a missing
            or unreadable path, a path given where none is taken or vice versa, or an
            unknown split.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"dataset spec must be a non-empty string like 'digits' or 'cifar10:PATH', got {spec!r}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    name, sep, path = spec.partition(":")
    name = name.strip().lower()
    try:
        loader = DATASETS.get(name)
    except UnknownNameError as err:
        raise DataError(f"dataset spec {spec!r}: {err}") from None
    options = {k: v for k, v in options.items() if v is not None}
    accepted = inspect.signature(loader).parameters
    unused = [k for k in options if k not in accepted]
    if unused:
        raise DataError(f"dataset {name!r} does not take data.{unused[0]} (it applies to image folders only); "
                        f"remove it from the config")
    return loader(path.strip() if sep else None, split, **options)


def split_indices(n: int, portion: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of ``range(n)`` into two disjoint index sets.

    Args:
        n: number of samples.
        portion: fraction in [0, 1] that goes to the first part (the weight split in a
            bilevel search); the first part has ``round(n * portion)`` indices.
        seed: seed of the CPU generator; the same seed always gives the same split.

    Returns:
        ``(first, second)`` int64 index tensors that together cover ``range(n)`` once.

    Raises:
        DataError: ``n`` negative or ``portion`` outside [0, 1].
    """
    if int(n) != n or n < 0:
        raise DataError(f"split_indices: n must be a non-negative integer, got {n!r}")
    if not 0.0 <= float(portion) <= 1.0:
        raise DataError(f"split_indices: portion must be in [0, 1], got {portion!r}")
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(int(n), generator=gen)
    k = int(round(n * float(portion)))
    return perm[:k].clone(), perm[k:].clone()


def subset_indices(n: int, k: Optional[int], seed: int, *, keep_order: bool = False) -> Optional[torch.Tensor]:
    """The one seeded subset: the first ``k`` of a ``seed``-permutation of ``range(n)`` (None when
    ``k`` is None or covers all ``n``: use everything). ``keep_order`` sorts the kept indices
    (the images keep the dataset's order, as training's subsets do); otherwise they come in the
    permutation's order (the search's, ws-analysis's and zero-cost's)."""
    if k is None or k >= n:
        return None
    keep = torch.randperm(int(n), generator=torch.Generator().manual_seed(int(seed)))[: int(k)]
    return keep.sort().values if keep_order else keep


def seeded_subset(images: torch.Tensor, labels: torch.Tensor, k: Optional[int], seed: int, *,
                  keep_order: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` cut to the seeded subset of :func:`subset_indices` (unchanged for None)."""
    keep = subset_indices(len(labels), k, seed, keep_order=keep_order)
    return (images, labels) if keep is None else (images[keep], labels[keep])


def labels_fingerprint(labels: torch.Tensor) -> str:
    """Short sha1 of a label tensor (the data fingerprint of run manifests)."""
    return hashlib.sha1(labels.detach().cpu().to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:12]


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, in chunks (no full float copy)."""
    c = images.shape[1]
    s1 = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, images.shape[0], 4096):
        x = images[i:i + 4096].to(torch.float64).div_(255.0).transpose(0, 1).reshape(c, -1)
        s1 += x.sum(1)
        s2 += (x * x).sum(1)
    n = images.numel() // c
    mean = s1 / max(n, 1)
    std = (s2 / max(n, 1) - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(float(v) for v in mean), tuple(max(float(v), 1e-3) for v in std)


def default_augment(dataset: str, input_size: int) -> tuple[int, bool]:
    """(crop padding, horizontal flip) when the config leaves them unset: none for the
    digits (flipping a digit changes it), else a padding of side/8 (4 at 32x32) and flips."""
    if dataset == "digits":
        return 0, False
    return max(1, int(input_size) // 8), True


def dataset_fingerprint(ds: ImageDataset) -> str:
    """Short sha1 of the labels and the image shape, for run manifests.

    Args:
        ds: the dataset (anything with ``images`` and ``labels`` tensors works).

    Returns:
        The first 12 hex digits of the digest.
    """
    h = hashlib.sha1()
    h.update(repr(tuple(ds.images.shape)).encode())
    h.update(str(ds.images.dtype).encode())
    h.update(ds.labels.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


# --------------------------------------------------------------------------- digits

_DIGITS_SEED = 0
_DIGITS_TEST_PORTION = 0.2
_digits_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _digits_arrays() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Build (once per process) the 16x16 uint8 digits images and the fixed split."""
    if _digits_cache:
        return _digits_cache
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    raw = load_digits()
    # values are 0..16 ink counts; map to 0..255, upsample 8x8 -> 16x16 bilinearly
    x = torch.as_tensor(raw.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)
    x = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    images = x.round().clamp_(0, 255).to(torch.uint8)
    labels = torch.as_tensor(raw.target, dtype=torch.int64)
    # stratified 80/20 split with a fixed seed: stable across runs and machines
    gen = torch.Generator().manual_seed(_DIGITS_SEED)
    test_parts = []
    for c in range(10):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(members.numel(), generator=gen)]
        test_parts.append(members[: int(round(members.numel() * _DIGITS_TEST_PORTION))])
    is_test = torch.zeros(labels.numel(), dtype=torch.bool)
    is_test[torch.cat(test_parts)] = True
    for split, mask in (("train", ~is_test), ("test", is_test)):
        _digits_cache[split] = (images[mask].contiguous(), labels[mask].contiguous())
    return _digits_cache


@DATASETS.register("digits", description="scikit-learn 8x8 digits upsampled to 16x16, 1 channel, 10 classes (bundled)")
def load_digits_dataset(path: str | None, split: str) -> ImageDataset:
    """Load the bundled digits set (1797 images, fixed seeded 80/20 stratified split).

    Args:
        path: must be None or empty (the set ships with scikit-learn).
        split: ``"train"`` or ``"test"``.
    """
    if path:
        raise DataError(f"dataset 'digits' is bundled and takes no path; use 'digits' instead of 'digits:{path}'")
    arrays = _digits_arrays()
    train_x = arrays["train"][0].to(torch.float64) / 255.0
    mean = tuple(float(v) for v in train_x.mean(dim=(0, 2, 3)))
    std = tuple(float(v) for v in train_x.std(dim=(0, 2, 3)))
    images, labels = arrays[split]
    return ImageDataset(
        images=images.clone(),
        labels=labels.clone(),
        num_classes=10,
        mean=mean,
        std=std,
        name="digits",
        classes=[str(d) for d in range(10)],
    )


@DATASETS.register("synthetic", description="random uint8 images, 10 classes, for benchmarks and memory tests: "
                                             "synthetic:SIZExCHANNELSxCOUNT (default 32x3x256)")
def load_synthetic(path: str | None, split: str) -> ImageDataset:
    """Seeded random images (no signal to learn): ``path`` is ``SIZExCHANNELSxCOUNT``."""
    text = path or "32x3x256"
    try:
        size, channels, count = (int(v) for v in text.lower().split("x"))
        if min(size, channels, count) < 1:
            raise ValueError
    except ValueError:
        raise DataError(f"dataset 'synthetic:{text}': expected SIZExCHANNELSxCOUNT with positive integers, "
                        f"e.g. 'synthetic:32x3x256'") from None
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    images = torch.randint(0, 256, (count, channels, size, size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (count,), generator=g)
    return ImageDataset(images, labels, 10, (0.5,) * channels, (0.25,) * channels, "synthetic")


# --------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class _CifarLayout:
    name: str
    folder: str  # folder name inside the official archive
    archive: str  # official archive file name
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


_CIFAR10 = _CifarLayout(
    name="cifar10",
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)
_CIFAR100 = _CifarLayout(
    name="cifar100",
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2 keeps the pickle helpers in numpy._core
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _reconstruct
        allowed[(module, "scalar")] = scalar
    allowed[("_codecs", "encode")] = codecs.encode  # how python 3 writes bytes at protocol 2
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Only numpy arrays and plain containers: a CIFAR pickle needs nothing else,
    and refusing other globals keeps a hostile file from running code."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}") from None


def _bad_pickle(source: str, why: object) -> DataError:
    return DataError(
        f"{source} is not a valid CIFAR python pickle ({why}); the file may be truncated or corrupt - "
        "re-download the *python* version of the archive from https://www.cs.toronto.edu/~kriz/cifar.html"
    )


def _unpickle(fileobj: IO[bytes], source: str) -> dict[str, Any]:
    try:
        obj = _CifarUnpickler(fileobj, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, OSError, zlib.error, tarfile.TarError, MemoryError) as err:
        raise _bad_pickle(source, f"{type(err).__name__}: {err}") from None
    if not isinstance(obj, dict):
        raise _bad_pickle(source, f"expected a dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _batch_arrays(d: dict[str, Any], source: str, layout: _CifarLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate one unpickled batch and turn it into ([N,3,32,32] uint8, [N] int64)."""
    if "data" not in d or layout.label_key not in d:
        raise _bad_pickle(source, f"needs keys 'data' and {layout.label_key!r}, found {sorted(map(str, d))}")
    data = np.asarray(d["data"])
    labels = np.asarray(d[layout.label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise _bad_pickle(source, f"'data' must be uint8 N x 3072, found {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise _bad_pickle(source, f"{data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise _bad_pickle(source, f"labels outside 0..{layout.num_classes - 1}")
    # rows are CHW: 1024 red, then 1024 green, then 1024 blue values
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.copy())


_Batches = dict[str, tuple[dict[str, Any], str]]  # file name -> (unpickled dict, source for messages)


def _read_tar(path: Path, wanted: set[str]) -> _Batches:
    """Unpickle the wanted members of a CIFAR tar archive in one sequential pass (no extraction)."""
    found: _Batches = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = member.name.rstrip("/").rsplit("/", 1)[-1]
                fileobj = tar.extractfile(member) if member.isfile() and base in wanted and base not in found else None
                if fileobj is not None:
                    source = f"{path}::{member.name}"
                    found[base] = (_unpickle(fileobj, source), source)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise DataError(
            f"{path} is not a readable CIFAR tar archive ({type(err).__name__}: {err}); it may be truncated - "
            "re-download the *python* version of the archive"
        ) from None
    return found


def _read_folder(root: Path, wanted: set[str], layout: _CifarLayout) -> _Batches:
    """Unpickle the wanted files of ``root`` or of its ``layout.folder`` child."""
    names = layout.train_files + layout.test_files
    folder = root if any((root / n).is_file() for n in names) else root / layout.folder
    if not any((folder / n).is_file() for n in names):
        raise DataError(f"{layout.name}: no CIFAR batch files in {str(root)!r}; expected {_expected(layout)}")
    found: _Batches = {}
    for name in sorted(wanted):
        if (folder / name).is_file():
            with open(folder / name, "rb") as f:
                found[name] = (_unpickle(f, str(folder / name)), str(folder / name))
    return found


def _expected(layout: _CifarLayout) -> str:
    files = ", ".join(layout.train_files + layout.test_files)
    return f"the {layout.archive} file, its extracted {layout.folder}/ folder (with {files}), or a folder containing it"


def _load_cifar(path: str | None, split: str, layout: _CifarLayout) -> ImageDataset:
    if not path:
        raise DataError(
            f"dataset {layout.name!r} needs a path to the python archive, e.g. "
            f"'{layout.name}:/data/{layout.archive}' or '{layout.name}:/data/{layout.folder}'"
        )
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"{layout.name}: path {str(root)!r} does not exist; expected {_expected(layout)}")
    files = layout.train_files if split == "train" else layout.test_files
    wanted = set(files) | {layout.meta_file}
    batches = _read_tar(root, wanted) if root.is_file() else _read_folder(root, wanted, layout)
    present = [f for f in files if f in batches]
    if not present:
        raise DataError(f"{layout.name}: {str(root)!r} has none of the {split} files {', '.join(files)}; "
                        f"expected {_expected(layout)}")
    if len(present) < len(files):
        missing = [f for f in files if f not in batches]
        warnings.warn(
            f"{layout.name}: found {len(present)} of {len(files)} {split} batches in {str(root)!r} "
            f"(missing {', '.join(missing)}); loading only those present",
            stacklevel=4,  # the caller of load_dataset
        )
    parts = [_batch_arrays(*batches[f], layout) for f in present]
    meta = batches.get(layout.meta_file, ({}, ""))[0]
    names = meta.get(layout.names_key)
    return ImageDataset(
        images=torch.cat([p[0] for p in parts]),
        labels=torch.cat([p[1] for p in parts]),
        num_classes=layout.num_classes,
        mean=layout.mean,
        std=layout.std,
        name=layout.name,
        classes=[str(c) for c in names] if isinstance(names, list) else None,
    )


@DATASETS.register("cifar10", description="CIFAR-10 from the official python archive (.tar.gz or extracted folder)")
def load_cifar10(path: str | None, split: str) -> ImageDataset:
    """Load CIFAR-10 (train = data_batch_1..5, test = test_batch) from ``path``.

    Args:
        path: ``cifar-10-python.tar.gz``, the extracted ``cifar-10-batches-py/`` folder, or its parent.
        split: ``"train"`` or ``"test"``.
    """
    return _load_cifar(path, split, _CIFAR10)


@DATASETS.register("cifar100", description="CIFAR-100 (fine labels) from the official python archive")
def load_cifar100(path: str | None, split: str) -> ImageDataset:
    """Load CIFAR-100 with fine labels (train = ``train``, test = ``test``) from ``path``.

    Args:
        path: ``cifar-100-python.tar.gz``, the extracted ``cifar-100-python/`` folder, or its parent.
        split: ``"train"`` or ``"test"``.
    """
    return _load_cifar(path, split, _CIFAR100)
