"""Text generation with the KV cache: greedy, temperature, top-k and top-p sampling.

The prompt is run once to fill the cache; every new token then costs one forward pass of
a single position. Text streams out through `StreamDecoder`, so a character split across
byte-level tokens (Chinese, emoji) is never printed half-made.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from tokenizers import Tokenizer

from bigmodel.config import GenerateConfig
from bigmodel.data.tokenizer import EOT, StreamDecoder, special_id
from bigmodel.errors import BigModelError
from bigmodel.model.cache import KVCache
from bigmodel.model.decoding import decoding_threads
from bigmodel.model.transformer import Transformer


def sample_next(logits: torch.Tensor, cfg: GenerateConfig, generator: torch.Generator) -> torch.Tensor:
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
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_ids(model: Transformer, prompt: list[int], cfg: GenerateConfig, batch_size: int = 1,
                 stop_id: int | None = None, generator: torch.Generator | None = None,
                 ) -> Iterator[torch.Tensor]:
    """Yield the next token of each of `batch_size` continuations, step by step.

    Stops after `max_new_tokens`, or once every row has produced `stop_id`. When the
    context fills, the cache is rebuilt from the most recent half of the window.
    """
    block = model.config.block_size
    if not prompt:
        raise BigModelError("the prompt is empty (after tokenization)")
    if len(prompt) >= block:
        raise BigModelError(f"the prompt is {len(prompt)} tokens; the context holds {block} (leave room to generate)")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    history = torch.tensor(prompt, device=device).repeat(batch_size, 1)
    cache = KVCache.allocate(model.config, batch_size, block, dtype, device)
    logits, _ = model(history, cache=cache, last_only=True)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    for step in range(cfg.max_new_tokens):
        token = sample_next(logits[:, -1, :], cfg, generator)
        yield token
        if stop_id is not None:
            done |= token == stop_id
        if step == cfg.max_new_tokens - 1 or bool(done.all()):
            return
        history = torch.cat([history, token[:, None]], dim=1)
        if int(cache.lengths[0]) == block:
            cache.lengths[:] = 0
            logits, _ = model(history[:, -(block // 2):], cache=cache, last_only=True)
        else:
            with decoding_threads(model, batch_size):
                logits, _ = model(token[:, None], cache=cache, last_only=True)


def stream_text(model: Transformer, tok: Tokenizer, prompt: str, cfg: GenerateConfig,
                generator: torch.Generator | None = None) -> Iterator[str]:
    """Pieces of text of one continuation of `prompt`, as they are produced."""
    stop_id = special_id(tok, EOT)
    decoder = StreamDecoder(tok)
    for tokens in generate_ids(model, tok.encode(prompt, add_special_tokens=False).ids, cfg,
                               1, stop_id, generator):
        token = int(tokens[0])
        if token == stop_id:
            break
        piece = decoder.push(token)
        if piece:
            yield piece
    tail = decoder.flush()
    if tail:
        yield tail


def generate_texts(model: Transformer, tok: Tokenizer, prompt: str, cfg: GenerateConfig) -> list[str]:
    """All `cfg.num_samples` continuations of `prompt`, each cut at its end-of-text token."""
    stop_id = special_id(tok, EOT)
    steps = list(generate_ids(model, tok.encode(prompt, add_special_tokens=False).ids, cfg,
                              cfg.num_samples, stop_id))
    texts = []
    for row in torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(cfg.num_samples)]:
        ids = row[:row.index(stop_id)] if stop_id in row else row
        texts.append(tok.decode(ids))
    return texts
