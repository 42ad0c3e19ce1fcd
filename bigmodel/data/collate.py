"""Texts → token-id rows → right-padded batches: what every head (classify, embed) feeds on.

The tokenizer a checkpoint carries never pads or truncates (see `plain_tokenizer`); cutting
texts to a model's length happens here, on a private copy, so no setting leaks back into
the caller's tokenizer or into a checkpoint saved from it.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from bigmodel.data.tokenizer import PAD, plain_tokenizer


def pad_id(tok: Tokenizer) -> int:
    """The id batches pad with: ours, BERT's or a common spelling, else 0 (masked out anyway)."""
    for token in (PAD, "[PAD]", "<pad>"):
        if tok.token_to_id(token) is not None:
            return tok.token_to_id(token)
    return 0


def encode(tok: Tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text (special tokens included), cut to `max_length`; `tok` is left untouched."""
    cutter = plain_tokenizer(tok)
    cutter.enable_truncation(max_length=max_length)
    return [e.ids for e in cutter.encode_batch(texts)]


def collate(rows: list[list[int]], pad_id: int, device: torch.device | str = "cpu"
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and the mask of real tokens, on `device`."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = True
    return ids.to(device), mask.to(device)
