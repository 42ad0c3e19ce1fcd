"""Training windows from a memory-mapped token file.

`WindowSampler` draws windows at random offsets, with resumable state. The whole global batch
(every process, every micro-step) is drawn from one generator seeded the same on all ranks;
each rank keeps its own rows. So one process with batch 2B and two processes with batch B see
exactly the same data, and the sampler state is a single tensor. `BlockSampler` serves fixed,
non-overlapping blocks by index, the unit a differentially private run protects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from bigmodel.errors import BigModelError


def load_meta(data_dir: str | Path) -> dict:
    meta_path = Path(data_dir) / "meta.json"
    if not meta_path.is_file():
        raise BigModelError(f"{data_dir}: not a prepared data folder (no meta.json); run `bigmodel prepare`")
    return json.loads(meta_path.read_text(encoding="utf-8"))


def open_split(data_dir: str | Path, split: str) -> np.memmap:
    meta = load_meta(data_dir)
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file():
        raise BigModelError(f"{path}: missing; run `bigmodel prepare` again")
    return np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")


class WindowSampler:
    """Yields (x, y) batches of `block_size` tokens and their next-token targets."""

    def __init__(self, tokens: np.memmap, block_size: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if len(tokens) <= block_size:
            raise BigModelError(
                f"split holds {len(tokens)} tokens, fewer than one window of {block_size + 1}; "
                "use a smaller --block-size or more data"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.generator = torch.Generator().manual_seed(seed)
        self.offsets = np.arange(block_size + 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.tokens) - self.block_size, (self.batch_size * self.world_size,),
                               generator=self.generator).numpy()
        mine = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        window = torch.from_numpy(self.tokens[mine[:, None] + self.offsets].astype(np.int64))
        return window[:, :-1], window[:, 1:]

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def restore(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


class BlockSampler:
    """Yields (x, y) batches of the blocks whose indices `batches` draws, cycling through it for ever.

    Block i holds tokens [i * block_size, (i + 1) * block_size] (its last token is only a target),
    so no token is an input of two blocks."""

    def __init__(self, tokens: np.memmap, block_size: int, batches: Iterable[tuple[torch.Tensor]]) -> None:
        self.tokens = tokens
        self.block_size = block_size
        self.batches = batches
        self.drawn = iter(batches)
        self.offsets = np.arange(block_size + 1)

    @staticmethod
    def count(tokens: np.memmap, block_size: int) -> int:
        return (len(tokens) - 1) // block_size

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            (indices,) = next(self.drawn)
        except StopIteration:
            self.drawn = iter(self.batches)
            (indices,) = next(self.drawn)
        starts = indices.numpy() * self.block_size
        window = torch.from_numpy(self.tokens[starts[:, None] + self.offsets].astype(np.int64))
        return window[:, :-1], window[:, 1:]
