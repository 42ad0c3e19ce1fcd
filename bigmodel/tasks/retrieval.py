"""`retrieval`: a query and its document pulled together, the batch's other documents pushed away
(in-batch negatives over normalised mean-pooled embeddings)."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from bigmodel.config import FinetuneConfig
from bigmodel.data.collate import collate, encode
from bigmodel.device import autocast
from bigmodel.evaluate.retrieval import recall_at
from bigmodel.model.heads import mean_pool
from bigmodel.model.transformer import Transformer
from bigmodel.tasks.base import Task, evaluating

RETRIEVAL_TEMPERATURE = 0.05  # the scale of in-batch contrastive logits, as sentence-transformers uses


class RetrievalTask(Task):
    """Contrastive: each query's own document against the batch's other documents."""

    metric, minimize = "recall_at_1", False
    figures = ["recall_at_1", "recall_at_5", "recall_at_10", "mrr_at_10"]

    def __init__(self, cfg: FinetuneConfig, backbone: Transformer, tok: Tokenizer) -> None:
        super().__init__(cfg, backbone, tok)
        self.train = self.read_pairs(cfg.train)[:cfg.max_train or None]
        self.examples = len(self.train)
        self.val = self._encode(self.read_pairs(cfg.val))

    def _encode(self, pairs: list[tuple[str, ...]]) -> list[tuple[list[int], list[int]]]:
        queries = encode(self.tok, [q for q, _ in pairs], self.max_length)
        return list(zip(queries, encode(self.tok, [d for _, d in pairs], self.max_length), strict=True))

    def train_items(self, rng: random.Random) -> list[tuple[list[int], list[int]]]:
        return self._encode(self.train)

    def length(self, item: tuple[list[int], list[int]]) -> int:
        return len(item[1])

    def _embed(self, model: torch.nn.Module, rows: list[list[int]], device: torch.device) -> torch.Tensor:
        x, mask = collate(rows, self.pad, device)
        with autocast(self.cfg.dtype, device):
            pooled = mean_pool(model.hidden_states(x, padding_mask=mask), mask)
        return F.normalize(pooled.float(), dim=-1)

    def _logits(self, model: torch.nn.Module, items: list[tuple[list[int], list[int]]], device: torch.device
                ) -> torch.Tensor:
        queries = self._embed(model, [q for q, _ in items], device)
        return queries @ self._embed(model, [d for _, d in items], device).T / RETRIEVAL_TEMPERATURE

    def loss(self, model: torch.nn.Module, items: list[tuple[list[int], list[int]]], device: torch.device
             ) -> torch.Tensor:
        logits = self._logits(model, items, device)
        return F.cross_entropy(logits, torch.arange(len(items), device=device), reduction="sum")

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Recall@k and MRR@10 with every validation document as a candidate; the loss over batches of 64."""
        with evaluating(model):
            device = next(model.parameters()).device
            queries = torch.cat([self._embed(model, [q for q, _ in self.val[i:i + 64]], device)
                                 for i in range(0, len(self.val), 64)])
            docs = torch.cat([self._embed(model, [d for _, d in self.val[i:i + 64]], device)
                              for i in range(0, len(self.val), 64)])
            losses = [self.loss(model, self.val[i:i + 64], device).item() for i in range(0, len(self.val), 64)]
            return {**recall_at(queries.float().cpu().numpy(), docs.float().cpu().numpy()),
                    "val_loss": sum(losses) / len(self.val)}
