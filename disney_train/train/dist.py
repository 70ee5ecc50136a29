"""This worker's place in its Ray Train group: rank, world size, and the few collectives the loop uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # NCCL reduces CUDA tensors only

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def mean(self, value: float) -> float:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size

    def from_rank0(self, value: T) -> T:
        """Rank 0's `value` on every rank."""
        box = [value]
        if self.world_size > 1:
            torch.distributed.broadcast_object_list(box, src=0, device=self.device)  # NCCL: this rank's GPU
        return box[0]


def ray_dist() -> Dist:
    """This worker's place, from Ray Train's context."""
    import ray.train

    ctx = ray.train.get_context()
    return Dist(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank())
