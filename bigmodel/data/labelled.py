"""Examples for fine-tuning from CSV, TSV or JSONL files: (text, label) rows, or any named
columns (a source and its target, a query and its document)."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bigmodel.data.readers import decoded_lines
from bigmodel.errors import BigModelError


@dataclass
class Example:
    text: str
    label: str


def read_labelled(path: str | Path, text_column: str, label_column: str) -> list[Example]:
    """Every row with its text and label (as written); errors name the file, line and column."""
    return [Example(text, label) for text, label in read_columns(path, [text_column, label_column])]


def read_rows(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) of a JSONL, CSV or TSV file, by the json and csv modules' own record rules
    (a quoted CSV field may hold newlines; a JSON string may hold U+2028); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise BigModelError(f"{path}: no such file")
    lines = decoded_lines(path)
    rows = []
    if path.suffix.lower() == ".jsonl":
        for lineno, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    rows.append((lineno, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise BigModelError(f"{path}: line {lineno} is not valid JSON ({e.msg})") from None
    else:
        csv.field_size_limit(sys.maxsize)
        reader = csv.DictReader(lines, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        try:
            start = 2
            for row in reader:  # a record may span lines: it is named by the line it starts on
                rows.append((start, row))
                start = reader.line_num + 1
        except csv.Error as e:
            raise BigModelError(f"{path}: line {reader.line_num}: {e}") from None
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
