"""Extractive QA scores as SQuAD v1.1's evaluation script defines them: answers are
normalised (lower case, no punctuation, no articles, single spaces), then exact match and
token-overlap F1 against the best of the accepted answers, averaged over questions."""

from __future__ import annotations

import collections
import re
import string

PUNCTUATION = set(string.punctuation)


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def f1(prediction: str, truth: str) -> float:
    predicted, true = normalize(prediction).split(), normalize(truth).split()
    common = sum((collections.Counter(predicted) & collections.Counter(true)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(true)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], answers: list[list[str]]) -> dict[str, float]:
    """Exact match and F1 in percent, each question scored against its best answer."""
    em = [max(float(normalize(p) == normalize(a)) for a in gold) for p, gold in zip(predictions, answers, strict=True)]
    f = [max(f1(p, a) for a in gold) for p, gold in zip(predictions, answers, strict=True)]
    return {"exact_match": 100 * sum(em) / len(em), "f1": 100 * sum(f) / len(f)}
