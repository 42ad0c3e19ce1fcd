"""Extractive question answering: the answer is the context span whose first token scores
highest as a start and whose last token scores highest as an end.

The question and its context are encoded as a pair (the tokenizer's own template: BERT's
`[CLS] question [SEP] context [SEP]`, or plain concatenation); only context tokens may start
or end an answer, and offsets map the chosen tokens back to characters of the context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from bigmodel.data.squad import Question
from bigmodel.data.tokenizer import plain_tokenizer

MAX_ANSWER_TOKENS = 30


@dataclass
class Feature:
    ids: list[int]
    context: list[bool]  # True for the context's tokens: the only ones an answer may use
    offsets: list[tuple[int, int]]  # character span of each token in its own text
    start: int = -1  # the first answer's first and last token; -1 when it is cut off (or unknown)
    end: int = -1


def features(tok: Tokenizer, questions: list[Question], max_length: int) -> list[Feature]:
    """One encoded (question, context) pair per question, the context cut to fit `max_length`."""
    cutter = plain_tokenizer(tok)
    cutter.enable_truncation(max_length=max_length, strategy="only_second")
    out = []
    for q, enc in zip(questions, cutter.encode_batch([(q.question, q.context) for q in questions]), strict=True):
        context = [s == 1 for s in enc.sequence_ids]
        f = Feature(enc.ids, context, enc.offsets)
        if q.starts:
            first, last = q.starts[0], q.starts[0] + len(q.answers[0])
            starts = [i for i, (a, b) in enumerate(enc.offsets) if context[i] and a <= first < b]
            ends = [i for i, (a, b) in enumerate(enc.offsets) if context[i] and a < last <= b]
            if starts and ends and starts[0] <= ends[-1]:
                f.start, f.end = starts[0], ends[-1]
        out.append(f)
    return out


def context_mask(batch: list[Feature], width: int, device: torch.device | str) -> torch.Tensor:
    """(B, width): True where an answer may start or end."""
    mask = torch.zeros(len(batch), width, dtype=torch.bool)
    for row, f in enumerate(batch):
        mask[row, :len(f.context)] = torch.tensor(f.context)
    return mask.to(device)


def best_span(logits: torch.Tensor, feature: Feature) -> tuple[int, int, float]:
    """The (start, end) tokens maximising start + end score, end not before start, at most
    `MAX_ANSWER_TOKENS` long, both in the context; and that score."""
    n = len(feature.ids)
    allowed = torch.tensor(feature.context)
    start = logits[:n, 0].float().masked_fill(~allowed, float("-inf"))
    end = logits[:n, 1].float().masked_fill(~allowed, float("-inf"))
    pairs = start[:, None] + end[None, :]
    band = torch.ones(n, n, dtype=torch.bool).triu().tril(MAX_ANSWER_TOKENS - 1)
    pairs = pairs.masked_fill(~band, float("-inf"))
    flat = int(pairs.argmax())
    return flat // n, flat % n, float(pairs.view(-1)[flat])


def answer_text(question: Question, feature: Feature, start: int, end: int) -> tuple[str, int, int]:
    """The answer's text and its character span in the context."""
    first, last = feature.offsets[start][0], feature.offsets[end][1]
    text = question.context[first:last]
    stripped = text.lstrip()
    first += len(text) - len(stripped)
    return stripped.rstrip(), first, first + len(stripped.rstrip())


@torch.no_grad()
def answer_questions(model: torch.nn.Module, tok: Tokenizer, questions: list[Question], max_length: int,
                     batch_size: int = 32) -> list[tuple[str, int, int, float]]:
    """(answer text, start and end character in the context, score) per question, in order."""
    from bigmodel.data.collate import collate, pad_id

    device = next(model.parameters()).device
    found = []
    for start in range(0, len(questions), batch_size):
        batch = features(tok, questions[start:start + batch_size], max_length)
        x, mask = collate([f.ids for f in batch], pad_id(tok), device)
        logits = model(x, mask).float().cpu()
        for row, (q, f) in enumerate(zip(questions[start:start + batch_size], batch, strict=True)):
            i, j, score = best_span(logits[row], f)
            found.append((*answer_text(q, f, i, j), score))
    return found
