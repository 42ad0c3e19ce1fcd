"""`seq2seq`: a target text from a source text, teacher-forced with label smoothing; an encoder-decoder,
or a decoder-only model reading `source <|endoftext|> target`."""

from __future__ import annotations

import random

import torch
from tokenizers import Tokenizer

from bigmodel.config import FinetuneConfig
from bigmodel.data.collate import collate, encode
from bigmodel.device import autocast
from bigmodel.model.transformer import Transformer
from bigmodel.tasks.base import Task, teacher_forced_figures


class Seq2SeqTask(Task):
    """Teacher forcing: the decoder sees the target shifted right behind the start token and
    predicts each next target token, then the end; the loss is per target token."""

    figures = ["token_accuracy"]

    def __init__(self, cfg: FinetuneConfig, backbone: Transformer, tok: Tokenizer) -> None:
        from bigmodel.infer.seq2seq import start_id

        super().__init__(cfg, backbone, tok)
        self.train = self.read_pairs(cfg.train)[:cfg.max_train or None]
        self.examples = len(self.train)
        self.stop = start_id(tok)
        self.encoder_decoder = backbone.config.encoder_layers > 0
        self.val_items = self._encode(self.read_pairs(cfg.val))

    def _encode(self, pairs: list[tuple[str, ...]]) -> list[tuple[list[int], list[int]]]:
        """(source ids, target ids): a decoder-only model needs both, and its start token, in one context."""
        sources = encode(self.tok, [s for s, _ in pairs], self.max_length)
        targets = encode(self.tok, [t for _, t in pairs], self.max_length - 1)
        if not self.encoder_decoder:
            room = [max(self.max_length - 2 - len(t), 1) for t in targets]
            sources = [s[-r:] for s, r in zip(sources, room, strict=True)]  # keep the source's end, near the target
        return list(zip(sources, targets, strict=True))

    def train_items(self, rng: random.Random) -> list[tuple[list[int], list[int]]]:
        return self._encode(self.train)

    def length(self, item: tuple[list[int], list[int]]) -> int:
        return len(item[0]) + len(item[1])

    def units(self, items: list[tuple[list[int], list[int]]]) -> int:
        return sum(len(t) + 1 for _, t in items)

    def _batch(self, items: list[tuple[list[int], list[int]]], device: torch.device) -> dict[str, torch.Tensor]:
        """The model's keyword arguments: inputs, targets (-1 where nothing is predicted), masks."""
        if self.encoder_decoder:
            source, source_mask = collate([s for s, _ in items], self.pad, device)
            rows = [[self.stop, *t] for _, t in items]
            idx, _ = collate(rows, self.pad, device)
            targets = collate([[*t, self.stop] for _, t in items], -1, device)[0]
            return {"idx": idx, "targets": targets, "source": source, "source_mask": source_mask}
        rows = [[*s, self.stop, *t] for s, t in items]
        idx, mask = collate(rows, self.pad, device)
        targets = collate([[-1] * len(s) + [*t, self.stop] for s, t in items], -1, device)[0]
        return {"idx": idx, "targets": targets, "padding_mask": mask}

    def loss(self, model: torch.nn.Module, items: list[tuple[list[int], list[int]]], device: torch.device
             ) -> torch.Tensor:
        batch = self._batch(items, device)
        with autocast(self.cfg.dtype, device):
            _, loss = model(**batch, label_smoothing=self.cfg.label_smoothing)
        return loss * self.units(items)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Teacher-forced loss (no smoothing) and next-token accuracy over the target tokens."""
        device = next(model.parameters()).device
        order = sorted(self.val_items, key=self.length)
        return teacher_forced_figures(model, (self._batch(order[start:start + 64], device)
                                              for start in range(0, len(order), 64)), self.cfg.dtype)
