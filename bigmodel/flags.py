"""Command-line flags from the config dataclasses: one flag per field, its help the comment beside the
field, unset flags left None so they never mask a YAML recipe's values (see `config.resolve`)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import re
import types
import typing
from dataclasses import fields
from typing import Any


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """The `# comment` after each field of `cls` and of the dataclasses it inherits from."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            for name, text in re.findall(r"^    (\w+): [^#\n]*#\s*(.+)$", inspect.getsource(klass), re.MULTILINE):
                comments[name] = text.strip()
    return comments


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp: Any) -> Any:
    """`int`, `float`, `str`, `bool`, `list[str]` or a `Literal[...]` from a field's type (`X | None` → X)."""
    if isinstance(tp, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def add_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per dataclass field; unset flags stay None so they never mask YAML values.

    `Literal[...]` fields offer their values as choices; list fields take several values, or the flag again."""
    group = parser.add_argument_group(cls.__name__)
    hints = typing.get_type_hints(cls)
    own = cls.__dict__.get("__annotations__", {})
    for f in sorted(fields(cls), key=lambda f: f.name not in own):  # the command's own fields first
        if f.name in skip:
            continue
        tp = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        comment = field_comments(cls).get(f.name)
        shown = "" if default in ("", None, []) else f"(default: {default})"
        help_text = " ".join(part for part in (comment, shown) if part) or None
        if tp is bool:
            group.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
        elif typing.get_origin(tp) is list:
            group.add_argument(_flag(f.name), dest=f.name, nargs="+", action="extend", default=None, help=help_text)
        elif typing.get_origin(tp) is typing.Literal:  # the config refuses other values, in one line
            choices = typing.get_args(tp)
            group.add_argument(_flag(f.name), dest=f.name, metavar="{" + ",".join(choices) + "}", default=None,
                               help=help_text)
        else:
            group.add_argument(_flag(f.name), dest=f.name, type=tp, default=None, help=help_text)
