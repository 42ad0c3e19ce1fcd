"""Sentence embeddings: attention-masked mean of the last hidden states, L2-normalised,
as sentence-transformers computes them for models such as all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from bigmodel.data.collate import collate, encode, pad_id
from bigmodel.model.heads import mean_pool
from bigmodel.model.transformer import Transformer


def embed_texts(model: Transformer, tok: Tokenizer, texts: list[str], batch_size: int = 32,
                max_length: int = 256) -> np.ndarray:
    """One unit-length vector per text (rows in input order), texts cut at `max_length` tokens."""
    ids = encode(tok, texts, min(max_length, model.config.block_size))
    return embed_ids(model, ids, pad_id(tok), batch_size, progress=True)


@torch.no_grad()
def embed_ids(model: Transformer, ids: list[list[int]], pad: int, batch_size: int = 32,
              progress: bool = False) -> np.ndarray:
    """One unit-length vector per tokenized text, in input order."""
    device = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths pad less
    out = np.zeros((len(ids), model.config.n_embd), dtype=np.float32)
    for start in tqdm(range(0, len(ids), batch_size), desc="embed", unit=" batches", mininterval=1.0,
                      disable=not progress):
        rows = order[start:start + batch_size]
        x, mask = collate([ids[i] for i in rows], pad, device)
        pooled = mean_pool(model.hidden_states(x, padding_mask=mask), mask)
        # normalised in fp32: a bf16 model's unit vectors would be a rounding step away from unit length
        out[rows] = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()
    return out
