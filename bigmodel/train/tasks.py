"""What fine-tuning needs to know about each kind of task; the loop itself is in `finetune.py`.

A task reads its files, builds the module that trains (and that a checkpoint holds), encodes
each epoch's training examples, turns a batch of them into a summed loss, and evaluates on
the validation file. Every task shares the rest: optimizer, schedule, length-grouped
batches, accumulation, DDP, LoRA, checkpoints, exact resume.

- `classify` / `regress`: a pooled head over a sentence, an image or a clip (`LabelTask`).
- `seq2seq`: a target text from a source text, teacher-forced with label smoothing; an
  encoder-decoder, or a decoder-only model reading `source <|endoftext|> target`.
- `qa`: a start/end head over each token of a (question, context) pair (SQuAD JSON).
- `retrieval`: a query and its document pulled together, the batch's other documents pushed
  away (in-batch negatives over normalised mean-pooled embeddings).
- `ctc`: speech → characters, CTC over the encoder's frames (`CTCTask`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix
from tokenizers import Tokenizer

from bigmodel.config import FinetuneConfig
from bigmodel.data.collate import collate, encode, pad_id
from bigmodel.data.inputs import AudioInputs, Inputs, inputs_for
from bigmodel.data.labelled import Example, label_ids, read_columns, read_labelled
from bigmodel.data.media import media_examples
from bigmodel.data.squad import read_squad
from bigmodel.device import autocast
from bigmodel.errors import BigModelError
from bigmodel.evaluate.classify import classification_metrics, plot_confusion
from bigmodel.evaluate.qa import squad_scores
from bigmodel.evaluate.retrieval import recall_at
from bigmodel.infer import ctc, qa
from bigmodel.infer.classify import predict_scores
from bigmodel.model.heads import HeadConfig, SequenceModel, mean_pool, pooling_for
from bigmodel.model.transformer import Transformer

RETRIEVAL_TEMPERATURE = 0.05  # the scale of in-batch contrastive logits, as sentence-transformers uses


def augment(text: str, rng: random.Random, p: float = 0.1) -> str:
    """Random word deletion and one random swap: cheap noise for small datasets."""
    words = [w for w in text.split() if rng.random() > p] or text.split()
    if len(words) > 1:
        i, j = rng.randrange(len(words)), rng.randrange(len(words))
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


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


GOALS = {  # per task: the figure that picks the best checkpoint (and a sweep's default), and whether lower is better
    "classify": ("accuracy", False), "regress": ("mse", True), "seq2seq": ("val_loss", True),
    "qa": ("f1", False), "retrieval": ("recall_at_1", False), "ctc": ("cer", True),
}
LOWER_IS_BETTER = {"val_loss", "train_loss", "wer", *(m for m, lower in GOALS.values() if lower)}


class Task:
    """The interface `FineTuner` drives; see the module docstring."""

    metric = "val_loss"  # the figure that decides the best checkpoint
    minimize = True
    figures: list[str] = []  # metrics.csv columns besides the losses
    private_ok = False  # DP-SGD supported

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


class LabelTask(Task):
    """Classification (accuracy, macro-F1) or regression (MSE) from one pooled vector: of a text, or of
    an image or a clip (paths in the text column, or a folder of class sub-folders)."""

    private_ok = True

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
        self.metric, self.minimize = GOALS[cfg.task]
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
        return {**score(self.head, scores, self.val_y), "val_loss": task_loss(self.head, scores, self.val_y).item()}

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


def score(head: HeadConfig, scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 for classification, MSE for regression."""
    if head.task == "regress":
        return {"mse": F.mse_loss(scores.squeeze(-1), targets.float()).item()}
    figures = classification_metrics(targets.tolist(), scores.argmax(-1).tolist(), head.labels)
    return {"accuracy": figures["accuracy"], "macro_f1": figures["macro_f1"]}


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
        with evaluating(model):
            device = next(model.parameters()).device
            total, correct, counted = 0.0, 0, 0
            order = sorted(self.val_items, key=self.length)
            for start in range(0, len(order), 64):
                batch = self._batch(order[start:start + 64], device)
                with autocast(self.cfg.dtype, device):
                    logits, loss = model(**batch)
                n = int((batch["targets"] != -1).sum())
                hits = (logits.argmax(-1) == batch["targets"]) & (batch["targets"] != -1)
                total, correct, counted = total + loss.item() * n, correct + int(hits.sum()), counted + n
            return {"val_loss": total / counted, "token_accuracy": correct / counted}


class QATask(Task):
    """Start and end token of the answer, each a softmax over the context's tokens."""

    metric, minimize = GOALS["qa"]
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


class RetrievalTask(Task):
    """Contrastive: each query's own document against the batch's other documents."""

    metric, minimize = GOALS["retrieval"]
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


class CTCTask(Task):
    """Speech recognition: per-frame character scores, CTC loss (output 0 is the blank), greedy decoding.

    The alphabet is the training transcripts' characters (lower-cased, spaces collapsed); the
    head's labels record it, so a checkpoint needs no tokenizer."""

    metric, minimize = GOALS["ctc"]
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
        from bigmodel.evaluate.seq2seq import error_rates

        with evaluating(model):
            device = next(model.parameters()).device
            order = sorted(range(len(self.val_waves)), key=lambda i: len(self.val_waves[i]))
            total = 0.0
            for start in range(0, len(order), 32):
                rows = order[start:start + 32]
                total += self.loss(model, [(self.val_waves[i], self.val_targets[i]) for i in rows], device).item()
            hypotheses = ctc.transcribe(model, self.val_waves, self.inputs, self.cfg.dtype)
        return {**error_rates(self.references, hypotheses), "val_loss": total / sum(map(len, self.val_targets))}


def make_task(cfg: FinetuneConfig, backbone: Transformer, tok: Tokenizer | None) -> Task:
    kinds = {"seq2seq": Seq2SeqTask, "qa": QATask, "retrieval": RetrievalTask, "ctc": CTCTask}
    if cfg.task in kinds:
        if cfg.task != "seq2seq" and backbone.config.encoder_layers:
            raise BigModelError(f"--task {cfg.task} needs an encoder or a decoder, not an encoder-decoder")
        return kinds[cfg.task](cfg, backbone, tok)
    return LabelTask(cfg, backbone, tok)
