"""torchrun in one place: the process's rank and world size, the process group (gloo on CPU, NCCL on CUDA), and the
few collectives the trainers use. Outside torchrun (WORLD_SIZE unset or 1) every call is a no-op."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from .models.registry import resolve_device


def dist_setup(device_pref: str = "cpu") -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device); joins the process group under torchrun (once)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _joined() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(t: torch.Tensor, op: Any = None) -> torch.Tensor:
    """`t` reduced in place over the ranks (sum unless `op`); unchanged outside torchrun."""
    if _joined():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    """Wait for every rank (no-op outside torchrun)."""
    if _joined():
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order ([obj] outside torchrun)."""
    if not _joined():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
