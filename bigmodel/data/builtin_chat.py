"""Instruction and preference data every Debian machine can build, each answer checkable against a
reference: `bigmodel dataset translation|chat|preference --out DIR`.

- `translation`: English → `--target` UI strings of the installed message catalogs (`catalogs.py`),
  `source`/`target` rows, split by catalog (package): test strings come from packages never trained on.
- `chat`: conversations in the OpenAI/TRL `messages` format, two kinds of task: translate a UI string
  (the pairs above) and summarise a standard-library Python function in one line (its docstring's first
  line, the docstring cut out; `code` dataset, split by module). Rows are shuffled with a fixed seed, so
  `--max-train N` takes a mix; val and test hold at most `HELD_OUT` rows each.
- `preference`: the same prompts with `chosen` (the reference) and `rejected`, a near miss: the answer to
  the neighbouring prompt of the same catalog or module (sorted by source text, so it often shares words:
  "Failed to open %s" → the translation of "Failed to open file %s").
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from bigmodel.data.builtin_tasks import SPLITS, functions, split_of, stdlib_files, write_jsonl
from bigmodel.data.catalogs import catalog_pairs, language_name

HELD_OUT = 200  # rows of val and of test in chat/preference: each is scored by generating
MAX_FUNCTION_CHARS = 600  # a summarised function's source, so a prompt stays a few hundred tokens
SEED = 1337


def build_translation(out: Path, source: str, target: str) -> dict[str, int]:
    """train/val/test.jsonl of (catalog, source, target) rows, shuffled with a fixed seed (so the first N of
    test are a mix of its packages), and corpus.txt, every training string of both languages, for
    `bigmodel prepare` to train one tokenizer on."""
    pairs, dropped = catalog_pairs(target, source)
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for pair in pairs:
        splits[split_of(pair.catalog)].append(asdict(pair))
    rng = random.Random(SEED)
    for name, rows in splits.items():
        rng.shuffle(rows)
        write_jsonl(out / f"{name}.jsonl", rows)
    (out / "corpus.txt").write_text("".join(f"{r['source']}\n{r['target']}\n" for r in splits["train"]),
                                    encoding="utf-8")
    catalogs = {name: len({r["catalog"] for r in rows}) for name, rows in splits.items()}
    print(f"{len(pairs):,} pairs from {sum(catalogs.values())} catalogs "
          f"(train {catalogs['train']}, val {catalogs['val']}, test {catalogs['test']}); dropped: "
          + ", ".join(f"{reason} {n:,}" for reason, n in dropped.most_common()))
    return {name: len(rows) for name, rows in splits.items()}


def tasks(target: str) -> dict[str, list[dict]]:
    """Per split, every instruction with its reference answer: (prompt, answer, task, origin) rows, shuffled."""
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    language = language_name(target)
    for pair in catalog_pairs(target)[0]:
        splits[split_of(pair.catalog)].append({"prompt": f"Translate into {language}: {pair.source}",
                                               "answer": pair.target, "task": "translate", "origin": pair.catalog})
    seen = set()
    for module, path in stdlib_files():
        for f in functions(module, path):
            if len(f.source) <= MAX_FUNCTION_CHARS and f.source not in seen:
                seen.add(f.source)
                splits[split_of(module.split(".")[0])].append({
                    "prompt": f"Summarize this Python function in one line.\n\n{f.source}", "answer": f.summary,
                    "task": "summarize", "origin": module})
    rng = random.Random(SEED)
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def near_misses(rows: list[dict], pool: list[dict]) -> list[str]:
    """For each row, the answer of its neighbour in `pool` (same origin, sorted by prompt) that differs."""
    by_origin: dict[str, list[dict]] = {}
    for row in sorted(pool, key=lambda r: r["prompt"]):
        by_origin.setdefault(row["origin"], []).append(row)
    place = {id(row): i for group in by_origin.values() for i, row in enumerate(group)}
    misses = []
    for row in rows:
        group, i = by_origin[row["origin"]], place[id(row)]
        neighbours = [group[j]["answer"] for j in (i + 1, i - 1, i + 2, i - 2) if 0 <= j < len(group)]
        misses.append(next((a for a in neighbours if a != row["answer"]), ""))
    return misses


def build_chat(out: Path, target: str, preference: bool) -> dict[str, int]:
    splits = tasks(target)
    counts = {}
    for name, rows in splits.items():
        written = []
        misses = near_misses(rows, rows) if preference else [""] * len(rows)
        keep = len(rows) if name == "train" else HELD_OUT
        for row, miss in zip(rows[:keep], misses[:keep], strict=True):
            user = [{"role": "user", "content": row["prompt"]}]
            meta = {"task": row["task"], "origin": row["origin"]}
            if not preference:
                written.append({"messages": [*user, {"role": "assistant", "content": row["answer"]}], **meta})
            elif miss:
                written.append({"messages": user, "chosen": row["answer"], "rejected": miss, **meta})
        write_jsonl(out / f"{name}.jsonl", written)
        counts[name] = len(written)
    kinds = Counter(r["task"] for rows in splits.values() for r in rows)
    print(f"tasks: translate into {language_name(target)} {kinds['translate']:,}, "
          f"summarize a function {kinds['summarize']:,}")
    return counts
