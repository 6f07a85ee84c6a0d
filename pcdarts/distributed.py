"""Devices and processes: the only module that picks a device.

Single-process runs need nothing from torchrun; every function here is a no-op or
trivial then.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch

from pcdarts.errors import ConfigError, PcdartsError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Rank information from the torchrun environment (one process when absent)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                    int(os.environ.get("WORLD_SIZE", 1)))


class DeviceError(PcdartsError, ValueError):
    pass


class DistributedError(PcdartsError, RuntimeError):
    """Raised where a command cannot run under several processes (yet)."""


def require_single_process(what: str, info: DistInfo | None = None) -> None:
    """Refuse to run ``what`` in a multi-process (torchrun) launch.

    Several processes would each run their own copy on a shard of the data without
    averaging gradients, and rank 0 would report its copy as the result: a silently
    wrong run. Until multi-process search and training land, say so up front.
    """
    info = info or dist_info()
    if info.is_distributed:
        raise DistributedError(
            f"{what} under torchrun is not supported yet (WORLD_SIZE={info.world_size}, RANK={info.rank}): "
            f"launch one process, e.g. `pcdarts {what} ...` without torchrun, and pick the GPU with "
            f"--run.device cuda:N")


def resolve_device(name: str = "auto", info: DistInfo | None = None) -> torch.device:
    """``auto`` -> CUDA (this process's local rank) when available, else CPU."""
    info = info or dist_info()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} requested but CUDA is not available (use --device cpu)")
        if dev.index is None:
            dev = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(dev)
    return dev


def per_process_batch(batch: int, world_size: int, field: str) -> int:
    """Each process's share of a global batch (``field`` names the config field): under torchrun
    the configured batch is split evenly over the processes, so the same config means the same
    optimisation with or without torchrun and a checkpoint can resume on another process count."""
    if batch % world_size:
        raise ConfigError(f"{field}={batch} is the global batch and must divide evenly over the {world_size} "
                          f"processes; use a multiple of {world_size}")
    return batch // world_size


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the torchrun process group (NCCL on GPUs, gloo on CPU); no-op on one process or
    when already joined. torchrun's environment (MASTER_ADDR/PORT, RANK, WORLD_SIZE) says where."""
    if not info.is_distributed or not torch.distributed.is_available() or torch.distributed.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


def leave_process_group(clean: bool) -> None:
    """Leave the torchrun process group at the end of a command (no-op when none was joined).
    After a clean run every rank first waits for the others (rank 0 may still be writing the
    run's files), so that no rank tears the group down under one still using it."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    try:
        if clean:
            torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


def group_rank_world() -> tuple[int, int]:
    """(rank, world size) in the initialised process group; (0, 1) outside one."""
    if not is_distributed():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def wrap_ddp(module: torch.nn.Module, device: torch.device, find_unused: bool) -> torch.nn.Module:
    """``module`` in DistributedDataParallel (weight gradients averaged in the backward; the
    initial weights broadcast from rank 0). Buffers are not broadcast every step: each rank's
    batch-norm statistics follow its shard and are averaged (:func:`average_buffers`) wherever
    they are read. ``find_unused``: some parameters may get no gradient in a step."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index] if device.type == "cuda" else None
    # newer torch renamed the flag (and warns on the old name); buffers are alike at construction
    sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else "broadcast_buffers")
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused, **{sync: False})


def agreed_stop(requested: bool, due: bool, device: torch.device) -> bool:
    """Whether to stop at this step. Alone: ``requested`` (the signal flag). Under torchrun every
    rank must stop at the same step, so the flags are combined by one all-reduce, only at the
    steps where ``due`` (where the divergence watch reads its flag, and at epoch ends)."""
    if not is_distributed():
        return requested
    if not due:
        return False
    return bool(all_reduce_max(float(requested), device))


def barrier() -> None:
    """Wait for every process (no-op alone): e.g. after rank 0 writes a checkpoint, so that no
    rank exits (and torchrun tears the others down) while the file is still being written."""
    if is_distributed():
        torch.distributed.barrier()


def all_reduce_max(value: float, device: torch.device) -> float:
    """The largest ``value`` over the processes (``value`` itself on one process): how ranks
    agree on a flag (stop, divergence) so that all of them act at the same step."""
    if not is_distributed():
        return value
    t = torch.tensor([float(value)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t.item())


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> None:
    """Sum tensors in place across processes (no-op on one process)."""
    if is_distributed():
        for t in tensors:
            torch.distributed.all_reduce(t)


def check_identical(tensors: Sequence[torch.Tensor], what: str) -> None:
    """Raise DistributedError unless every process holds bit-identical ``tensors`` (one
    all-reduce of a checksum pair; no-op on one process)."""
    if not is_distributed() or not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    bits = flat.view(torch.int64)  # compared bit for bit: inf and NaN entries (IIM scores) included
    lo, hi = bits.clone(), bits.clone()
    torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        differ = lo != hi
        gap = (hi.view(torch.float64) - lo.view(torch.float64))[differ].abs().max()
        raise DistributedError(f"{what} differ between processes ({int(differ.sum())} entries, max difference "
                               f"{float(gap):.3g}); every rank must apply identical architecture updates")


def average_buffers(module: torch.nn.Module) -> None:
    """Average the floating-point buffers (batch-norm running statistics) of ``module`` across
    processes (no-op alone). Each rank's statistics follow its own data shard; before anything
    reads them (evaluation, a scorer, a checkpoint) the ranks agree on their mean, so that every
    rank computes the same scores and makes the same decisions."""
    if is_distributed():
        all_reduce_mean([b for b in module.buffers() if b.is_floating_point()])


def all_reduce_mean(tensors: Sequence[torch.Tensor]) -> None:
    """Average tensors in place across processes (no-op on one process)."""
    if not is_distributed():
        return
    world = torch.distributed.get_world_size()
    for t in tensors:
        torch.distributed.all_reduce(t)
        t.div_(world)
