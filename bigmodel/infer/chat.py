"""A conversation → one prompt, through the model's own chat template (Jinja, as `transformers`
renders it): what `bigmodel chat`, `/v1/chat/completions` and the playground send the model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bigmodel.errors import BigModelError

Messages = list[dict[str, str]]  # {"role": ..., "content": ...}, oldest first


def plain_chat(messages: Messages) -> str:
    """A template for base models that have none (`--chat-template plain`): `role: content` lines,
    then `assistant:`."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def chat_template(tokenizer_config: dict, model: str, override: str = "") -> Callable[[Messages], str]:
    """The prompt maker for a model: `override` (a Jinja file, or `plain`) if given, else the template
    of its `tokenizer_config` (`model` names it in errors). A model without one has no chat.

    A checkpoint is not trusted code, so the template runs in jinja2's immutable sandbox."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if override == "plain":
        return plain_chat
    if override:
        if not Path(override).is_file():
            raise BigModelError(f"--chat-template {override}: no such file (or say `plain`)")
        source = Path(override).read_text(encoding="utf-8")
    else:
        source = tokenizer_config.get("chat_template")
    if isinstance(source, list):  # several named templates, as some tokenizer_config.json files hold
        source = next((t.get("template") for t in source if t.get("name") == "default"), None)
    if not isinstance(source, str):
        raise BigModelError(f"{model}: has no chat template; give one with --chat-template FILE "
                            "(or --chat-template plain for `role: text` lines)")

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        template = env.from_string(source)
    except TemplateError as e:
        raise BigModelError(f"{override or model}: the chat template does not parse ({e})") from None
    specials = {k: v.get("content") if isinstance(v, dict) else v
                for k, v in tokenizer_config.items() if k.endswith("_token")}

    def render(messages: Messages) -> str:
        try:
            return template.render(messages=messages, add_generation_prompt=True, **specials)
        except TemplateError as e:
            raise BigModelError(f"the chat template of {model} refused the messages: {e}") from None

    return render
