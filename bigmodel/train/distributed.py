"""torchrun / torch.distributed set-up: one code path whether there is one process or many.

Two ways to spread training over processes: DDP (every process holds the whole model and
optimizer, gradients are averaged) and FSDP2 (`fully_shard`: each block's parameters, gradients
and optimizer state are split across the processes and gathered one block at a time), which is
what lets a model larger than one process's memory train.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
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

    def rng_states(self) -> dict[str, torch.Tensor]:
        """Every process's RNG states, one row per rank: the host's, and its GPU's (dropout there draws from it),
        what an exact resume restores (`restore_rng`)."""
        states = {"torch_rng": self._gathered(torch.get_rng_state())}
        if self.device.type == "cuda":
            states["cuda_rng"] = self._gathered(torch.cuda.get_rng_state(self.device))
        return states

    def restore_rng(self, state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["torch_rng"][self.rank])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"][self.rank], self.device)

    def _gathered(self, rng: torch.Tensor) -> torch.Tensor:
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


def shard(model: torch.nn.Module, world: Dist, dtype: str) -> None:
    """FSDP2 in place: every block, then the rest (embeddings, final norm, head), sharded over a 1-D
    mesh of all processes. bf16: parameters gathered in bf16 for compute, gradients reduced in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(world.device.type, (world.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if dtype == "bf16" \
        else MixedPrecisionPolicy()
    for block in [*getattr(model, "encoder", []), *model.blocks]:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, sync: bool) -> Iterator[None]:
    """Hold back the gradient all-reduce (DDP) or reduce-scatter (FSDP2) for all but the last
    micro-batch of an accumulated step."""
    if sync:
        yield
    elif hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:  # one process: nothing to hold back
        yield
