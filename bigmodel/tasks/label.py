"""`classify` / `regress`: a pooled head over a sentence, an image or a clip."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix
from tokenizers import Tokenizer

from bigmodel.config import FinetuneConfig
from bigmodel.data.inputs import Inputs, inputs_for
from bigmodel.data.labelled import Example, label_ids, read_labelled
from bigmodel.data.media import media_examples
from bigmodel.device import autocast
from bigmodel.errors import BigModelError
from bigmodel.evaluate.classify import head_scores, plot_confusion
from bigmodel.infer.classify import predict_scores
from bigmodel.model.heads import HeadConfig, SequenceModel, pooling_for
from bigmodel.model.transformer import Transformer
from bigmodel.tasks.base import Task, backbone_of


def augment(text: str, rng: random.Random, p: float = 0.1) -> str:
    """Random word deletion and one random swap: cheap noise for small datasets."""
    words = [w for w in text.split() if rng.random() > p] or text.split()
    if len(words) > 1:
        i, j = rng.randrange(len(words)), rng.randrange(len(words))
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


class LabelTask(Task):
    """Classification (accuracy, macro-F1) or regression (MSE) from one pooled vector: of a text, or of
    an image or a clip (paths in the text column, or a folder of class sub-folders)."""

    private_ok = True
    GOALS = {"classify": ("accuracy", False), "regress": ("mse", True)}

    def __init__(self, cfg: FinetuneConfig, backbone: Transformer | None, tok: Tokenizer | None,
                 model: SequenceModel | None = None) -> None:
        """`backbone` gets a new head; or `model` already has one (a federated round's global model)."""
        config = (backbone or backbone_of(model)).config
        self.inputs = inputs_for(config, tok, cfg.max_length, cfg.hflip)
        self.train = read_examples(self.inputs, cfg.train, cfg)[:cfg.max_train or None]
        val = read_examples(self.inputs, cfg.val, cfg)
        if model is None:
            labels = label_ids(self.train, val) if cfg.task == "classify" else []
            head = HeadConfig(task=cfg.task, labels=labels, pooling=pooling_for(config))
            model = SequenceModel(backbone, head, cfg.head_dropout)
        super().__init__(cfg, model, tok)
        self.head = model.head_config
        self.examples = len(self.train)
        self.metric, self.minimize = self.GOALS[cfg.task]
        self.figures = ["mse"] if cfg.task == "regress" else ["accuracy", "macro_f1"]
        self.train_y, self.val_y = targets_of(self.train, self.head), targets_of(val, self.head)
        self.val_items = self.inputs.read([e.text for e in val])
        self.decoded = None if self.inputs.kind == "text" else self.inputs.read([e.text for e in self.train])

    def train_items(self, rng: random.Random) -> list[tuple[int, Any]]:
        if self.decoded is None:
            items = self.inputs.read([augment(e.text, rng) if self.cfg.augment else e.text for e in self.train])
        else:  # images and clips are decoded once; augmentation makes copies
            items = [self.inputs.augment(x, rng) for x in self.decoded] if self.cfg.augment else self.decoded
        return list(enumerate(items))

    def length(self, item: tuple[int, Any]) -> int:
        return self.inputs.length(item[1])

    def loss(self, model: torch.nn.Module, items: list[tuple[int, Any]], device: torch.device) -> torch.Tensor:
        x, mask = self.inputs.batch([x for _, x in items], device)
        with autocast(self.cfg.dtype, device):
            scores = model(x, mask).float()
        return task_loss(self.head, scores, self.train_y[[i for i, _ in items]].to(device), reduction="sum")

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        scores = predict_scores(model, self.val_items, self.inputs, self.head.n_outputs, self.cfg.dtype)
        self.val_predictions = scores.argmax(-1).tolist()
        loss = task_loss(self.head, scores, self.val_y).item()
        return {**head_scores(self.head, scores, self.val_y), "val_loss": loss}

    def plot_best(self, out: Path) -> None:
        """confusion.png of the best evaluation, for classifiers."""
        if self.head.task == "classify":
            matrix = confusion_matrix(self.val_y.tolist(), self.val_predictions, labels=range(len(self.head.labels)))
            plot_confusion(matrix.tolist(), self.head.labels, out / "confusion.png", f"{out.name}: best validation")


def read_examples(inputs: Inputs, path: str, cfg: FinetuneConfig) -> list[Example]:
    """(text, label) rows; for images and audio, (file path, label) from a folder or a table of paths."""
    if inputs.kind == "text":
        return read_labelled(path, cfg.text_column, cfg.label_column)
    return media_examples(path, inputs.suffixes, cfg.text_column, cfg.label_column)


def targets_of(examples: list[Example], head: HeadConfig) -> torch.Tensor:
    if head.task == "regress":
        try:
            return torch.tensor([float(e.label) for e in examples])
        except ValueError as e:
            raise BigModelError(f"--task regress needs numeric labels ({e})") from None
    index = {label: i for i, label in enumerate(head.labels)}
    unknown = sorted({e.label for e in examples} - set(index))
    if unknown:
        raise BigModelError(f"labels the model's head does not have: {', '.join(map(repr, unknown[:5]))} "
                            f"(it has {', '.join(map(repr, head.labels[:10]))})")
    return torch.tensor([index[e.label] for e in examples])


def task_loss(head: HeadConfig, scores: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
              ) -> torch.Tensor:
    if head.task == "regress":
        return F.mse_loss(scores.squeeze(-1), targets.float(), reduction=reduction)
    return F.cross_entropy(scores, targets, reduction=reduction)
