"""Training objectives that turn a window of tokens into (inputs, targets).

Causal LM predicts each next token. Masked LM (BERT) hides 15% of the tokens — 80% become
the mask token, 10% a random token, 10% stay — and predicts only those; -1 marks targets
that do not count.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from bigmodel.data.tokenizer import MASK, SPECIAL_TOKENS, UNK
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
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        g = generator or self.generator
        draw = torch.rand(tokens.shape, generator=g)
        chosen = (draw < self.rate) & ~torch.isin(tokens, self.special)
        targets = torch.where(chosen, tokens, torch.full_like(tokens, -1))
        action = torch.rand(tokens.shape, generator=g)
        random_ids = torch.randint(self.vocab_size, tokens.shape, generator=g)
        inputs = torch.where(chosen & (action < 0.8), torch.full_like(tokens, self.mask_id), tokens)
        inputs = torch.where(chosen & (action >= 0.9), random_ids, inputs)
        return inputs, targets


def masked_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """Correct predictions and how many positions counted (targets != -1)."""
    counted = targets != -1
    return int((logits.argmax(-1)[counted] == targets[counted]).sum()), int(counted.sum())
