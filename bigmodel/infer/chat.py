"""A conversation → one prompt, through the model's own chat template (Jinja, as `transformers`
renders it): what `bigmodel chat`, `/v1/chat/completions` and the playground send the model."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from bigmodel.config import GenerateConfig
from bigmodel.data.tokenizer import stop_ids
from bigmodel.errors import BigModelError
from bigmodel.infer.seq2seq import decode, length_batches
from bigmodel.model.formats import tokenizer_config
from bigmodel.model.transformer import Transformer

Messages = list[dict[str, str]]  # {"role": ..., "content": ...}, oldest first

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
          "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
"""What chat fine-tuning teaches a model that has no template: ChatML's turns, each ended by the
model's own end-of-text token (which every bigmodel tokenizer has and every decoder stops at)."""


class Render(Protocol):
    def __call__(self, messages: Messages, add_generation_prompt: bool = True) -> str: ...


def plain_chat(messages: Messages, add_generation_prompt: bool = True) -> str:
    """A template for base models that have none (`--chat-template plain`): `role: content` lines,
    then `assistant:`."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + ("assistant:" if add_generation_prompt else "")


def chat_template(tokenizer_config: dict, model: str, override: str = "") -> Render:
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

    def render(messages: Messages, add_generation_prompt: bool = True) -> str:
        try:
            return template.render(messages=messages, add_generation_prompt=add_generation_prompt, **specials)
        except TemplateError as e:
            raise BigModelError(f"the chat template of {model} refused the messages: {e}") from None

    return render


def training_template(tokenizer_config: dict, model: str, override: str, eos: str) -> tuple[Render, dict]:
    """The template chat fine-tuning renders with, and the `tokenizer_config.json` its checkpoints carry so
    that `chat` and `serve` render alike: `override` (a Jinja file), else the model's own, else `CHATML`
    ended by `eos` (stated in the checkpoint, so the default is never silent)."""
    config = dict(tokenizer_config)
    if override == "plain":
        raise BigModelError("--chat-template plain is for chatting with base models; training needs a Jinja file")
    if override:
        if not Path(override).is_file():
            raise BigModelError(f"--chat-template {override}: no such file")
        config["chat_template"] = Path(override).read_text(encoding="utf-8")
    elif not config.get("chat_template"):
        config["chat_template"] = CHATML
        config.setdefault("eos_token", eos)
    return chat_template(config, model), config


@torch.no_grad()
def replies(model: Transformer, tok: Tokenizer, folder: Path, conversations: list[Messages], cfg: GenerateConfig,
            override: str = "", batch_size: int = 16) -> list[str]:
    """The model's next turn in each conversation, in input order: rendered through the checkpoint's
    template (or `override`), cut at its end of turn; prompts of similar length decode together."""
    special = tokenizer_config(folder)
    render, stops = chat_template(special, str(folder), override), stop_ids(tok, special)
    if not stops:
        raise BigModelError("the model names no end-of-turn token (eos_token), so a reply would never end")
    ids = [tok.encode(render(messages), add_special_tokens=False).ids for messages in conversations]
    outputs = [""] * len(ids)
    model.eval()
    for batch in tqdm(length_batches([len(row) for row in ids], batch_size), desc="reply", unit=" batches",
                      mininterval=1.0):
        found = decode(model, [ids[i] for i in batch], cfg, min(stops), also_stop=stops)
        for i, reply in zip(batch, found, strict=True):
            outputs[i] = tok.decode(reply).strip()
    return outputs
