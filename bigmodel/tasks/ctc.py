"""`ctc`: speech to characters, CTC over the encoder's frames."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from bigmodel.config import FinetuneConfig
from bigmodel.data.inputs import AudioInputs
from bigmodel.data.labelled import Example
from bigmodel.data.media import media_examples
from bigmodel.device import autocast
from bigmodel.errors import BigModelError
from bigmodel.evaluate.seq2seq import error_rates
from bigmodel.infer import ctc
from bigmodel.model.heads import HeadConfig, SequenceModel
from bigmodel.model.transformer import Transformer
from bigmodel.tasks.base import Task, evaluating


class CTCTask(Task):
    """Speech recognition: per-frame character scores, CTC loss (output 0 is the blank), greedy decoding.

    The alphabet is the training transcripts' characters (lower-cased, spaces collapsed); the
    head's labels record it, so a checkpoint needs no tokenizer."""

    metric, minimize = "cer", True
    figures = ["cer", "wer"]

    def __init__(self, cfg: FinetuneConfig, backbone: Transformer, tok: Tokenizer | None) -> None:
        if backbone.config.frontend != "mel":
            raise BigModelError("--task ctc needs an audio model (frontend: mel)")
        self.inputs = AudioInputs(backbone.config)
        train = media_examples(cfg.train, self.inputs.suffixes, cfg.source_column, cfg.target_column)
        train = train[:cfg.max_train or None]
        alphabet = [ctc.BLANK, *sorted({c for e in train for c in ctc.normalize(e.label)})]
        super().__init__(cfg, SequenceModel(backbone, HeadConfig(task="ctc", labels=alphabet), cfg.head_dropout), tok)
        self.waves, self.targets = self._read(train)
        self.examples = len(self.waves)
        val = media_examples(cfg.val, self.inputs.suffixes, cfg.source_column, cfg.target_column)
        self.val_waves, self.val_targets = self._read(val)
        self.references = [ctc.normalize(e.label) for e in val]

    def _read(self, examples: list[Example]) -> tuple[list[torch.Tensor], list[list[int]]]:
        """Waveforms and target ids; a transcript longer than its clip's frames cannot be aligned."""
        index = {c: i for i, c in enumerate(self.model.head_config.labels)}
        waves = self.inputs.read([e.text for e in examples])
        targets = [[index[c] for c in ctc.normalize(e.label) if c in index] for e in examples]
        for e, w, t in zip(examples, waves, targets, strict=True):
            if not t or len(t) > self.inputs.length(w):
                raise BigModelError(f"{e.text}: transcript of {len(t)} characters does not fit its "
                                    f"{self.inputs.length(w)} frames (CTC needs 1 to {self.inputs.length(w)})")
        return waves, targets

    def train_items(self, rng: random.Random) -> list[tuple[torch.Tensor, list[int]]]:
        waves = [self.inputs.augment(w, rng) for w in self.waves] if self.cfg.augment else self.waves
        return list(zip(waves, self.targets, strict=True))

    def length(self, item: tuple[torch.Tensor, list[int]]) -> int:
        return self.inputs.length(item[0])

    def units(self, items: list[tuple[torch.Tensor, list[int]]]) -> int:
        return sum(len(t) for _, t in items)

    def loss(self, model: torch.nn.Module, items: list[tuple[torch.Tensor, list[int]]], device: torch.device
             ) -> torch.Tensor:
        x, mask = self.inputs.batch([w for w, _ in items], device)
        with autocast(self.cfg.dtype, device):
            scores = model(x, mask)
        log_probs = scores.float().log_softmax(-1).transpose(0, 1)  # (T, B, C), as ctc_loss wants
        targets = torch.tensor([i for _, t in items for i in t], device=device)
        return F.ctc_loss(log_probs, targets, mask.sum(1), torch.tensor([len(t) for _, t in items], device=device),
                          blank=0, reduction="sum", zero_infinity=True)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Character and word error rates of greedy transcripts; the CTC loss per target character."""
        with evaluating(model):
            device = next(model.parameters()).device
            order = sorted(range(len(self.val_waves)), key=lambda i: len(self.val_waves[i]))
            total = 0.0
            for start in range(0, len(order), 32):
                rows = order[start:start + 32]
                total += self.loss(model, [(self.val_waves[i], self.val_targets[i]) for i in rows], device).item()
            hypotheses = ctc.transcribe(model, self.val_waves, self.inputs, self.cfg.dtype)
        return {**error_rates(self.references, hypotheses), "val_loss": total / sum(map(len, self.val_targets))}
