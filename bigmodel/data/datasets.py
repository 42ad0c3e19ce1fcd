"""The datasets `bigmodel dataset NAME` builds, by name: code, QA, pinyin and the chat family from what
this machine holds (Python's standard library, Debian's catalogs), and synthesized images and speech."""

from __future__ import annotations

from pathlib import Path

from bigmodel.data import builtin_chat, builtin_media, builtin_tasks
from bigmodel.data.judge import Judge
from bigmodel.errors import BigModelError

DEFAULT_EXAMPLES = {"keywords": 4000, "speech": 5000, "preference": 800}  # clips synthesized; prompts answered


def needed(source: str, name: str, what: str) -> Path:
    """The file a dataset is built from: given with --source, since an installed package knows no data folder."""
    if not source:
        raise BigModelError(f"dataset {name} is built from {what}: give it with --source FILE")
    return Path(source)


def build(name: str, out: str | Path, source: str = "", examples: int = 0, target: str = "zh_CN",
          judge: Judge | None = None, skip: int = 0, test_rows: int = 500) -> dict[str, int]:
    """Build dataset `name` into `out`; how many examples each split holds. `judge`: preference pairs from
    a model's own replies (see `builtin_chat`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    examples = examples or DEFAULT_EXAMPLES.get(name, 0)
    if name == "digits":
        return builtin_media.build_digits(out)
    if name == "keywords":
        return builtin_media.build_keywords(out, examples)
    if name == "speech":
        return builtin_media.build_speech(out, examples, needed(source, name, "SST-2's train.tsv"))
    if name == "translation":
        return builtin_chat.build_translation(out, source or "en", target)
    if name == "rule":
        return builtin_chat.build_rule(out)
    if name in ("chat", "preference"):
        return builtin_chat.build_chat(out, target, name == "preference", judge, examples, skip, test_rows)
    if name == "code":
        return builtin_tasks.build_code(out)
    if name == "qa":
        return builtin_tasks.build_qa(out)
    if name == "pinyin":
        return builtin_tasks.build_pinyin(out, needed(source, name, "ChnSentiCorp's all.csv"))
    raise BigModelError(f"unknown dataset {name!r}; choose code, qa, pinyin, translation, chat, rule, "
                        "preference, digits, keywords or speech")
