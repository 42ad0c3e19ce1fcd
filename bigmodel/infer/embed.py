"""Sentence embeddings: attention-masked mean of the last hidden states, L2-normalised,
as sentence-transformers computes them for models such as all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from bigmodel.model.transformer import Transformer


@torch.no_grad()
def embed_texts(model: Transformer, tok: Tokenizer, texts: list[str], batch_size: int = 32,
                max_length: int = 256) -> np.ndarray:
    """One unit-length vector per text (rows in input order), texts cut at `max_length` tokens."""
    tok.no_padding()
    tok.enable_truncation(max_length=min(max_length, model.config.block_size))
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
    out = np.zeros((len(texts), model.config.n_embd), dtype=np.float32)
    for start in tqdm(range(0, len(texts), batch_size), desc="embed", unit=" batches", mininterval=1.0):
        rows = order[start:start + batch_size]
        encodings = tok.encode_batch([texts[i] for i in rows])
        width = max(len(e.ids) for e in encodings)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        types = torch.zeros_like(ids)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for r, e in enumerate(encodings):
            ids[r, :len(e.ids)] = torch.tensor(e.ids)
            types[r, :len(e.ids)] = torch.tensor(e.type_ids)
            mask[r, :len(e.ids)] = True
        hidden = model.hidden_states(ids, padding_mask=mask, token_types=types)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        out[rows] = torch.nn.functional.normalize(pooled, dim=-1).float().numpy()
    return out
