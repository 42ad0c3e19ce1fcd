"""Text generation with the KV cache: greedy, temperature, top-k and top-p sampling.

The prompt is run once to fill the cache; every new token then costs one forward pass of
a single position. Text streams out through `StreamDecoder`, so a character split across
byte-level tokens (Chinese, emoji) is never printed half-made.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

import torch
from tokenizers import Tokenizer

from bigmodel.config import GenerateConfig
from bigmodel.data.tokenizer import StreamDecoder, stop_ids
from bigmodel.errors import BigModelError
from bigmodel.infer.decoder import Decoder, sample_next
from bigmodel.model.transformer import Transformer


@torch.no_grad()
def generate_ids(model: Transformer, prompt: list[int], cfg: GenerateConfig, batch_size: int = 1,
                 stops: Collection[int] = (), generator: torch.Generator | None = None,
                 ) -> Iterator[torch.Tensor]:
    """Yield the next token of each of `batch_size` continuations, step by step.

    Stops after `max_new_tokens`, or once every row has produced one of `stops`; a full context keeps
    its latest half (`Decoder.step`). The cache holds what this call can reach, not the whole context.
    """
    block = model.config.block_size
    if not prompt:
        raise BigModelError("the prompt is empty (after tokenization)")
    if len(prompt) >= block:
        raise BigModelError(f"the prompt is {len(prompt)} tokens; the context holds {block} (leave room to generate)")
    decoder = Decoder(model, batch_size, len(prompt) + cfg.max_new_tokens)
    if generator is None:
        generator = torch.Generator(device=decoder.device).manual_seed(cfg.seed)
    history = torch.tensor(prompt, device=decoder.device).repeat(batch_size, 1)
    logits = decoder.prefill(history)
    done = torch.zeros(batch_size, dtype=torch.bool, device=decoder.device)
    stop = torch.tensor(sorted(stops), dtype=torch.long, device=decoder.device)
    for step in range(cfg.max_new_tokens):
        token = sample_next(logits, cfg, generator)
        yield token
        done |= torch.isin(token, stop)
        if step == cfg.max_new_tokens - 1 or bool(done.all()):
            return
        history = torch.cat([history, token[:, None]], dim=1)
        logits = decoder.step(token, history)


def stream_text(model: Transformer, tok: Tokenizer, prompt: str, cfg: GenerateConfig,
                generator: torch.Generator | None = None, stops: Collection[int] | None = None) -> Iterator[str]:
    """Pieces of text of one continuation of `prompt`, as they are produced, up to one of `stops`
    (default: the end-of-text token). Special tokens in `prompt` (a chat template's) count as such."""
    stops = stop_ids(tok) if stops is None else stops
    decoder = StreamDecoder(tok)
    for tokens in generate_ids(model, tok.encode(prompt, add_special_tokens=False).ids, cfg,
                               1, stops, generator):
        token = int(tokens[0])
        if token in stops:
            break
        piece = decoder.push(token)
        if piece:
            yield piece
    tail = decoder.flush()
    if tail:
        yield tail


def generate_texts(model: Transformer, tok: Tokenizer, prompt: str, cfg: GenerateConfig,
                   stops: Collection[int] | None = None) -> list[str]:
    """All `cfg.num_samples` continuations of `prompt`, each cut at its first of `stops` (as `stream_text`)."""
    stops = stop_ids(tok) if stops is None else stops
    steps = list(generate_ids(model, tok.encode(prompt, add_special_tokens=False).ids, cfg,
                              cfg.num_samples, stops))
    texts = []
    for row in torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(cfg.num_samples)]:
        end = next((i for i, t in enumerate(row) if t in stops), len(row))
        texts.append(tok.decode(row[:end]))
    return texts
