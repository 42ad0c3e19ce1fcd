"""Examples for fine-tuning from CSV, TSV or JSONL files: (text, label) rows, or any named
columns (a source and its target, a query and its document)."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bigmodel.errors import BigModelError


@dataclass
class Example:
    text: str
    label: str


def read_labelled(path: str | Path, text_column: str, label_column: str) -> list[Example]:
    """Every row with its text and label (as written); errors name the file, line and column."""
    return [Example(text, label) for text, label in read_columns(path, [text_column, label_column])]


def read_rows(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) of a JSONL, CSV or TSV file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise BigModelError(f"{path}: no such file")
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise BigModelError(f"{path}: line {line} is not valid UTF-8") from None
    if path.suffix.lower() == ".jsonl":
        rows = []
        for lineno, line in enumerate(content.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((lineno, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise BigModelError(f"{path}: line {lineno} is not valid JSON ({e.msg})") from None
    else:
        csv.field_size_limit(sys.maxsize)
        reader = csv.DictReader(content.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        rows = [(lineno, row) for lineno, row in enumerate(reader, start=2)]
    if not rows:
        raise BigModelError(f"{path}: holds no examples")
    return rows


def read_columns(path: str | Path, columns: list[str]) -> list[tuple[str, ...]]:
    """The named columns of every row, stripped; errors name the file, line and column."""
    rows = read_rows(path)
    for lineno, row in rows:
        for column in columns:
            if not isinstance(row, dict) or row.get(column) is None:
                present = ", ".join(row) if isinstance(row, dict) else "none"
                raise BigModelError(f"{path}: line {lineno} has no column {column!r} (columns: {present})")
    return [tuple(str(row[column]).strip() for column in columns) for _, row in rows]


def label_indices(found: list[str], labels: list[str], source: str | Path) -> list[int]:
    """Each label's index among a model's `labels`; labels it was not trained on are named, with `source`."""
    unknown = sorted(set(found) - set(labels))
    if unknown:
        raise BigModelError(f"{source}: labels the model was not trained on: {', '.join(map(repr, unknown[:5]))}")
    return [labels.index(label) for label in found]


def label_ids(train: list[Example], val: list[Example]) -> list[str]:
    """The sorted label set of `train`; val labels must all be known, and there must be two."""
    labels = sorted({e.label for e in train})
    if len(labels) < 2:
        raise BigModelError(f"the training file has only one label ({labels[0]!r}); need at least two")
    unseen = sorted({e.label for e in val} - set(labels))
    if unseen:
        raise BigModelError(f"validation labels not in training: {', '.join(map(repr, unseen[:5]))}")
    return labels
