"""Datasets every machine can build, no download needed: `bigmodel dataset NAME --out DIR`.

- `code`: Python's standard library, each documented function → the first line of its
  docstring, the docstring cut out of the source. Split by module (a hash of its name), so
  test modules are never seen in training. Serves code summarization (source → summary) and
  code search (summary → source), and holds `corpus.txt` (the training modules' source) for
  the tokenizer and for pretraining.
- `qa`: extractive questions over the same modules' function lists: a context lists a few
  functions with their one-line descriptions; each function gets "What does NAME do?"
  (answer: its description) and "Which function DESCRIPTION?" (answer: its name).
- `pinyin`: Chinese clauses from ChnSentiCorp's reviews → their pinyin with tone numbers
  (labels from `pypinyin`, which resolves many readings by context), split by review. The
  characters are written with spaces between them, so a byte-level BPE tokenizer keeps each
  one a token of its own and source and target align one to one. Each
  row also holds `lookup`: every character read as it was most often in training, the
  baseline a context-free dictionary gives.

Images and speech (`digits`, `keywords`, `speech`) are built in `builtin_media.py`.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import re
import sys
import sysconfig
import textwrap
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from bigmodel.errors import BigModelError

SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}
MAX_SOURCE_CHARS = 2000
@dataclass
class Function:
    module: str
    name: str
    source: str  # the function without its docstring, dedented
    summary: str  # the docstring's first line
    name_words: str  # the name split into words: the obvious baseline summary


def split_of(key: str) -> str:
    """train, val or test, the same for `key` on every machine."""
    x = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32
    return "train" if x < SPLITS["train"] else "val" if x < SPLITS["train"] + SPLITS["val"] else "test"


def name_words(name: str) -> str:
    """`_get_configValue` → `get config value`."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name).replace("_", " ")
    return " ".join(spaced.lower().split())


def stdlib_files() -> Iterator[tuple[str, Path]]:
    """(module name, file) of the standard library's Python sources, tests and site-packages left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p in ("site-packages", "test", "tests", "idle_test") for p in parts):
            continue
        yield ".".join(parts)[:-3].removesuffix(".__init__"), path


def functions(module: str, path: Path) -> Iterator[Function]:
    """Each documented function of one file."""
    try:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    lines = text.splitlines()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        doc = ast.get_docstring(node)
        if not doc or not node.body or node.end_lineno is None:
            continue
        summary = doc.strip().splitlines()[0].strip()
        if not 3 <= len(summary.split()) <= 30:
            continue
        first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
        docstring = node.body[0]
        kept = lines[first - 1:docstring.lineno - 1] + lines[docstring.end_lineno:node.end_lineno]
        source = textwrap.dedent("\n".join(kept)).strip()
        if len(kept) < 2:  # a docstring and nothing else: nothing to summarise
            continue
        yield Function(module, node.name, source[:MAX_SOURCE_CHARS], summary, name_words(node.name))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_code(out: Path) -> dict[str, int]:
    """train/val/test.jsonl of functions (module, name, source, summary, name_words) and corpus.txt."""
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    seen: set[str] = set()
    corpus = []
    for module, path in stdlib_files():
        split = split_of(module.split(".")[0])  # a package and its submodules stay together
        if split == "train":
            corpus.append(path.read_text(encoding="utf-8", errors="replace"))
        for f in functions(module, path):
            if f.source not in seen:  # the same function copied into two modules counts once
                seen.add(f.source)
                splits[split].append(asdict(f))
    for name, rows in splits.items():
        write_jsonl(out / f"{name}.jsonl", rows)
    (out / "corpus.txt").write_text("\n\n".join(corpus), encoding="utf-8")
    return {name: len(rows) for name, rows in splits.items()}


def build_qa(out: Path, per_context: int = 5) -> dict[str, int]:
    """SQuAD-format train/val/test.json from the code dataset's functions (built on the way)."""
    code = out / "code"
    code.mkdir(parents=True, exist_ok=True)
    build_code(code)
    counts = {}
    for split in SPLITS:
        rows = [json.loads(line) for line in (code / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        by_module: dict[str, list[dict]] = {}
        for row in rows:
            by_module.setdefault(row["module"], []).append(row)
        paragraphs, n = [], 0
        for module, funcs in sorted(by_module.items()):
            unique = list({f["name"]: f for f in funcs}.values())  # a question must have one answer
            for start in range(0, len(unique), per_context):
                group = unique[start:start + per_context]
                context = "\n".join(f"{f['name']}: {f['summary']}" for f in group)
                qas = []
                summaries = [f["summary"] for f in group]
                for f in group:
                    line_start = context.index(f"{f['name']}: {f['summary']}")
                    description = f["summary"].rstrip(".")
                    qas.append({"id": f"{module}.{f['name']}.what", "question": f"What does {f['name']} do?",
                                "answers": [{"text": f["summary"], "answer_start": line_start + len(f["name"]) + 2}]})
                    if summaries.count(f["summary"]) > 1:  # two functions described alike: no single answer
                        continue
                    qas.append({"id": f"{module}.{f['name']}.which",
                                "question": f"Which function: {description[0].lower()}{description[1:]}?",
                                "answers": [{"text": f["name"], "answer_start": line_start}]})
                paragraphs.append({"context": context, "qas": qas})
                n += len(qas)
        (out / f"{split}.json").write_text(json.dumps({"version": "1.1", "data": [
            {"title": "Python standard library", "paragraphs": paragraphs}]}, ensure_ascii=False), encoding="utf-8")
        counts[split] = n
    return counts


HAN = re.compile(r"[\u4e00-\u9fff]{4,24}")


def build_pinyin(out: Path, source: Path) -> dict[str, int]:
    """Clauses of 4-24 Chinese characters → pinyin syllables with tone numbers, split by review."""
    try:
        from pypinyin import Style, lazy_pinyin
    except ImportError:
        raise BigModelError("the pinyin dataset needs pypinyin: pip install 'bigmodel[seq2seq]'") from None
    if not source.is_file():
        raise BigModelError(f"{source}: not found (ChnSentiCorp's all.csv, in ../shared/data/chnsenticorp)")
    csv.field_size_limit(sys.maxsize)
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    seen: set[str] = set()
    with source.open(encoding="utf-8-sig", newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            split = split_of(f"review {i}")
            for clause in HAN.findall(row.get("review") or ""):
                if clause not in seen:
                    seen.add(clause)
                    target = " ".join(lazy_pinyin(clause, style=Style.TONE3, neutral_tone_with_five=True))
                    splits[split].append({"source": " ".join(clause), "target": target})
    readings: dict[str, Counter] = {}
    for row in splits["train"]:
        for char, syllable in zip(row["source"].split(), row["target"].split(), strict=True):
            readings.setdefault(char, Counter())[syllable] += 1
    for name, rows in splits.items():
        for row in rows:
            row["lookup"] = " ".join(readings[c].most_common(1)[0][0] if c in readings else "?"
                                     for c in row["source"].split())
        write_jsonl(out / f"{name}.jsonl", rows)
    (out / "corpus.txt").write_text("\n".join(f"{r['source']}\t{r['target']}" for r in splits["train"]),
                                    encoding="utf-8")
    return {name: len(rows) for name, rows in splits.items()}
