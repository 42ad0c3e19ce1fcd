"""Stream documents out of .txt, .jsonl and .csv/.tsv files (or folders of them), and the lines of a
command's `--input`.

Nothing is read whole: files are decoded line by line (split at "\n" alone, so a JSON string holding
U+2028 or a form feed stays one record, and a quoted CSV field keeps its newlines), so a corpus larger
than memory works. Each file's sha256 is computed on the way through, for `meta.json`. The same
decoding serves corpora (`CorpusReader`), labelled records (`labelled.py`) and command inputs
(`input_lines`), which may also be standard input or a pipe.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from bigmodel.errors import BigModelError

PARAGRAPH_SUFFIXES = (".txt", ".md", ".rst")  # prose: one document per blank-line paragraph
WHOLE_FILE_SUFFIXES = (".py",)  # code: one document per file, so dedup never cuts a function
SUFFIXES = (*PARAGRAPH_SUFFIXES, *WHOLE_FILE_SUFFIXES, ".jsonl", ".csv", ".tsv")


@dataclass
class Document:
    """One unit of text. `ends_source` is False for a paragraph followed by more of the same file."""

    text: str
    source: str
    ends_source: bool = True


@dataclass
class SourceInfo:
    path: str
    bytes: int = 0
    sha256: str = ""
    documents: int = 0


@dataclass
class CorpusReader:
    """Iterate `Document`s over every input path; `sources` fills in as files are finished."""

    paths: list[str]
    text_field: str = "text"
    text_column: str = "text"
    sources: list[SourceInfo] = field(default_factory=list)

    def files(self) -> list[Path]:
        found: list[Path] = []
        for raw in self.paths:
            p = Path(raw)
            if p.is_dir():
                inside = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
                if not inside:
                    raise BigModelError(f"{raw}: folder holds no {'/'.join(SUFFIXES)} files")
                found.extend(inside)
            elif p.is_file():
                if p.suffix.lower() not in SUFFIXES:
                    raise BigModelError(f"{raw}: unsupported file type; use {', '.join(SUFFIXES)}")
                found.append(p)
            else:
                raise BigModelError(f"{raw}: no such file or folder")
        if not found:
            raise BigModelError("no input files given")
        return found

    def __iter__(self) -> Iterator[Document]:
        self.sources = []
        for path in self.files():
            info = SourceInfo(str(path))
            self.sources.append(info)
            suffix = path.suffix.lower()
            lines = decoded_lines(path, info)
            if suffix in PARAGRAPH_SUFFIXES:
                docs = _paragraphs(lines, str(path))
            elif suffix in WHOLE_FILE_SUFFIXES:
                docs = iter([Document("".join(lines), str(path))])
            elif suffix == ".jsonl":
                docs = _jsonl(lines, str(path), self.text_field)
            else:
                docs = _table(lines, str(path), self.text_column, "\t" if suffix == ".tsv" else ",")
            for doc in docs:
                info.documents += 1
                yield doc


def decoded_lines(path: Path, info: SourceInfo | None = None, stream: BinaryIO | None = None) -> Iterator[str]:
    """UTF-8 lines (ends kept) of `path`, or of `stream` (named `path` in errors), split at "\n" only;
    hashes the raw bytes into `info`; a bad byte names the file and line."""
    info = info or SourceInfo(str(path))
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") if stream is None else contextlib.nullcontext(stream) as fh:
        for lineno, raw in enumerate(fh, start=1):
            digest.update(raw)
            info.bytes += len(raw)
            try:
                text = decoder.decode(raw)
            except UnicodeDecodeError as e:
                raise BigModelError(
                    f"{path}: line {lineno} is not valid UTF-8 (byte 0x{raw[e.start]:02x}); "
                    "convert the file to UTF-8 first"
                ) from None
            if lineno == 1:
                text = text.removeprefix("\ufeff")
            yield text
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise BigModelError(f"{path}: ends inside a UTF-8 sequence; the file is truncated") from None
    info.sha256 = digest.hexdigest()


def _paragraphs(lines: Iterator[str], source: str) -> Iterator[Document]:
    """Blank-line-separated paragraphs, so exact duplicates can be found at a useful grain."""
    buf: list[str] = []
    pending: str | None = None
    for line in lines:
        if line.strip():
            buf.append(line)
        elif buf:
            if pending is not None:
                yield Document(pending, source, ends_source=False)
            pending, buf = "".join(buf).rstrip("\n"), []
    if buf:
        if pending is not None:
            yield Document(pending, source, ends_source=False)
        pending = "".join(buf).rstrip("\n")
    if pending is not None:
        yield Document(pending, source)


def _jsonl(lines: Iterator[str], source: str, key: str) -> Iterator[Document]:
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise BigModelError(f"{source}: line {lineno} is not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or key not in record:
            raise BigModelError(f"{source}: line {lineno} has no {key!r} field (set --text-field)")
        value = record[key]
        if not isinstance(value, str):
            raise BigModelError(f"{source}: line {lineno}: field {key!r} is not a string")
        yield Document(value, source)


def _table(lines: Iterator[str], source: str, column: str, delimiter: str) -> Iterator[Document]:
    csv.field_size_limit(sys.maxsize)
    reader = csv.DictReader(lines, delimiter=delimiter)
    if reader.fieldnames is None:
        return
    if column not in reader.fieldnames:
        raise BigModelError(
            f"{source}: no column {column!r} (columns: {', '.join(reader.fieldnames)}); set --text-column"
        )
    for row in reader:
        value = row.get(column)
        if value is not None:
            yield Document(value, source)


def input_lines(name: str, what: str = "input") -> Iterator[str]:
    """Each line of a UTF-8 file, a pipe (`--input <(cmd)`) or standard input (`-`), without its end,
    blank lines included, as it is read: output row i answers line i, and can be written before the
    last line arrives."""
    if name == "-":
        return (_unended(line) for line in decoded_lines(Path("<stdin>"), stream=sys.stdin.buffer))
    path = Path(name)
    if not path.exists() or path.is_dir():  # a FIFO exists but is no regular file
        raise BigModelError(f"{path}: no such {what} file")
    return (_unended(line) for line in decoded_lines(path))


def _unended(line: str) -> str:
    return line[:-1].removesuffix("\r") if line.endswith("\n") else line


def read_lines(name: str, what: str = "input") -> list[str]:
    """The non-blank lines of a UTF-8 file, pipe or standard input (`-`): lists of prompts, queries or
    lexicon words, where a blank line stands for nothing. Inputs answered row by row use `input_lines`."""
    return [line for line in input_lines(name, what) if line.strip()]
