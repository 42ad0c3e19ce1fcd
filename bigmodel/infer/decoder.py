"""The one decoder: a model, its KV cache, and rows that go through it one token at a time.

`generate` (several continuations of one prompt), sequence-to-sequence decoding (greedy,
sampled or a beam search, over an encoder's memory) and the server's continuous batching
(rows that join and leave at any step) all step through a `Decoder`; they differ only in how
they pick rows and tokens. A prompt runs once to fill its rows (`prefill`); every new token
then costs one small forward pass (`step`). When a row's context fills up, it keeps the most
recent half of its history and goes on: the one context-full policy, here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bigmodel.config import DecodingConfig
from bigmodel.model.cache import KVCache
from bigmodel.model.decoding import decoding_threads, uses_blas
from bigmodel.model.lora import Adapter
from bigmodel.model.transformer import Memory, Transformer


def sample_next(logits: torch.Tensor, cfg: DecodingConfig, generator: torch.Generator) -> torch.Tensor:
    """One token id per row of `logits` (B, V)."""
    if cfg.temperature < 1e-4:  # greedy; dividing by a tinier temperature would overflow to inf
        return logits.argmax(dim=-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > cfg.top_p  # mass before a token already exceeds p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    if cfg.min_p > 0:  # a floor that scales with the model's confidence
        probs = logits.softmax(dim=-1)
        logits = logits.masked_fill(probs < cfg.min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass(frozen=True)
class Penalties:
    """Steering one row away from tokens it has seen, or toward chosen ones, before sampling.

    `presence` and `frequency` are OpenAI's (subtracted once per generated token seen, and once per
    time it was generated), `repetition` is Hugging Face's (seen logits, prompt included, divided by
    it when positive and multiplied when negative), `bias` is OpenAI's `logit_bias` (token id, added)."""

    presence: float = 0.0
    frequency: float = 0.0
    repetition: float = 1.0
    bias: tuple[tuple[int, float], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.presence or self.frequency or self.repetition != 1.0 or self.bias)

    def apply(self, logits: torch.Tensor, history: Sequence[int], prompt_len: int) -> torch.Tensor:
        """`logits` (V,) of the row whose tokens so far are `history` (its prompt first), adjusted."""
        logits = logits.float().clone()
        if self.repetition != 1.0:
            seen = torch.tensor(sorted(set(history)), device=logits.device)
            scores = logits[seen]
            logits[seen] = torch.where(scores > 0, scores / self.repetition, scores * self.repetition)
        generated = history[prompt_len:]
        if generated and (self.presence or self.frequency):
            ids, counts = torch.tensor(list(generated), device=logits.device).unique(return_counts=True)
            logits[ids] -= self.presence + self.frequency * counts
        if self.bias:
            ids, values = zip(*self.bias, strict=True)
            logits[list(ids)] += torch.tensor(values, device=logits.device)
        return logits


class Decoder:
    """`rows` sequences decoding through one KV cache; an encoder-decoder's rows read `memory` (one row
    of it per cache row). Each call may say which LoRA adapter each of its rows runs with (`adapters`).

    The cache starts at `max_len` positions (default 256) and doubles when a row needs more, up to
    the model's context: a server that admits any request never sets aside its whole context per
    row (8,192 positions × 30 layers for SmolLM2) for prompts of a few hundred tokens."""

    def __init__(self, model: Transformer, rows: int, max_len: int | None = None,
                 memory: Memory | None = None) -> None:
        param = next(model.parameters())
        self.model, self.memory, self.device = model, memory, param.device
        self.capacity = model.config.block_size  # where a row's context is full
        self.blas = uses_blas(model)  # the thread policy of one-row steps, decided once
        self.cache = KVCache.allocate(model.config, rows, min(max_len or 256, self.capacity), param.dtype,
                                      param.device)

    def reserve(self, length: int) -> None:
        """Room for `length` positions in every row."""
        if length > self.cache.max_len:
            self.cache.grow(min(max(length, 2 * self.cache.max_len), self.capacity))

    def prefill(self, ids: torch.Tensor | Sequence[Sequence[int]], row: int = 0, every: bool = False,
                start: int = 0, adapters: Sequence[Adapter | None] = ()) -> torch.Tensor:
        """Run token ids (B, T) into rows row..row+B-1, whose first `start` positions already hold the
        keys and values of the first `start` tokens (a cached prefix; 0: the rows start empty). The
        logits (B, V) after each row's last token, or with `every` (B, T - start, V) after each token run."""
        ids = torch.as_tensor(ids, device=self.device)
        self.reserve(ids.size(1))
        rows = self.cache.rows(row, row + ids.size(0))
        rows.lengths[:] = start
        memory = self.memory
        if memory is not None and (row, ids.size(0)) != (0, memory.mask.size(0)):  # these rows' own sources
            memory = memory.select(torch.arange(row, row + ids.size(0), device=self.device))
        logits, _ = self.model(ids[:, start:], cache=rows, memory=memory, last_only=not every, adapters=adapters)
        return logits if every else logits[:, -1]

    def step(self, tokens: torch.Tensor, histories: Sequence[Sequence[int]] | torch.Tensor | None = None,
             adapters: Sequence[Adapter | None] = ()) -> torch.Tensor:
        """Append `tokens[i]` to row i for rows 0..n-1; the logits (n, V) after it.

        A row whose context is full first keeps the latest half of its history (`histories[i]`, which
        ends with the token being appended) and carries on from there."""
        n = tokens.size(0)
        for row in np.flatnonzero(self.cache.lengths[:n] >= self.capacity):
            recent = histories[row][-(self.capacity // 2):-1]
            self.prefill([recent.tolist() if torch.is_tensor(recent) else list(recent)], int(row),
                         adapters=adapters[row:row + 1])
        self.reserve(int(self.cache.lengths[:n].max()) + 1)
        with decoding_threads(self.blas, n):
            logits, _ = self.model(tokens.view(n, 1), cache=self.cache.rows(0, n), memory=self.memory,
                                   last_only=True, adapters=adapters)
        return logits[:, -1]

    def extend(self, tokens: torch.Tensor, adapters: Sequence[Adapter | None] = ()) -> torch.Tensor:
        """Append `tokens[i]` (n, T) to row i for rows 0..n-1; the logits (n, T, V) after each of them.
        Speculative decoding's check of drafted tokens: the caller keeps rows within the context and
        sets each row's length back to what it accepts (`cache.lengths`)."""
        n, width = tokens.shape
        self.reserve(int(self.cache.lengths[:n].max()) + width)
        logits, _ = self.model(tokens, cache=self.cache.rows(0, n), memory=self.memory, adapters=adapters)
        return logits
