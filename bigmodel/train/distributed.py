"""torchrun / torch.distributed set-up: one code path whether there is one process or many."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bigmodel.device import pick_device


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, *values: float) -> list[float]:
        """Each of `values` added up over every process (themselves when there is one)."""
        if self.world_size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def mean(self, value: float) -> float:
        """The average of `value` over every process."""
        return self.sum(value)[0] / self.world_size

    def rng_states(self) -> torch.Tensor:
        """Every process's torch RNG state, one row per rank: what an exact resume restores."""
        rng = torch.get_rng_state()
        if self.world_size == 1:
            return rng.unsqueeze(0)
        gathered: list[torch.Tensor] = [torch.empty_like(rng) for _ in range(self.world_size)]
        dist.all_gather_object(gathered, rng)
        return torch.stack(gathered)


def setup(preference: str = "auto") -> Dist:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(preference, local_rank)
    if world_size == 1:
        return Dist(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    # Share the cores: each process gets its slice instead of all of them fighting over every core.
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    return Dist(dist.get_rank(), local_rank, world_size, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
