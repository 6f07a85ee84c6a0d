"""Pillow + torch image transforms without torchvision, and the ``train_transform`` /
``eval_transform`` presets (ImageNet-style augmentation and centre-crop evaluation).

Randomness of the random transforms: each takes ``rng`` (a ``random.Random`` or a
``torch.Generator``). With ``rng=None`` they draw from Python's global ``random``
module, which :func:`~pcdarts.data.folders.make_folder_loader` seeds in every worker process; with
``num_workers=0`` call ``random.seed(s)`` yourself or pass ``rng=random.Random(s)``.
Transform ``rng`` objects reachable from a dataset are re-seeded per worker too, so
workers never repeat one another's augmentations.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
Rng = random.Random | torch.Generator | None


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
