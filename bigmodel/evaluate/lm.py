"""Language-model evaluation: loss, perplexity and bits per byte over a whole text.

Every token is scored exactly once, in consecutive non-overlapping windows of the model's
context (at most 2,048 tokens, or `window`: a long-context model is scored as it is mostly used), so the
figures cover the full split rather than a random sample of it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from bigmodel.data.batches import open_split
from bigmodel.data.readers import CorpusReader
from bigmodel.data.tokenizer import EOT, special_id, unknown_id
from bigmodel.errors import BigModelError
from bigmodel.model.transformer import Transformer


@dataclass
class LMReport:
    source: str
    tokens: int
    bytes: int
    loss: float
    perplexity: float
    bits_per_byte: float
    unknown_chars: int = 0
    unknown_examples: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def score_tokens(model: Transformer, tokens: np.ndarray, window: int | None = None) -> tuple[float, int]:
    """Summed next-token negative log-likelihood (nats) and how many tokens were scored, in windows of
    `window` tokens (default 2,048; at most the context), about 4,096 tokens per forward pass."""
    block = min(window or 2048, model.config.block_size)
    batch_size = max(1, min(16, 4096 // block))
    device = next(model.parameters()).device
    n = len(tokens) - 1
    if n < 1:
        raise BigModelError("the text is shorter than two tokens; nothing to score")
    starts = list(range(0, n, block))
    total_nll, scored = 0.0, 0
    for i in tqdm(range(0, len(starts), batch_size), desc="evaluate", unit=" batches", mininterval=1.0):
        chunk = starts[i:i + batch_size]
        width = min(block, n - chunk[0])
        x = torch.zeros(len(chunk), width, dtype=torch.long)
        y = torch.full((len(chunk), width), -1, dtype=torch.long)
        for row, start in enumerate(chunk):
            length = min(block, n - start)
            window = torch.from_numpy(tokens[start:start + length + 1].astype(np.int64))
            x[row, :length], y[row, :length] = window[:-1], window[1:]
        x, y = x.to(device), y.to(device)
        logits, _ = model(x)
        nll = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1),
                                                ignore_index=-1, reduction="sum")
        total_nll += nll.item()
        scored += int((y != -1).sum())
    return total_nll, scored


def _report(source: str, nll: float, scored: int, n_bytes: int, **extra) -> LMReport:
    loss = nll / scored
    return LMReport(source, scored, n_bytes, loss, math.exp(min(loss, 700)), nll / math.log(2) / max(n_bytes, 1),
                    **extra)


def evaluate_split(model: Transformer, tok: Tokenizer, data_dir: str, split: str = "val",
                   window: int | None = None) -> LMReport:
    """Score a split prepared by `bigmodel prepare` (which must share the model's tokenizer)."""
    tokens = open_split(data_dir, split)
    if int(tokens.max()) >= model.config.vocab_size:
        raise BigModelError(f"{data_dir}: token ids exceed the model's vocabulary; prepared with another tokenizer?")
    n_bytes = sum(len(tok.decode(tokens[i:i + 65536].tolist()).encode("utf-8"))
                  for i in range(1, len(tokens), 65536))  # bytes of every predicted token
    nll, scored = score_tokens(model, tokens, window)
    return _report(f"{data_dir} ({split})", nll, scored, n_bytes)


@dataclass
class TextTokens:
    """A raw text file tokenized the way the checkpoint's training data was (documents joined as `prepare`
    joins them), with what the tokenizer could not spell."""

    ids: np.ndarray
    n_bytes: int
    unknown: dict[str, int]


def text_tokens(tok: Tokenizer, path: str) -> TextTokens:
    eot, unk = special_id(tok, EOT), unknown_id(tok)
    ids: list[int] = []
    n_bytes = 0
    unknown: dict[str, int] = {}
    for doc in CorpusReader([path]):
        text = doc.text if doc.ends_source else doc.text + "\n\n"
        enc = tok.encode(text, add_special_tokens=False)
        ids.extend(enc.ids + ([eot] if doc.ends_source and eot is not None else []))
        n_bytes += len(text.encode("utf-8"))
        if unk is not None:
            for token_id, (start, end) in zip(enc.ids, enc.offsets, strict=True):
                if token_id == unk:
                    unknown[text[start:end]] = unknown.get(text[start:end], 0) + 1
    return TextTokens(np.asarray(ids, dtype=np.int64), n_bytes, unknown)


def evaluate_text(model: Transformer, tok: Tokenizer, path: str, window: int | None = None) -> LMReport:
    """Score a raw text file, tokenized the way the checkpoint's training data was."""
    text = text_tokens(tok, path)
    nll, scored = score_tokens(model, text.ids, window)
    examples = " ".join(repr(c) for c, _ in sorted(text.unknown.items(), key=lambda kv: -kv[1])[:5])
    return _report(str(Path(path)), nll, scored, text.n_bytes, unknown_chars=sum(text.unknown.values()),
                   unknown_examples=examples)


def evaluate_lm(model: Transformer, tok: Tokenizer, data: str, split: str = "val",
                window: int | None = None) -> LMReport:
    """`data` is a prepared folder (its `split`) or a raw .txt/.jsonl/.csv file."""
    if Path(data).is_dir():
        return evaluate_split(model, tok, data, split, window)
    return evaluate_text(model, tok, data, window)
