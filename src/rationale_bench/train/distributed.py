"""Data parallelism: the torchrun environment, and what one process does of a batch."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class DataParallel:
    """Where this process stands in a data-parallel job (torchrun / accelerate launch)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            torch.distributed.all_reduce(values)
        return values

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.started_here and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def data_parallel_from_env() -> DataParallel:
    """Join the process group a launcher set up (WORLD_SIZE > 1), else one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DataParallel()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    started = False
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend=backend)
        started = True
    return DataParallel(rank, world_size, local_rank, started)
