"""Masked image reconstruction: the label-free search objective of MAE-NAS (docs/methods.md, "MAE-NAS").

Both levels of the bilevel search minimise one loss that reads no label: each image is cut
into ``patch_size`` x ``patch_size`` patches, a random ``mask_ratio`` of them is zeroed in the
normalised input (the dataset's mean colour), the supernet encodes the masked image (its
stage outputs, via ``forward_features``), a small decoder predicts the whole image, and the loss
is the mean squared error on the masked pixels only (optionally against per-patch normalised
targets, ``norm_pix_loss``).

The decoder (``decoder: multi-scale``, the paper's "hierarchical decoder") reads the output
of every resolution stage of the supernet: a 1x1 projection of each, progressive 2x-style
upsampling from the deepest stage, a fusion (sum, then 3x3 conv + BN + ReLU) at each
stage's resolution, and a 1x1 head at full resolution. ``single-scale`` decodes the last
stage alone along the same path; the paper reports that unsupervised DARTS then collapses
to parameter-free ops, which the multi-scale decoder prevents (docs/methods.md, "MAE-NAS").

No official code exists: mask ratio, patch size, decoder width and layout
are our choices, marked [UNVERIFIED] and all configurable. Masks are drawn from the
objective's own generator (seeded ``run.seed + 3``); its state is in the objective's
``state_dict`` and so in the checkpoint, and a resume continues the same masks.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Annotated, Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pcdarts.errors import ConfigError
from pcdarts.objectives.base import Batch, EpochEnd, Objective, ObjectiveSetup, stage_features
from pcdarts.ranges import Count, NonNegInt, Range
from pcdarts.registry import OBJECTIVES
from pcdarts.utils import at_least_float32

MaskRatio = Annotated[float, Range(0, 1, lo_open=True)]  # (0, 1]: at least one patch is masked
DECODERS = ("multi-scale", "single-scale")
MASK_SEED = 3     # masks: run.seed + 3 (the loaders use + 0 and + 1, the architecture draws + 2)
PICTURE_SEED = 4  # the per-epoch picture: the same masks every epoch, never the training stream
NORM_EPS = 1e-6   # per-patch target normalisation: (t - mean) / sqrt(var + eps)


@dataclass(frozen=True)
class MaeConfig:
    """The ``objective:`` section of ``--objective mae`` (docs/methods.md, "MAE-NAS"; no official code).

    Attributes:
        mask_ratio: fraction of each image's patches zeroed in the input, in (0, 1]
            (0.5 [UNVERIFIED]; the paper reports robustness to it). ``round(ratio * patches)``
            patches are masked per image, at least one.
        patch_size: side of a square patch in pixels; must divide the input side
            (4 [UNVERIFIED]: an 8 x 8 grid on 32 x 32 CIFAR images).
        decoder: ``multi-scale`` (every resolution stage, the paper's hierarchical decoder)
            or ``single-scale`` (the last stage only, the collapse-prone baseline).
        decoder_dim: channels of the decoder (64 [UNVERIFIED]).
        norm_pix_loss: normalise each target patch by its mean and variance (off).
        pictures: images in ``RUN_DIR/reconstructions/epoch_NNN.png`` at each epoch end
            (input, masked input, prediction, prediction with the visible patches pasted
            back); 0 = no picture. Drawn only with ``run.plots``.
    """

    mask_ratio: MaskRatio = 0.5
    patch_size: Count = 4
    decoder: str = "multi-scale"
    decoder_dim: Count = 64
    norm_pix_loss: bool = False
    pictures: NonNegInt = 8


# ---------------------------------------------------------------- masks and loss (pure functions)

def patch_grid(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """(rows, columns) of the patch grid; ConfigError when ``patch_size`` does not divide both sides."""
    if height % patch_size or width % patch_size:
        divisors = [p for p in range(1, min(height, width) + 1) if height % p == 0 and width % p == 0]
        raise ConfigError(f"objective.patch_size={patch_size} must divide the input size {height}x{width}; "
                          f"choose one of {divisors}")
    return height // patch_size, width // patch_size


def masked_count(num_patches: int, ratio: float) -> int:
    """Patches masked per image: ``ratio * num_patches`` rounded half up, at least 1, at most all."""
    return min(num_patches, max(1, math.floor(ratio * num_patches + 0.5)))


def draw_masks(n: int, num_patches: int, num_masked: int, generator: torch.Generator,
               device: torch.device | str | None = None) -> torch.Tensor:
    """[n, num_patches] booleans, True = masked: for each image, the ``num_masked`` patches
    with the smallest of ``num_patches`` uniform draws from ``generator`` (a uniformly random
    subset of exactly that size, independently per image)."""
    device = generator.device if device is None else device
    noise = torch.rand(n, num_patches, generator=generator, device=device)
    picked = noise.argsort(dim=1)[:, :num_masked]
    return torch.zeros(n, num_patches, dtype=torch.bool, device=device).scatter_(1, picked, True)


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, L, C * p * p]: the patches in row-major grid order, each flattened."""
    n, c, h, w = x.shape
    gh, gw = h // patch_size, w // patch_size
    x = x.reshape(n, c, gh, patch_size, gw, patch_size).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, gh * gw, c * patch_size * patch_size)


def pixel_mask(mask: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """[N, L] patch booleans -> [N, 1, H, W] pixel booleans (True = the pixel's patch is masked)."""
    n = mask.shape[0]
    gh, gw = grid
    full = mask.view(n, 1, gh, 1, gw, 1).expand(n, 1, gh, patch_size, gw, patch_size)
    return full.reshape(n, 1, gh * patch_size, gw * patch_size)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, patch_size: int,
               norm_pix_loss: bool = False) -> torch.Tensor:
    """Mean squared error over the masked patches only (docs/methods.md, "MAE-NAS"): per masked patch the mean
    of the squared pixel errors (channels included), averaged over every masked patch of the
    batch. Unmasked pixels of ``pred`` and ``target`` take no part (even a NaN there is ignored).
    ``norm_pix_loss``: each target patch normalised by its own mean and variance first.
    Computed in at least float32 (float64 kept)."""
    p = patchify(at_least_float32(pred), patch_size)
    t = patchify(at_least_float32(target), patch_size)
    if norm_pix_loss:
        mean = t.mean(dim=-1, keepdim=True)
        var = t.var(dim=-1, keepdim=True, unbiased=False)
        t = (t - mean) / (var + NORM_EPS).sqrt()
    per_patch = (p - t).pow(2).mean(dim=-1)  # [N, L]
    per_patch = torch.where(mask, per_patch, torch.zeros((), dtype=per_patch.dtype, device=per_patch.device))
    return per_patch.sum() / mask.sum().clamp(min=1)


def stage_outputs(shapes: Sequence[tuple[int, int, int]]) -> list[int]:
    """Indices of the stage outputs among ``forward_features``' outputs: the last output of
    each run of outputs at one resolution (in a DARTS supernet the cell before each reduction
    and the last cell; in NB201 the last cell of each stage)."""
    out: list[int] = []
    for i, (_, h, w) in enumerate(shapes):
        if out and tuple(shapes[out[-1]][1:]) == (h, w):
            out[-1] = i
        else:
            out.append(i)
    return out


# ---------------------------------------------------------------- the decoder

def _fuse_block(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))


class ReconstructionDecoder(nn.Module):
    """Stage outputs -> full-resolution image (the paper's "hierarchical decoder"; docs/methods.md, "MAE-NAS").

    From the deepest stage up: project (1x1 conv to ``dim``), fuse (3x3 conv + BN + ReLU); then
    at each shallower stage's resolution: upsample (bilinear) to it, add that stage's 1x1
    projection (``multi_scale`` only), fuse; then upsample to the input size if the first stage
    is smaller (an ImageNet stem), fuse, and predict the pixels with a 1x1 conv. The single-scale
    decoder takes the same path without the shallower projections: the two differ only in
    what they read.

    Args:
        stage_shapes: (channels, height, width) of each stage output, shallowest first.
        out_shape: (channels, height, width) of the image to predict.
        dim: decoder channels.
        multi_scale: read every stage (else the last one only).
    """

    def __init__(self, stage_shapes: Sequence[tuple[int, int, int]], out_shape: tuple[int, int, int], dim: int,
                 multi_scale: bool = True) -> None:
        super().__init__()
        deep_first = list(reversed(stage_shapes))
        self.multi_scale = multi_scale
        read = deep_first if multi_scale else deep_first[:1]
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c, _, _ in read)
        self.sizes = [(h, w) for _, h, w in deep_first]
        if self.sizes[-1] != tuple(out_shape[1:]):
            self.sizes.append((int(out_shape[1]), int(out_shape[2])))
        self.fuse = nn.ModuleList(_fuse_block(dim) for _ in self.sizes)
        self.head = nn.Conv2d(dim, out_shape[0], 1)

    def forward(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        deep_first = list(reversed(stages))
        h = self.fuse[0](self.lateral[0](deep_first[0]))
        for i in range(1, len(self.sizes)):
            h = F.interpolate(h, size=self.sizes[i], mode="bilinear", align_corners=False)
            if self.multi_scale and i < len(deep_first):
                h = h + self.lateral[i](deep_first[i])
            h = self.fuse[i](h)
        return self.head(h)


# ---------------------------------------------------------------- the objective

@OBJECTIVES.register("mae", description="masked image reconstruction, no labels (MAE-NAS; docs/methods.md)")
class MaskedReconstruction(Objective):
    """Masked-patch reconstruction loss through a decoder on the supernet's stage outputs.

    Args:
        cfg: the :class:`MaeConfig`.
        feature_shapes: (channels, height, width) of each ``supernet.forward_features`` output.
        input_shape: (channels, height, width) of one input image.
        seed: the run seed (masks: ``seed + 3``; pictures: ``seed + 4``).
        device: where the mask generator draws (the data's device).
    """

    Config = MaeConfig
    needs_labels = False

    def __init__(self, cfg: MaeConfig, feature_shapes: Sequence[tuple[int, int, int]],
                 input_shape: tuple[int, int, int], *, seed: int = 0, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.cfg = cfg
        _, height, width = input_shape
        self.grid = patch_grid(height, width, cfg.patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_masked = masked_count(self.num_patches, cfg.mask_ratio)
        self.stages = stage_outputs(feature_shapes)
        self.decoder = ReconstructionDecoder([feature_shapes[i] for i in self.stages], tuple(input_shape),
                                             cfg.decoder_dim, multi_scale=cfg.decoder == "multi-scale")
        self.generator = torch.Generator(device=device).manual_seed(seed + MASK_SEED)
        self.picture_seed = seed + PICTURE_SEED

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        o = cfg.objective
        if o.decoder not in DECODERS:
            raise ConfigError(f"objective.decoder must be one of {', '.join(DECODERS)}, got {o.decoder!r}")
        size = cfg.data.input_size
        if size is not None:
            patch_grid(size, size, o.patch_size)

    @classmethod
    def build(cls, cfg: MaeConfig, setup: ObjectiveSetup) -> "MaskedReconstruction":
        return cls(cfg, setup.feature_shapes(), setup.input_shape, seed=setup.seed, device=setup.device)

    # the mask generator's state travels with the decoder's weights (checkpoint, rollback)
    def get_extra_state(self) -> dict[str, Any]:
        return {"mask_generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["mask_generator"])

    def reconstruct(self, supernet: nn.Module, x: torch.Tensor, mixing: Any, mask: torch.Tensor) -> torch.Tensor:
        """The predicted image [N, C, H, W] of ``x`` with the patches of ``mask`` ([N, L]) zeroed."""
        keep = ~pixel_mask(mask, self.grid, self.cfg.patch_size)
        feats = stage_features(supernet, x * keep, mixing)
        return self.decoder([feats[i] for i in self.stages])

    def forward(self, supernet: nn.Module, batch: Batch, mixing: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        x = batch[0]  # batch[1], the labels, is never read: the search is label-free
        mask = draw_masks(x.shape[0], self.num_patches, self.num_masked, self.generator, x.device)
        pred = self.reconstruct(supernet, x, mixing, mask)
        loss = masked_mse(pred, x, mask, self.cfg.patch_size, self.cfg.norm_pix_loss)
        return loss, {"n": x.shape[0]}

    # ------------------------------------------------------------ the per-epoch picture
    def on_epoch_end(self, end: EpochEnd) -> None:
        """``RUN_DIR/reconstructions/epoch_NNN.png`` (1-based epoch): a few images of the
        architecture split, their masks (the same every epoch) and reconstructions, in eval
        mode (no BN statistic moves). Skipped quietly without matplotlib or ``run.plots``."""
        if not end.plots or self.cfg.pictures == 0:
            return
        try:  # the object-oriented API with the Agg canvas: the caller's pyplot backend is untouched
            from matplotlib.backends.backend_agg import FigureCanvasAgg as Canvas
            from matplotlib.figure import Figure
        except ImportError:
            return
        try:
            with torch.no_grad():
                self._draw(end, Figure, Canvas)
        except Exception as e:  # a picture is a convenience: never lose a search over it
            warnings.warn(f"could not draw the reconstructions of epoch {end.epoch + 1}: {e}")

    def _draw(self, end: EpochEnd, Figure: Any, Canvas: Any) -> None:
        x = end.batch()[0][: self.cfg.pictures]
        g = torch.Generator(device=x.device).manual_seed(self.picture_seed)
        mask = draw_masks(x.shape[0], self.num_patches, self.num_masked, g, x.device)
        modes = [(m, m.training) for m in (*end.supernet.modules(), *self.modules())]
        try:
            end.supernet.eval()
            self.eval()
            pred = self.reconstruct(end.supernet, x, end.mixing(), mask).float()
        finally:
            for m, mode in modes:
                m.training = mode
        x = x.float()
        hidden = pixel_mask(mask, self.grid, self.cfg.patch_size)
        loss = float(masked_mse(pred, x, mask, self.cfg.patch_size, self.cfg.norm_pix_loss))
        columns = {"input": x, "masked input": x * ~hidden, "prediction": pred,
                   "prediction + visible": torch.where(hidden, pred, x)}
        # one tiled image (rows: images; columns: the four views), each row on its input's scale
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        span = (x.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp(min=1e-8)
        tiles = [((v - lo) / span).clamp(0, 1).expand(-1, 3, -1, -1)[:, :3] for v in columns.values()]
        n, _, h, w = x.shape
        pad = max(1, h // 16)
        grid = torch.ones(n * (h + pad) + pad, len(tiles) * (w + pad) + pad, 3)
        for c, t in enumerate(tiles):
            for r in range(n):
                y0, x0 = pad + r * (h + pad), pad + c * (w + pad)
                grid[y0:y0 + h, x0:x0 + w] = t[r].permute(1, 2, 0).cpu()
        scale = 1.6 / (h + pad)  # inches per pixel: a tile is about 1.6 inches wide
        fig = Figure(figsize=(grid.shape[1] * scale, grid.shape[0] * scale + 0.5))
        Canvas(fig)
        ax = fig.add_axes((0, 0, 1, grid.shape[0] * scale / (grid.shape[0] * scale + 0.5)))
        ax.imshow(grid.numpy(), interpolation="nearest")
        ax.set_axis_off()
        for c, title in enumerate(columns):
            fig.text((pad + c * (w + pad) + w / 2) / grid.shape[1], 1 - 0.3 / (grid.shape[0] * scale + 0.5), title,
                     ha="center", va="center", fontsize=8)
        fig.suptitle(f"epoch {end.epoch + 1}/{end.epochs}: masked-pixel MSE {loss:.3f} "
                     f"({self.cfg.decoder}, ratio {self.cfg.mask_ratio:g}, patch {self.cfg.patch_size})",
                     fontsize=8, y=1 - 0.08 / (grid.shape[0] * scale + 0.5))
        out = end.run_dir / "reconstructions"
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / f"epoch_{end.epoch + 1:03d}.png", dpi=80)


__all__ = ["MaeConfig", "MaskedReconstruction", "ReconstructionDecoder", "draw_masks", "masked_mse",
           "masked_count", "patch_grid", "patchify", "pixel_mask", "stage_outputs"]
