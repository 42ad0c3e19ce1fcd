"""What fine-tuning, evaluation, the federated server and the sweep know about a task: the interface
every task module implements, and the context it evaluates in.

A task reads its files, builds the module that trains (and that a checkpoint holds), encodes each
epoch's training examples, turns a batch of them into a summed loss, and evaluates on the validation
file with a metrics function from `bigmodel.evaluate`. Every task shares the rest (`train/finetune.py`):
optimizer, schedule, length-grouped batches, accumulation, DDP, LoRA, checkpoints, exact resume.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from bigmodel.config import FinetuneConfig
from bigmodel.data.collate import pad_id
from bigmodel.data.labelled import read_columns
from bigmodel.device import autocast
from bigmodel.model.heads import SequenceModel
from bigmodel.model.transformer import Transformer


def backbone_of(model: torch.nn.Module) -> Transformer:
    return model.backbone if isinstance(model, SequenceModel) else model


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode without gradients, then back to the mode the model was in."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(training)


def teacher_forced_figures(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], dtype: str
                           ) -> dict[str, float]:
    """Loss and next-token accuracy over the predicted tokens (targets other than -1) of `batches`, each
    the model's keyword arguments: what seq2seq and chat report after every evaluation."""
    with evaluating(model):
        device = next(model.parameters()).device
        total, correct, counted = 0.0, 0, 0
        for batch in batches:
            with autocast(dtype, device):
                logits, loss = model(**batch)
            targets = batch["targets"]
            n = int((targets != -1).sum())
            correct += int(((logits.argmax(-1) == targets) & (targets != -1)).sum())
            total, counted = total + loss.item() * n, counted + n
        return {"val_loss": total / max(counted, 1), "token_accuracy": correct / max(counted, 1)}


class Task:
    """The interface `FineTuner` drives; see the module docstring."""

    metric = "val_loss"  # the figure that decides the best checkpoint (and a sweep's default) ...
    minimize = True  # ... and whether lower is better
    figures: list[str] = []  # metrics.csv columns besides the losses
    private_ok = False  # DP-SGD supported
    tokenizer_config: dict | None = None  # what checkpoints carry as tokenizer_config.json, when the task chose it

    def __init__(self, cfg: FinetuneConfig, model: torch.nn.Module, tok: Tokenizer | None) -> None:
        self.cfg, self.model, self.tok = cfg, model, tok
        self.pad = pad_id(tok) if tok else 0
        self.max_length = min(cfg.max_length, backbone_of(model).config.block_size)
        self.examples = 0  # training examples

    def read_pairs(self, path: str) -> list[tuple[str, ...]]:
        """(source, target) rows: seq2seq's input and output, retrieval's query and document."""
        return read_columns(path, [self.cfg.source_column, self.cfg.target_column])

    def train_items(self, rng: random.Random) -> list[Any]:
        """This epoch's encoded training examples (`rng` for augmentation)."""
        raise NotImplementedError

    def length(self, item: Any) -> int:
        """Tokens an item occupies: batches group similar lengths."""
        return len(item)

    def units(self, items: list[Any]) -> int:
        """What the loss is averaged over: examples, or target tokens."""
        return len(items)

    def loss(self, model: torch.nn.Module, items: list[Any], device: torch.device) -> torch.Tensor:
        """The loss summed over the items' units."""
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        raise NotImplementedError

    def plot_best(self, out: Path) -> None:
        """Figures worth a picture, from the evaluation that just became the best (none by default)."""
