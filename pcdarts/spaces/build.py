"""The supernet stage of the one assembly: a space config becomes a supernet on its device.

:func:`make_supernet` is the only caller of ``SearchSpace.build_supernet``. The whole assembly
(space -> supernet -> method -> ``prepare_supernet`` -> masks -> objective -> weight parameters)
is :func:`pcdarts.search.build.build_components`; this stage lives here, in the structure layer,
so that the weight-sharing analysis (:mod:`pcdarts.analysis.ws_train`, a lower layer than
``search``, STYLE §3) builds its supernets through it too.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch
import torch.nn as nn

from pcdarts.nn.impl import resolve_impl
from pcdarts.spaces import SearchSpace


def make_supernet(space: SearchSpace, space_cfg: Any, *, k: int, num_classes: int, in_channels: int,
                  device: torch.device, masks: Optional[dict[str, torch.Tensor]] = None,
                  options: Optional[dict[str, Any]] = None) -> nn.Module:
    """``space``'s supernet of ``space_cfg`` on ``device``.

    Args:
        space: the space object (``get_space(name)``, or an unregistered analysis space).
        space_cfg: its :class:`~pcdarts.config.SpaceConfig`; ``impl`` ``auto`` is resolved for
            ``device`` (:func:`pcdarts.nn.impl.resolve_impl`: fast on CPU, reference on CUDA).
        k: the partial-channel factor in force (a checkpoint's may differ from the config's).
        num_classes, in_channels: the data's.
        masks: cell type -> [E, O] booleans of the ops to build (a pruned run's); None = all.
        options: the method's supernet options (``Method.supernet_options``, e.g. DARTS-'s aux skip).

    On CUDA the supernet is converted to channels-last memory format.
    """
    impl = resolve_impl(space_cfg.impl, device.type)
    net = space.build_supernet(dataclasses.replace(space_cfg, impl=impl), k=k, num_classes=num_classes,
                               in_channels=in_channels, masks=masks, **(options or {})).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    return net


__all__ = ["make_supernet"]
