"""Running a fine-tuned `SequenceModel`: tokenize, batch by length, score."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from bigmodel.data.collate import collate, encode, pad_id


@torch.no_grad()
def predict_scores(model: torch.nn.Module, ids: list[list[int]], pad_id: int, n_outputs: int,
                   dtype: str = "fp32", batch_size: int = 64) -> torch.Tensor:
    """Raw head outputs (on the CPU) for every row, in input order; the model's train/eval mode is kept."""
    training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.zeros(len(ids), n_outputs)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        x, mask = collate([ids[i] for i in rows], pad_id, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out[rows] = model(x, mask).float().cpu()
    model.train(training)
    return out


def predict_texts(model: torch.nn.Module, tok: Tokenizer, texts: list[str], max_length: int = 512
                  ) -> torch.Tensor:
    """Head outputs for raw texts, in input order."""
    ids = encode(tok, texts, min(max_length, model.config.block_size))
    return predict_scores(model, ids, pad_id(tok), model.head_config.n_outputs)
