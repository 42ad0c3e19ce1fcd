"""Sequence-to-sequence generation: a source text in, a target text out.

One convention serves both model shapes. The target starts after an end-of-text token and
ends with one: an encoder-decoder reads the source through its encoder and its decoder
starts from that token alone; a decoder-only model reads `source <|endoftext|>` as its
prompt. Decoding is greedy, sampled, or a beam search with a length penalty, all through the
KV cache (and, for an encoder-decoder, cross-attention keys/values computed once).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from bigmodel.config import GenerateConfig
from bigmodel.data.collate import collate, encode, pad_id
from bigmodel.data.tokenizer import EOT, special_id
from bigmodel.errors import BigModelError
from bigmodel.infer.decoder import Decoder, sample_next
from bigmodel.model.decoding import decoding_threads
from bigmodel.model.transformer import Memory, Transformer


def start_id(tok: Tokenizer) -> int:
    """The token a target starts after and ends with."""
    token = special_id(tok, EOT)
    if token is None:
        raise BigModelError(f"sequence-to-sequence needs an {EOT} token in the tokenizer (prepare with bigmodel)")
    return token


@torch.no_grad()
def decode(model: Transformer, prefixes: list[list[int]], cfg: GenerateConfig, stop_id: int,
           memory: Memory | None = None, beam: bool | None = None, also_stop: frozenset[int] = frozenset(),
           rules: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
           scored: bool = False) -> list[list[int]] | tuple[list[list[int]], list[float]]:
    """The continuation of each prefix, cut before `stop_id` (or any of `also_stop`: a chat model's end
    of turn). Prefixes may differ in length: each fills its own cache rows, and the rows then step
    together at their own positions, so a batch needs no padding.

    `beam` (default: `cfg.beams > 1`) keeps the `cfg.beams` most likely continuations of
    each prefix by summed log-probability; a finished one stays in the running with its score
    frozen, and the winner maximises score / length ** `cfg.length_penalty`. Otherwise each
    row samples (greedy at temperature 0). `rules(logits, generated so far)` may forbid tokens
    (Whisper's suppressed tokens) before each choice. `scored` also returns each continuation's summed
    log-probability (its end included) under the logits the rules left, before any temperature."""
    beam = cfg.beams > 1 if beam is None else beam
    B, K = len(prefixes), cfg.beams if beam else 1
    device = next(model.parameters()).device
    rows = torch.arange(B, device=device).repeat_interleave(K)
    longest = max(len(prefix) for prefix in prefixes)
    steps = min(cfg.max_new_tokens, model.config.block_size - longest)
    if steps <= 0:
        raise BigModelError(f"the source is {longest} tokens; the context holds {model.config.block_size}")
    if memory is not None:
        memory = memory.select(rows)
    decoder = Decoder(model, B * K, longest + steps, memory)
    if len({len(prefix) for prefix in prefixes}) == 1:
        logits = decoder.prefill(torch.tensor(prefixes, device=device)[rows]).float()
    else:  # each prompt runs into its own rows
        logits = torch.cat([decoder.prefill([prefix] * K, row=i * K) for i, prefix in enumerate(prefixes)]).float()
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    scores = torch.zeros(B, K, device=device)
    scores[:, 1:] = float("-inf")  # all beams start as one: only the first may extend at first
    done = torch.zeros(B * K, dtype=torch.bool, device=device)
    stops = torch.tensor(sorted({stop_id, *also_stop}), device=device)
    lengths = torch.zeros(B * K, device=device)
    out = torch.zeros(B * K, 0, dtype=torch.long, device=device)
    for _ in range(steps):
        with decoding_threads(decoder.blas, B * K):  # a step's policy: no torch threads fighting OpenBLAS's
            if rules is not None:
                logits = rules(logits, out)
            if beam:
                logp = logits.log_softmax(-1)
                logp[done] = float("-inf")
                logp[done, stop_id] = 0.0  # a finished beam continues only by ending again, at no cost
                top = (scores.view(-1, 1) + logp).view(B, -1).topk(K, dim=-1)
                scores, token = top.values, (top.indices % logp.size(-1)).view(-1)
                parent = (torch.arange(B, device=device)[:, None] * K + top.indices // logp.size(-1)).view(-1)
                decoder.cache.select(parent)
                out, done, lengths = out[parent], done[parent], lengths[parent]
            else:
                token = torch.where(done, stop_id, sample_next(logits, cfg, generator))
                if scored:
                    taken = logits.log_softmax(-1).gather(-1, token[:, None])[:, 0]
                    scores += torch.where(done, 0.0, taken).view(B, K)
            lengths += ~done
            out = torch.cat([out, token[:, None]], dim=1)
            done |= torch.isin(token, stops)
        if bool(done.all()):
            break
        logits = decoder.step(token).float()
    if beam:
        best = (scores / lengths.view(B, K).clamp(min=1) ** cfg.length_penalty).argmax(-1)
        out, scores = out[torch.arange(B, device=device) * K + best], scores.gather(1, best[:, None])
    ends = set(stops.tolist())
    found = [row[:next((i for i, t in enumerate(row) if t in ends), len(row))] for row in out.tolist()]
    return (found, scores[:, 0].tolist()) if scored else found


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar length, shortest first."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


@torch.no_grad()
def generate_targets(model: Transformer, tok: Tokenizer, sources: list[str], cfg: GenerateConfig,
                     max_source_length: int = 512, batch_size: int = 32, progress: bool = False) -> list[str]:
    """The target text of each source, in input order."""
    stop = start_id(tok)
    seq2seq = model.config.encoder_layers > 0
    limit = min(max_source_length, model.config.block_size - (0 if seq2seq else 1))
    ids = encode(tok, sources, limit)
    if not seq2seq:  # the prompt is the source and the start token
        ids = [row + [stop] for row in ids]
    batches = length_batches([len(row) for row in ids], batch_size)
    outputs: list[str] = [""] * len(ids)
    pad = pad_id(tok)
    model.eval()
    for batch in tqdm(batches, desc="generate", unit=" batches", mininterval=1.0, disable=not progress):
        if seq2seq:
            memory = model.encode(*collate([ids[i] for i in batch], pad, next(model.parameters()).device))
            found = decode(model, [[stop]] * len(batch), cfg, stop, memory)
        else:
            found = decode(model, [ids[i] for i in batch], cfg, stop)
        for i, target in zip(batch, found, strict=True):
            outputs[i] = tok.decode(target).strip()
    return outputs
