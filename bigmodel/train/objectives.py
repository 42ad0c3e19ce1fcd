"""Training objectives that turn a window of tokens into (inputs, targets).

Causal LM predicts each next token. Masked LM (BERT) hides 15% of the tokens — 80% become
the mask token, 10% a random token, 10% stay — and predicts only those; -1 marks targets
that do not count. Span corruption (T5) cuts 15% of the tokens out in spans of 3 on
average; the encoder reads the text with a sentinel where each span was, the decoder
writes each sentinel followed by the span it stands for.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from bigmodel.data.tokenizer import EOT, MASK, SPECIAL_TOKENS, UNK
from bigmodel.errors import BigModelError


class MaskedLM:
    def __init__(self, tok: Tokenizer, vocab_size: int, seed: int, rate: float = 0.15) -> None:
        self.mask_id = tok.token_to_id(MASK)
        if self.mask_id is None:
            raise BigModelError(f"--objective mlm needs a {MASK} token in the tokenizer (prepare with bigmodel)")
        self.special = torch.tensor([i for t in [*SPECIAL_TOKENS, UNK] if (i := tok.token_to_id(t)) is not None])
        self.vocab_size = vocab_size
        self.rate = rate
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, tokens: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        g = generator or self.generator
        draw = torch.rand(tokens.shape, generator=g)
        chosen = (draw < self.rate) & ~torch.isin(tokens, self.special)
        targets = torch.where(chosen, tokens, torch.full_like(tokens, -1))
        action = torch.rand(tokens.shape, generator=g)
        random_ids = torch.randint(self.vocab_size, tokens.shape, generator=g)
        inputs = torch.where(chosen & (action < 0.8), torch.full_like(tokens, self.mask_id), tokens)
        inputs = torch.where(chosen & (action >= 0.9), random_ids, inputs)
        return {"idx": inputs}, targets


def masked_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """Correct predictions and how many positions counted (targets != -1)."""
    counted = targets != -1
    return int((logits.argmax(-1)[counted] == targets[counted]).sum()), int(counted.sum())


class SpanCorruption:
    """T5's objective with one sentinel (the mask token) for every span: the spans come back in order.

    With a fixed window, noise rate and span count, every row's source and target have the
    same lengths, so batches need no padding."""

    def __init__(self, tok: Tokenizer, seed: int, rate: float = 0.15, mean_span: float = 3.0) -> None:
        self.sentinel, self.start = tok.token_to_id(MASK), tok.token_to_id(EOT)
        if self.sentinel is None or self.start is None:
            raise BigModelError(f"--objective span needs {MASK} and {EOT} in the tokenizer (use bigmodel prepare)")
        self.rate, self.mean_span = rate, mean_span
        self.generator = torch.Generator().manual_seed(seed)

    def _parts(self, total: int, n: int, g: torch.Generator) -> list[int]:
        """`total` split at random into `n` positive parts."""
        cuts = sorted((torch.randperm(total - 1, generator=g)[:n - 1] + 1).tolist())
        return [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]

    def __call__(self, tokens: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        g = generator or self.generator
        T = tokens.size(1)
        noise = max(1, round(T * self.rate))
        spans = max(1, min(round(noise / self.mean_span), T - noise))
        sources, targets = [], []
        for row in tokens.tolist():
            source, target, at = [], [], 0
            for keep, cut in zip(self._parts(T - noise, spans, g), self._parts(noise, spans, g), strict=True):
                source += [*row[at:at + keep], self.sentinel]
                target += [self.sentinel, *row[at + keep:at + keep + cut]]
                at += keep + cut
            sources.append(source)
            targets.append(target)
        targets = torch.tensor(targets)
        idx = torch.cat([torch.full((len(targets), 1), self.start), targets], dim=1)
        labels = torch.cat([targets, torch.full((len(targets), 1), self.start)], dim=1)
        return {"idx": idx, "source": torch.tensor(sources)}, labels
