"""`qa`: a start/end head over each token of a (question, context) pair, from SQuAD JSON."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from bigmodel.config import FinetuneConfig
from bigmodel.data.collate import collate
from bigmodel.data.squad import read_squad
from bigmodel.device import autocast
from bigmodel.errors import BigModelError
from bigmodel.evaluate.qa import squad_scores
from bigmodel.infer import qa
from bigmodel.model.heads import HeadConfig, SequenceModel
from bigmodel.model.transformer import Transformer
from bigmodel.tasks.base import Task, evaluating


class QATask(Task):
    """Start and end token of the answer, each a softmax over the context's tokens."""

    metric, minimize = "f1", False
    figures = ["exact_match", "f1"]

    def __init__(self, cfg: FinetuneConfig, backbone: Transformer, tok: Tokenizer) -> None:
        model = SequenceModel(backbone, HeadConfig(task="qa", labels=["start", "end"]), cfg.head_dropout)
        super().__init__(cfg, model, tok)
        questions = read_squad(cfg.train, need_answers=True)[:cfg.max_train or None]
        self.items = [f for f in qa.features(tok, questions, self.max_length) if f.start >= 0]
        if not self.items:
            raise BigModelError(f"{cfg.train}: no answer fits in --max-length {self.max_length} tokens")
        self.examples = len(self.items)
        self.val = read_squad(cfg.val, need_answers=True)
        self.val_features = qa.features(tok, self.val, self.max_length)

    def train_items(self, rng: random.Random) -> list[qa.Feature]:
        return self.items

    def length(self, item: qa.Feature) -> int:
        return len(item.ids)

    def _scores(self, model: torch.nn.Module, batch: list[qa.Feature], device: torch.device) -> torch.Tensor:
        x, mask = collate([f.ids for f in batch], self.pad, device)
        with autocast(self.cfg.dtype, device):
            logits = model(x, mask).float()
        return logits.masked_fill(~qa.context_mask(batch, x.size(1), device)[..., None], -1e4)

    def loss(self, model: torch.nn.Module, items: list[qa.Feature], device: torch.device) -> torch.Tensor:
        logits = self._scores(model, items, device)
        starts = torch.tensor([f.start for f in items], device=device)
        ends = torch.tensor([f.end for f in items], device=device)
        return (F.cross_entropy(logits[..., 0], starts, reduction="sum")
                + F.cross_entropy(logits[..., 1], ends, reduction="sum")) / 2

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        with evaluating(model):
            device = next(model.parameters()).device
            answers, total, counted = [], 0.0, 0
            for start in range(0, len(self.val_features), 32):
                batch = self.val_features[start:start + 32]
                logits = self._scores(model, batch, device).cpu()
                for row, (q, f) in enumerate(zip(self.val[start:start + 32], batch, strict=True)):
                    i, j, _ = qa.best_span(logits[row], f)
                    answers.append(qa.answer_text(q, f, i, j)[0])
                kept = [r for r, f in enumerate(batch) if f.start >= 0]
                if kept:
                    targets = torch.tensor([[batch[r].start, batch[r].end] for r in kept])
                    total += (F.cross_entropy(logits[kept, :, 0], targets[:, 0], reduction="sum")
                              + F.cross_entropy(logits[kept, :, 1], targets[:, 1], reduction="sum")).item() / 2
                    counted += len(kept)
            return {**squad_scores(answers, [q.answers for q in self.val]), "val_loss": total / max(counted, 1)}
