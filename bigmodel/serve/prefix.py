"""Prompt prefixes the server has already run, kept as keys and values so the next prompt that starts
the same way (a system prompt, few-shot examples) skips recomputing them.

Prompts are cut into blocks of `BLOCK` tokens; a block is known by its tokens and the block before it,
so a match is always a whole prefix. A new prompt copies its longest known prefix into its cache row and
runs only the rest (at least its last token, whose logits give the first new token). Blocks are
evicted least recently used first, under a byte budget; a prefix is touched from its end back to its
start, so a block always outlives the blocks that extend it and no unreachable block lingers.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from bigmodel.model.cache import KVCache

BLOCK = 16  # tokens per cached block (vLLM's default size)


@dataclass
class Block:
    parent: int | str  # the key of the block before it (the first block: the chain's salt)
    tokens: tuple[int, ...]
    keys: list[torch.Tensor]  # per layer: (n_kv_head, BLOCK, head_dim)
    values: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


class PrefixCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget, self.used = budget_bytes, 0
        self.blocks: OrderedDict[int, Block] = OrderedDict()

    @staticmethod
    def chain(prompt: list[int], salt: str = "") -> list[tuple[int | str, int, tuple[int, ...]]]:
        """(parent key, key, tokens) of each whole block of `prompt`, in order; the first block's parent is
        `salt`, which keeps apart prompts whose keys and values differ (another adapter's)."""
        out, parent = [], salt
        for start in range(0, len(prompt) - BLOCK + 1, BLOCK):
            tokens = tuple(prompt[start:start + BLOCK])
            key = hash((parent, tokens))
            out.append((parent, key, tokens))
            parent = key
        return out

    def load(self, prompt: list[int], cache: KVCache, row: int, salt: str = "") -> int:
        """Copy the longest known prefix of `prompt` (leaving its last token to run) into `row`; its length."""
        found = []
        for parent, key, tokens in self.chain(prompt[:-1], salt):
            block = self.blocks.get(key)
            if block is None or block.parent != parent or block.tokens != tokens:
                break
            found.append(key)
        for i, key in enumerate(found):
            block = self.blocks[key]
            for layer, (k, v) in enumerate(zip(block.keys, block.values, strict=True)):
                cache.keys[layer][row, :, i * BLOCK:(i + 1) * BLOCK] = k
                cache.values[layer][row, :, i * BLOCK:(i + 1) * BLOCK] = v
        self._touch(found)
        cache.lengths[row] = len(found) * BLOCK
        return len(found) * BLOCK

    def store(self, prompt: list[int], cache: KVCache, row: int, salt: str = "") -> None:
        """Keep the whole blocks of `prompt`, whose keys and values `row` now holds, then evict to the budget."""
        chain = self.chain(prompt, salt)
        for i, (parent, key, tokens) in enumerate(chain):
            if key in self.blocks:
                continue
            span = slice(i * BLOCK, (i + 1) * BLOCK)
            block = Block(parent, tokens, [k[row, :, span].clone() for k in cache.keys],
                          [v[row, :, span].clone() for v in cache.values])
            if block.nbytes > self.budget:
                return
            self.blocks[key] = block
            self.used += block.nbytes
        self._touch([key for _, key, _ in chain])
        while self.used > self.budget:
            _, block = self.blocks.popitem(last=False)
            self.used -= block.nbytes

    def _touch(self, keys: list[int]) -> None:
        for key in reversed(keys):  # the first block ends up the most recently used
            if key in self.blocks:
                self.blocks.move_to_end(key)
