"""torchrun support shared by float training and QAT: one process, or DDP with no code change."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .fileio import state_dict_sha256


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device | None) -> tuple[DistContext, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistContext(), device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank), device


def broadcast_flag(flag: bool, ctx: DistContext) -> bool:
    """Rank 0's `flag` on every rank (a decision all ranks must take alike)."""
    if ctx.world == 1:
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def sync_and_hash(model: torch.nn.Module, ctx: DistContext) -> list[str]:
    """Give every rank rank 0's buffers (BN statistics, observer ranges), then check that all ranks
    hold the same weights; returns each rank's state-dict hash."""
    if ctx.world == 1:
        return [state_dict_sha256(model.state_dict())]
    for buf in model.buffers():
        dist.broadcast(buf, src=0)
    hashes: list = [None] * ctx.world
    dist.all_gather_object(hashes, state_dict_sha256(model.state_dict()))
    if len(set(hashes)) != 1:
        raise RuntimeError(f"ranks ended with different weights: {hashes}")
    return hashes


def finish_distributed(ctx: DistContext) -> None:
    if ctx.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
