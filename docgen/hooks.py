"""MkDocs hooks: the reference pages are filled from the code at build time, so they cannot drift, and
every `bigmodel VERB --flag` written on any page is checked against the CLI's own parser.

A page asks for a generated part with a marker on a line of its own (`<!-- reference: verbs -->`);
`mkdocs build --strict` fails on a flag no verb has, since the hook logs it as a warning.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

from bigmodel.cli import VERBS, build_parser
from bigmodel.config import tuning_table
from bigmodel.flags import field_comments

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
log = logging.getLogger("mkdocs.hooks.bigmodel")


def verb_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(subparsers.choices)


def cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def verbs_reference() -> str:
    """Each verb: what it does, the recipe section it reads, and every flag with its help and default."""
    out = []
    for name, parser in verb_parsers().items():
        verb = VERBS[name]
        out += [f"## {name}", "", verb.help[0].upper() + verb.help[1:] + ".", ""]
        sections = verb.section if verb.layered else f"`{verb.section or name}:`"
        out += [f"Recipe sections: {sections} (`--config FILE`; flags win).", ""]
        out += ["| flag | values | what it sets |", "| --- | --- | --- |"]
        for action in parser._actions:
            if not action.option_strings or action.dest in ("help", "config"):
                continue
            flags = " / ".join(f"`{flag}`" for flag in action.option_strings)
            values = action.metavar or (action.type.__name__ if isinstance(action.type, type) else "")
            if action.nargs == "+":
                values = f"{values or 'str'} ..."
            out.append(f"| {flags} | {cell(values)} | {cell(action.help or '')} |")
        if verb.epilog:
            out += ["", "```text", verb.epilog, "```"]
        out.append("")
    return "\n".join(out)


def type_name(tp: object) -> str:
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    return text or str(tp).replace("typing.", "")


def config_reference() -> str:
    """Every recipe key: each verb's config dataclass, its fields' types, defaults and comments."""
    out, seen = [], set()
    for name, verb in VERBS.items():
        for cls in verb.configs:
            if cls in seen:
                continue
            seen.add(cls)
            hints, comments = typing.get_type_hints(cls), field_comments(cls)
            doc = (cls.__doc__ or "").strip().splitlines()[0]
            out += [f"## `{cls.__name__}`", "", f"{doc} Read by `bigmodel {name}`.", ""]
            out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
            for f in dataclasses.fields(cls):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                out.append(f"| `{f.name}` | `{cell(type_name(hints[f.name]))}` | `{cell(repr(default))}` "
                           f"| {cell(comments.get(f.name, ''))} |")
            out.append("")
    return "\n".join(out)


def schema_type(prop: dict) -> str:
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[1]
    if "anyOf" in prop:
        return " or ".join(schema_type(p) for p in prop["anyOf"] if p.get("type") != "null")
    if prop.get("type") == "array":
        return f"array of {schema_type(prop.get('items', {}))}"
    if "enum" in prop:
        return " / ".join(json.dumps(v) for v in prop["enum"])
    return prop.get("type", "any")


def limits(prop: dict) -> str:
    found = {k: v for p in (prop, *prop.get("anyOf", ())) for k, v in p.items()
             if k in ("minimum", "maximum", "exclusiveMinimum", "minLength", "maxLength", "maxItems")}
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in found.items())


def http_reference() -> str:
    """Every route of `bigmodel serve` and every request body, from the server's own OpenAPI schema."""
    from bigmodel.serve.app import routes_app  # the serve extra: only this page needs it

    schema = routes_app().openapi()
    out = []
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            out += [f"### `{method.upper()} {path}`", ""]
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if "$ref" in body:
                out += [f"Body: [{schema_type(body)}](#{schema_type(body).lower()})", ""]
            out += [f"- **{code}**: {cell(answer['description'])}" for code, answer in op["responses"].items()]
            out.append("")
    out += ["## Request and answer bodies", ""]
    for name, body in schema["components"]["schemas"].items():
        out += [f"### {name}", "", "| field | type | default | limits |", "| --- | --- | --- | --- |"]
        for field, prop in body.get("properties", {}).items():
            required = " (required)" if field in body.get("required", ()) else ""
            default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
            out.append(f"| `{field}`{required} | {cell(schema_type(prop))} | {cell(default)} | {cell(limits(prop))} |")
        out.append("")
    return "\n".join(out)


def flattened(figures: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(path, value) of every number and short string in a result file, nested keys joined by ` / `."""
    if isinstance(figures, dict):
        for key, value in figures.items():
            yield from flattened(value, f"{prefix} / {key}" if prefix else str(key))
    elif isinstance(figures, list) and len(figures) <= 8:
        for i, value in enumerate(figures):
            yield from flattened(value, f"{prefix} [{i}]")
    elif isinstance(figures, (int, float)) or (isinstance(figures, str) and len(figures) <= 80):
        yield prefix, figures


def benchmark(name: str, heading: str = "") -> str:
    """One result file: its machine, date, command and ratio, then every figure in it."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return f"No result yet: run `python bench/{name.split('.')[0]}.py` and build the site again."
    r = json.loads(path.read_text())
    m = r.get("machine", {})
    out = [heading, ""] if heading else []
    out += [f"- machine: {m.get('cpu', '?')}, capability {m.get('capability', '?')}, {m.get('cores', '?')} cores, "
            f"torch {m.get('torch', '?')}", f"- date: {r.get('date', 'not recorded')}",
            f"- command: `{r.get('command', f'python bench/{name}.py')}`", f"- ratio: **{r.get('ratio', 'none')}**",
            "", "| figure | value |", "| --- | --- |"]
    if "table" in r:  # a bench that lays out its own figures: {"columns": [...], "rows": [[...], ...]}
        columns, rows = r["table"]["columns"], r["table"]["rows"]
        out[-2:] = ["| " + " | ".join(map(cell, columns)) + " |", "|" + " --- |" * len(columns)]
        out += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
        return "\n".join(out)
    skip = {"machine", "date", "command", "ratio"}
    out += [f"| {cell(k)} | {cell(v)} |" for k, v in flattened({k: v for k, v in r.items() if k not in skip})]
    return "\n".join(out)


def benchmarks_reference() -> str:
    """A summary row, then a section, per file in bench/results."""
    names = sorted(path.stem for path in RESULTS.glob("*.json"))
    if not names:
        return "No results yet: run a benchmark (`python bench/NAME.py`) and build the site again."
    out = ["| benchmark | machine | date | ratio |", "| --- | --- | --- | --- |"]
    for name in names:
        r = json.loads((RESULTS / f"{name}.json").read_text())
        m = r.get("machine", {})
        out.append(f"| [{name}](#{name.replace('.', '')}) | {cell(m.get('cpu', '?'))} ({m.get('capability', '?')}) "
                   f"| {r.get('date', '?')} | {r.get('ratio', '')} |")
    out += ["", *(benchmark(name, f"### {name}") + "\n" for name in names)]
    return "\n".join(out)


MARKERS: dict[str, Callable[[], str]] = {
    "<!-- reference: verbs -->": verbs_reference,
    "<!-- reference: config -->": config_reference,
    "<!-- reference: http -->": http_reference,
    "<!-- reference: tuning -->": lambda: f"```text\n{tuning_table()}\n```",
    "<!-- benchmarks -->": benchmarks_reference,
}
COMMAND = re.compile(r"(?:^|[\s`(])(?:bigmodel|-m bigmodel\.cli)\s+([a-z]+)([^`\n]*)")
SEPARATORS = re.compile(r"\s(?:\||&&|;|>|2>|<)\s|\s#\s|\$\(")


def unknown_flags(markdown: str) -> list[str]:
    """`bigmodel VERB ... --flag` on the page (code blocks and inline code) where VERB has no such flag."""
    parsers = verb_parsers()
    text = re.sub(r"\\\n\s*", " ", markdown)  # a shell line continued with a backslash
    problems = []
    for verb, rest in COMMAND.findall(text):
        if verb not in parsers:
            continue
        own = {flag for action in parsers[verb]._actions for flag in action.option_strings}
        command = SEPARATORS.split(rest.replace("\\|", "/"))[0]
        for token in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", command):
            if token not in own:
                problems.append(f"`bigmodel {verb}` has no flag {token}")
    return sorted(set(problems))


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001 (MkDocs' hook signature)
    for marker, make in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    markdown = re.sub(r"<!-- benchmark: ([\w.]+) -->", lambda m: benchmark(m.group(1)), markdown)
    for problem in unknown_flags(markdown):
        log.warning(f"{page.file.src_path}: {problem}")
    return markdown


def on_files(files, config):  # noqa: ANN001
    """The raw OpenAPI schema as a page of the site, for clients that generate code from it."""
    from mkdocs.structure.files import File

    from bigmodel.serve.app import routes_app

    files.append(File.generated(config, "openapi.json", content=json.dumps(routes_app().openapi(), indent=1)))
    return files
