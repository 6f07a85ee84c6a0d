"""Model size and cost: one counting rule used everywhere in the toolkit (the structure layer,
so that spaces, scorers, training and analysis all count alike).

Counting rule
-------------
* **Parameters** (:func:`count_params`): every parameter of the model except those of
  modules whose name starts with an excluded prefix (default ``"auxiliary"``, i.e. the
  auxiliary head, which is dropped at test time; docs/methods.md, "Training a found cell").
  Prefixes are matched against every dotted component of the parameter name, so wrapped models
  (``module.auxiliary_head...``) are handled too. Buffers (BN running stats) are not
  parameters and are not counted.
* **Multiply-adds** (:func:`count_macs`): only ``nn.Conv2d`` and ``nn.Linear`` layers count.

  - conv: ``output_elements x (in_channels / groups) x kernel_h x kernel_w``
    (dilation does not change it; bias adds are not counted);
  - linear: ``in_features x out_features`` per output row (one row per sample).

  BatchNorm, activations, pooling, the additions inside cells, concatenation and
  drop-path are **not** counted. The model runs once, in eval mode (so the auxiliary
  head and drop-path are inactive), on a single zero image of the given size; each
  module's train/eval flag is restored afterwards. With this rule the ImageNet-mobile
  DARTS_V2 network (C=48, 14 cells, 224x224) has 529.9M multiply-adds and 4.72M
  parameters (the paper reports 574M and 4.7M; counting tools differ, quark0/darts#46),
  and the CIFAR DARTS_V2 network (C=36, 20 cells) has 3.35M parameters.

:func:`genotype_stats` applies both rules to the evaluation network of a genotype and
caches the result per genotype string and configuration, so the searcher can call it
every epoch. The network is built and run once on the CPU, inside a forked RNG, so the call
never changes the run's random stream (about 0.2 s for a CIFAR network; the ``meta``
device would skip the arithmetic but runs its shape functions in Python, 5-10x slower).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from pcdarts.genotype import Genotype, parse_genotype
from pcdarts.nn.networks import build_network, evaluation_of


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return any(part.startswith(prefix) for part in name.split(".") for prefix in exclude)


def count_params(model: nn.Module, exclude: Sequence[str] = ("auxiliary",)) -> int:
    """Number of parameters, leaving out modules whose name starts with a prefix in ``exclude``.

    Args:
        model: any module.
        exclude: module-name prefixes to leave out (default: the auxiliary head).
    """
    if isinstance(exclude, str):
        exclude = (exclude,)
    return sum(p.numel() for name, p in model.named_parameters() if not _excluded(name, exclude))


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-adds of the Conv2d and Linear layers for one input of ``input_size`` (C, H, W).

    See the module docstring for the exact rule. The model's (and every submodule's)
    train/eval mode is restored afterwards.

    Args:
        model: a network taking a ``1 x C x H x W`` tensor.
        input_size: ``(channels, height, width)`` of one input.
    """
    if len(input_size) != 3 or any(not isinstance(s, int) or s < 1 for s in input_size):
        raise ValueError(f"input_size must be (channels, height, width) of positive ints, got {input_size!r}")
    total = 0

    def conv_hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv2d)
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Linear)
        rows = output.numel() // module.out_features
        total += rows * module.in_features * module.out_features

    modes = {m: m.training for m in model.modules()}
    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        model.eval()
        param = next(model.parameters(), None)
        x = torch.zeros((1, *input_size), dtype=param.dtype if param is not None else torch.float32,
                        device=param.device if param is not None else None)
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return total


def _default_size(stem: str) -> int:
    return 224 if stem == "imagenet" else 32


@lru_cache(maxsize=256)
def _stats_cached(space: str, text: str, num_classes: int, in_channels: int, input_size: int,
                  C: Optional[int], layers: Optional[int], stem: str) -> tuple[int, int]:

    genotype = parse_genotype(text)
    size = (in_channels, input_size, input_size)

    # One CPU build and forward of a 1-image batch: the arithmetic is cheap, and the forked
    # RNG leaves the run's random stream as it was (the weights' initialisation draws from it,
    # and so does the forward of a cell with RobustDARTS's ``noise`` op), cached or not.
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        net = build_network(genotype, num_classes=num_classes, in_channels=in_channels, C=C,
                            layers=layers, stem=stem, auxiliary=False)
        return count_params(net), count_macs(net, size)


def genotype_stats(genotype: Genotype, *, num_classes: int = 10, in_channels: int = 3,
                   input_size: Optional[int] = None, C: Optional[int] = None, layers: Optional[int] = None,
                   stem: str = "cifar", labelled: bool = True) -> dict[str, float]:
    """Parameters and multiply-adds of a genotype's evaluation network (cached).

    Args:
        genotype: a genotype with a registered evaluation network (``NETWORKS``).
        num_classes: classifier outputs.
        labelled: False for data without classes (an unlabelled search): the network label
            then speaks of a ``num_classes``-output head, not of classes.
        in_channels: image channels.
        input_size: square input side; default 32 (cifar stem, NB201) or 224 (imagenet stem).
        C: initial channels (default per :func:`pcdarts.nn.networks.build_network`).
        layers: cells (DARTS) or cells per stage (NB201); default per ``build_network``.
        stem: ``"cifar"`` or ``"imagenet"``.

    Returns:
        ``{"params": M, "macs": M, "n_params": int, "n_macs": int, "input_size": int}``:
        parameters (auxiliary head excluded) and multiply-adds in millions, the exact
        counts, and the input side that was used.
    """
    evaluation_of(genotype)  # a TypeError naming the registered networks for a genotype without one
    size = _default_size(stem) if input_size is None else int(input_size)
    params, macs = _stats_cached(genotype.space, str(genotype), int(num_classes), int(in_channels), size,
                                 C, layers, stem)
    return {"params": params / 1e6, "macs": macs / 1e6, "n_params": params, "n_macs": macs, "input_size": size,
            "network": network_label(genotype, num_classes=num_classes, in_channels=in_channels, input_size=size,
                                     C=C, layers=layers, stem=stem, labelled=labelled)}


def network_label(genotype: Genotype, *, num_classes: int, in_channels: int, input_size: int,
                  C: Optional[int] = None, layers: Optional[int] = None, stem: str = "cifar",
                  labelled: bool = True) -> str:
    """Which evaluation network a parameter / multiply-add figure refers to, in words
    (the defaults of :func:`pcdarts.nn.networks.build_network` filled in); ``labelled`` False:
    data without classes (its head's outputs are named, not classes)."""
    if labelled:
        head = f"{num_classes} class{'' if num_classes == 1 else 'es'}"
    else:
        head = f"{num_classes}-output head (unlabelled data: no classes)"
    shape = f"{head}, {in_channels}x{input_size}x{input_size} input"
    name = evaluation_of(genotype).label(genotype, C=C, layers=layers, stem=stem)
    return f"{name}, {shape}"


__all__ = ["count_params", "count_macs", "genotype_stats", "network_label"]
