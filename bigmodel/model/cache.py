"""The keys and values a decoder has seen, kept between forward passes so each new token costs one
small pass: one preallocated store per layer, rows at their own lengths (a serving batch's rows
joined at different times)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bigmodel.config import ModelConfig


@dataclass(frozen=True)
class CacheStep:
    """One forward pass's place in a `KVCache`: where it writes and what its queries may see."""

    cache: KVCache
    start: int  # the first position any row writes: the shortest row's length
    end: int  # one past the last position written: the longest row's length + the new tokens
    positions: torch.Tensor  # of the new tokens: (T,) when the rows agree, else (B, T)
    mask: torch.Tensor | None  # ragged rows only: (B, 1, T, end), each query sees its own row's past

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys/values for `layer`; return all keys/values seen so far."""
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        if self.mask is None:
            keys[:, :, self.start:self.end] = k
            values[:, :, self.start:self.end] = v
        else:
            rows = torch.arange(k.size(0), device=k.device)[:, None]
            keys[rows, :, self.positions] = k.transpose(1, 2)
            values[rows, :, self.positions] = v.transpose(1, 2)
        return keys[:, :, :self.end], values[:, :, :self.end]


@dataclass
class KVCache:
    """Preallocated keys and values of every layer, so decoding never copies the past.

    Each row holds one sequence at its own length: the rows of a serving batch joined at
    different times. A step whose rows agree on their length writes one slice and needs no
    mask; ragged rows write at their own positions and hide each other's unused slots.
    Lengths live on the host, so checking them never waits for the device.
    """

    keys: list[torch.Tensor]  # per layer: (B, n_kv_head, max_len, head_dim)
    values: list[torch.Tensor]
    lengths: np.ndarray  # positions filled, per row; a view of the parent's for `rows()`

    @classmethod
    def allocate(cls, config: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype,
                 device: torch.device | str) -> KVCache:
        shape = (batch_size, config.n_kv_head, max_len, config.head_dim)
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)],
                   [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)],
                   np.zeros(batch_size, dtype=np.int64))

    @property
    def max_len(self) -> int:
        return self.keys[0].size(2)

    def grow(self, max_len: int) -> None:
        """Room for `max_len` positions per row, keeping what the rows hold (a decoder asks as rows lengthen)."""
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                store[i] = old.new_zeros((*old.shape[:2], max_len, old.size(3)))
                store[i][:, :, :old.size(2)] = old

    def rows(self, start: int, stop: int) -> KVCache:
        """A cache over rows start..stop-1 that shares this one's storage."""
        return KVCache([k[start:stop] for k in self.keys], [v[start:stop] for v in self.values],
                       self.lengths[start:stop])

    def move_row(self, source: int, target: int) -> None:
        """Copy one sequence's keys, values and length into another row (the source is left stale)."""
        used = int(self.lengths[source])
        for store in (*self.keys, *self.values):
            store[target, :, :used] = store[source, :, :used]
        self.lengths[target] = used

    def select(self, index: torch.Tensor) -> None:
        """Make row i hold what row index[i] held (beam search keeps the best continuations)."""
        for store in (*self.keys, *self.values):
            store.copy_(store[index])
        self.lengths[:] = self.lengths[index.cpu().numpy()]

    def begin(self, steps: int) -> CacheStep:
        """The step that appends `steps` tokens to every row."""
        first, longest = int(self.lengths.min()), int(self.lengths.max())
        device = self.keys[0].device
        if first == longest:
            return CacheStep(self, first, longest + steps, torch.arange(first, longest + steps, device=device), None)
        positions = torch.from_numpy(self.lengths[:, None] + np.arange(steps)).to(device)
        end = longest + steps
        mask = (torch.arange(end, device=device) <= positions[:, :, None])[:, None]
        return CacheStep(self, first, end, positions, mask)
