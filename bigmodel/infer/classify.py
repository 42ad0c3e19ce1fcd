"""Running a fine-tuned `SequenceModel`: tokenize, batch by length, score."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from bigmodel.data.tokenizer import PAD


def pad_id(tok: Tokenizer) -> int:
    for token in (PAD, "[PAD]", "<pad>"):
        if tok.token_to_id(token) is not None:
            return tok.token_to_id(token)
    return 0


def encode(tok: Tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return [e.ids for e in tok.encode_batch(texts)]


def collate(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and the mask of real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = True
    return ids, mask


@torch.no_grad()
def predict_scores(model: torch.nn.Module, ids: list[list[int]], pad_id: int, n_outputs: int,
                   dtype: str = "fp32", batch_size: int = 64) -> torch.Tensor:
    """Raw head outputs for every row, in input order (the model's train/eval mode is left as it was)."""
    training = model.training
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.zeros(len(ids), n_outputs)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        x, mask = collate([ids[i] for i in rows], pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out[rows] = model(x, mask).float()
    model.train(training)
    return out


def predict_texts(model: torch.nn.Module, tok: Tokenizer, texts: list[str], max_length: int = 512
                  ) -> torch.Tensor:
    """Head outputs for raw texts, in input order."""
    ids = encode(tok, texts, min(max_length, model.config.block_size))
    return predict_scores(model, ids, pad_id(tok), model.head_config.n_outputs)
