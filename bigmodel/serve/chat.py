"""Chat messages → one prompt: the checkpoint's own template if it ships one, else a plain one."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from bigmodel.serve.schema import ApiError, Message


def plain_chat(messages: list[Message]) -> str:
    """The plain default template for base models: `role: content` lines, then `assistant:`."""
    return "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant:"


def chat_template(folder: Path) -> Callable[[list[Message]], str]:
    """The checkpoint's own chat template if it ships one (`chat_template.jinja`, or `chat_template` in
    `tokenizer_config.json`, as Hugging Face does), else `plain_chat`.

    A checkpoint is not trusted code, so the template runs in jinja2's immutable sandbox."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    source = config.get("chat_template")
    if (folder / "chat_template.jinja").is_file():
        source = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if not isinstance(source, str):
        return plain_chat

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(source)
    specials = {k: v for k, v in config.items() if k.endswith("_token") and isinstance(v, str)}

    def render(messages: list[Message]) -> str:
        try:
            return template.render(messages=[m.model_dump() for m in messages], add_generation_prompt=True,
                                   **specials)
        except TemplateError as e:
            raise ApiError(400, f"messages: the chat template refused them: {e}", "invalid_request_error",
                           "messages") from None

    return render
