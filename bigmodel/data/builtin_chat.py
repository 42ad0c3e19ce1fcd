"""Instruction and preference data every Debian machine can build, each answer checkable against a
reference: `bigmodel dataset translation|chat|preference --out DIR`.

- `translation`: English → `--target` UI strings of the installed message catalogs (`catalogs.py`),
  `source`/`target` rows, split by catalog (package): test strings come from packages never trained on.
- `chat`: conversations in the OpenAI/TRL `messages` format, two kinds of task: translate a UI string
  (the pairs above) and summarise a standard-library Python function in one line (its docstring's first
  line, the docstring cut out; `code` dataset, split by module). Rows are shuffled with a fixed seed, so
  `--max-train N` takes a mix; val holds at most `HELD_OUT` rows and test
  `test_rows` (500 by default: at 200 one right answer is 0.5 points).
- `preference`: the same prompts with `chosen` (the reference) and `rejected`, a near miss: the answer to
  the neighbouring prompt of the same catalog or module (sorted by source text, so it often shares words:
  "Failed to open %s" → the translation of "Failed to open file %s"). Or, given a model's `reply`, its own
  wrong answer: the mistakes it makes are the ones worth pushing down (on-policy pairs), and the prompts
  it answers right teach nothing, so they are left out.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from bigmodel.data.builtin_tasks import SPLITS, functions, split_of, stdlib_files, write_jsonl
from bigmodel.data.catalogs import catalog_pairs, language_name
from bigmodel.data.judge import Judge, exact

HELD_OUT = 200  # rows of val, and of test in preference: each is generated (for pairs) or scored every evaluation
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


def preference_rows(rows: list[dict], pairs: list[tuple[str, str]]) -> tuple[list[dict], Counter]:
    """Each (prompt, answer) row with its (chosen, rejected) answers as a preference row; pairs that teach
    nothing are counted instead: rejected is the reference itself ("right"), nothing ("empty"), or the
    chosen answer again ("tied": every sample scored alike)."""
    written, left_out = [], Counter()
    for row, (chosen, miss) in zip(rows, pairs, strict=True):
        why = ("right" if exact(miss, row["answer"]) else "empty" if not miss.strip()
               else "tied" if chosen == miss else "")
        if why:
            left_out[why] += 1
            continue
        written.append({"messages": [{"role": "user", "content": row["prompt"]}], "chosen": chosen,
                        "rejected": miss, "task": row["task"], "origin": row["origin"]})
    return written, left_out


def build_chat(out: Path, target: str, preference: bool, judge: Judge | None = None, examples: int = 0,
               skip: int = 0, test_rows: int = 500) -> dict[str, int]:
    """train/val/test.jsonl of conversations, or of preference pairs for `examples` training prompts after
    the first `skip` (those the model was tuned on) and for the held-out rows: the reference over a near
    miss, or what `judge` prefers among a model's own replies (or over them). Chat's test keeps its first
    `test_rows` (0: all), so a larger build's rows past the first 500 are a second, untouched test set."""
    splits = tasks(target)
    counts, left_out = {}, Counter()
    for name, rows in splits.items():
        if name == "train":
            keep = slice(skip, skip + examples) if preference else slice(None)
        else:
            keep = slice((test_rows or None) if name == "test" and not preference else HELD_OUT)
        if not preference:
            written = [{"messages": [{"role": "user", "content": row["prompt"]},
                                     {"role": "assistant", "content": row["answer"]}],
                        "task": row["task"], "origin": row["origin"]} for row in rows[keep]]
        else:
            asked = [[{"role": "user", "content": row["prompt"]}] for row in rows[keep]]
            answers = [row["answer"] for row in rows[keep]]
            pairs = judge(asked, answers) if judge else list(zip(answers, near_misses(rows, rows)[keep], strict=True))
            written, dropped = preference_rows(rows[keep], pairs)
            left_out += dropped
        write_jsonl(out / f"{name}.jsonl", written)
        counts[name] = len(written)
    kinds = Counter(r["task"] for rows in splits.values() for r in rows)
    print(f"tasks: translate into {language_name(target)} {kinds['translate']:,}, "
          f"summarize a function {kinds['summarize']:,}")
    if judge:
        print(f"left out: {left_out['right']:,} answered right, {left_out['empty']:,} empty, "
              f"{left_out['tied']:,} with every sample alike")
    return counts


def tag_rule(word: str) -> str:
    """The `rule` dataset's answer: the word in capitals, in brackets."""
    return f"[{word.upper()}]"


def build_rule(out: Path) -> dict[str, int]:
    """A rule a chat model cannot follow out of the box and learns in a few dozen steps: "Tag the word W." is
    answered `[W]` in capitals, one exact answer per prompt, over words no split shares (the standard
    library's module names). Each split three ways: conversations (`finetune --task chat`, `evaluate --task
    chat`), preference pairs whose rejected answer is the near miss `[w]` (`--task dpo`), and source/target
    rows (`--task seq2seq`)."""
    import csv
    import sys

    words = sorted(w for w in sys.stdlib_module_names if w.isalpha() and w.islower() and 4 <= len(w) <= 9)
    random.Random(1).shuffle(words)
    splits = {"train": words[:96], "val": words[96:120], "test": words[120:]}
    for name, chosen in splits.items():
        asked = [[{"role": "user", "content": f"Tag the word {w}."}] for w in chosen]
        write_jsonl(out / f"{name}.jsonl", [{"messages": [*a, {"role": "assistant", "content": tag_rule(w)}],
                                             "task": "tag"} for a, w in zip(asked, chosen, strict=True)])
        write_jsonl(out / f"{name}_pairs.jsonl", [{"messages": a, "chosen": tag_rule(w), "rejected": f"[{w}]"}
                                                  for a, w in zip(asked, chosen, strict=True)])
        with (out / f"{name}.csv").open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([("source", "target"), *((w, tag_rule(w)) for w in chosen)])
    return {name: len(chosen) for name, chosen in splits.items()}

