"""Question-answering examples in SQuAD v1.1's JSON layout: data → paragraphs → context, qas."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bigmodel.errors import BigModelError


@dataclass
class Question:
    id: str
    question: str
    context: str
    answers: list[str] = field(default_factory=list)  # every accepted answer text
    starts: list[int] = field(default_factory=list)  # each answer's first character in `context`


def read_squad(path: str | Path, need_answers: bool) -> list[Question]:
    """Every question with its context; `need_answers` (training) refuses a question without one,
    and every answer must be found where its `answer_start` says."""
    path = Path(path)
    if not path.is_file():
        raise BigModelError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise BigModelError(f"{path}: not SQuAD-format JSON (need {{\"data\": [...]}}; {e})") from None
    questions = []
    for a, article in enumerate(data):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = paragraph.get("context")
            if not isinstance(context, str):
                raise BigModelError(f"{where} has no context")
            for qa in paragraph.get("qas", []):
                answers = qa.get("answers") or []
                if need_answers and not answers:
                    raise BigModelError(f"{where}: question {qa.get('id')!r} has no answers (training needs them)")
                q = Question(str(qa.get("id")), str(qa.get("question", "")), context)
                for answer in answers:
                    text, start = answer.get("text", ""), int(answer.get("answer_start", -1))
                    if context[start:start + len(text)] != text:
                        raise BigModelError(f"{where}: question {q.id!r}: answer {text!r} is not at "
                                            f"character {start} of the context")
                    q.answers.append(text)
                    q.starts.append(start)
                questions.append(q)
    if not questions:
        raise BigModelError(f"{path}: holds no questions")
    return questions
