"""What every route stands on: the checkpoint loaded in the background (`Served`), and the `Service`
the app keeps in its state (config, key, metrics, loading and draining, the checks of a request's
text against the model)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi import Request
from tokenizers import Tokenizer

from bigmodel.config import ServeConfig
from bigmodel.data.tokenizer import stop_ids
from bigmodel.device import pick_device
from bigmodel.errors import BigModelError
from bigmodel.infer.chat import chat_template
from bigmodel.model.checkpoint import Storage, in_precision, load_checkpoint, locate
from bigmodel.model.formats import PACKAGED_MODELS, tokenizer_config
from bigmodel.model.heads import HEAD_FILE, SequenceModel
from bigmodel.model.lora import ADAPTER, Adapter, adapter_folder, read_adapter
from bigmodel.model.quantize import is_int8, to_int8
from bigmodel.model.transformer import Transformer
from bigmodel.serve.engine import Engine
from bigmodel.serve.grammar import Grammars, Matcher
from bigmodel.serve.metrics import Metrics
from bigmodel.serve.owner import Owner
from bigmodel.serve.schema import ApiError, Message, Sampling, TextsRequest
from bigmodel.serve.transcriber import SpeechQueue


@dataclass
class Served:
    """What the server holds once the checkpoint has loaded."""

    model: Transformer  # generates (through the engine) and embeds
    tok: Tokenizer | None  # None for image and audio models
    model_id: str
    engine: Engine | None  # decoders only
    owner: Owner  # runs every forward pass over the model: the engine, or a thread of its own for encoders
    chat: Callable[[list[dict]], str] | None  # messages to prompt, for models with a chat template
    chat_missing: str  # why there is no chat, when there is none
    classifier: SequenceModel | None = None  # a fine-tuned checkpoint's model with its head
    special: dict = field(default_factory=dict)  # its tokenizer_config.json: special tokens, chat template
    grammars: Grammars | None = None  # made at the first request for structured output
    serves_adapters: bool = False  # started with --lora-modules or --runtime-lora: names it answers to are known
    adapters: dict[str, Adapter] = field(default_factory=dict)  # by name
    speech: SpeechQueue | None = None  # Whisper: recordings waiting for the owner (transcriber.py)

    def capabilities(self) -> list[str]:
        """What this model answers, as `/v1/models` tells clients such as the playground."""
        text = self.tok is not None
        head = self.classifier.head_config.task if self.classifier else None
        return [name for name, able in (("generate", self.engine is not None), ("classify", head is not None),
                                        ("explain", text and head == "classify"),
                                        ("embeddings", text and self.speech is None),
                                        ("transcribe", self.speech is not None)) if able]

def load_draft(cfg: ServeConfig, model: Transformer, tok: Tokenizer | None, device: torch.device,
               storage: Storage) -> Transformer:
    """The draft model, in the server's precision; it must read and write the served model's tokens."""
    draft, draft_tok, _ = load_checkpoint(locate(cfg.draft_model)[0], device, storage=storage)
    if not draft.config.causal or tok is None or draft_tok is None or draft_tok.get_vocab() != tok.get_vocab() or (
            draft.config.vocab_size > model.config.vocab_size):
        raise BigModelError(f"--draft-model {cfg.draft_model}: a draft must be a causal language model with "
                            f"the same tokenizer as {cfg.ckpt}")
    if cfg.quantize == "int8":
        return to_int8(draft)
    in_precision(draft, cfg.dtype, device, decoding=True)
    return draft


def load_adapter(name: str, path: str | Path, model: Transformer, storage: Storage) -> Adapter:
    """The adapter a LoRA fine-tune left in `path` (a checkpoint, or a run folder: its best/), for `model`."""
    folder = adapter_folder(path)
    return read_adapter(name, *storage.tensors(folder, ADAPTER), folder / ADAPTER, model)


def load_served(cfg: ServeConfig, metrics: Metrics) -> Served:
    folder, is_hf = locate(cfg.ckpt)
    device = pick_device(cfg.device)
    classifier, storage = None, Storage.of(cfg)
    if not is_hf and (folder / HEAD_FILE).is_file():
        classifier, tok, folder = load_checkpoint(folder, device, with_head=True, storage=storage)
        model = classifier.backbone
    else:
        model, tok, folder = load_checkpoint(folder, device, storage=storage)
    if cfg.quantize == "int8" and not is_int8(model):
        model = to_int8(model)
    else:  # in place: a classifier's backbone is the generator's model
        in_precision(classifier or model, cfg.dtype, device, decoding=model.config.causal)
    special = tokenizer_config(folder)
    adapters = {name: load_adapter(name, path, model, storage) for name, path in cfg.adapters().items()}
    if adapters and not model.config.causal:
        raise BigModelError(f"--lora-modules: {cfg.ckpt} is an encoder; adapters serve causal language models")
    draft = load_draft(cfg, model, tok, device, storage) if cfg.draft_model else None
    engine = Engine(model, cfg.max_batch, cfg.max_queue, stop_ids(tok, special), cfg.prefix_cache_mb,
                    metrics, cfg.speculate, draft) if model.config.causal and model.config.source != "mel" else None
    if is_hf and str(cfg.ckpt) in PACKAGED_MODELS:  # `--ckpt smollm2` answers to "smollm2", as clients will ask
        model_id = str(cfg.ckpt)
    else:
        model_id = folder.parent.name if folder.name in ("best", "last") else folder.name
    chat, missing = None, ""
    try:
        chat = chat_template(special, model_id, cfg.chat_template)
    except BigModelError as e:
        if cfg.chat_template:  # a template the server was told to use must work
            raise
        missing = str(e)
    serves_adapters = model.config.causal and bool(cfg.lora_modules or cfg.runtime_lora)
    speech = None
    if model.config.source == "mel":
        from bigmodel.infer.whisper import WhisperVocab, whisper_rules

        speech = SpeechQueue(model, tok, WhisperVocab.of(tok, whisper_rules(folder), model.config.vocab_size),
                             cfg.max_batch)
    return Served(model, tok, model_id, engine, engine or Owner(), chat, missing, classifier, special,
                  serves_adapters=serves_adapters, adapters=adapters, speech=speech)



class Service:
    """Everything the routes use: the config, the loaded model (once it has loaded) and the metrics."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.api_key = cfg.api_key()
        self.metrics = Metrics()
        self.loaded: Served | None = None
        self.failure: str | None = None
        self.draining = False

    def load(self) -> None:
        """Run in a background thread; a failure is reported by /health and every route, and ends the CLI."""
        try:
            self.loaded = load_served(self.cfg, self.metrics)
        except Exception as e:
            self.failure = str(e).splitlines()[0] if str(e) else type(e).__name__

    def unavailable(self) -> str | None:
        """Why requests cannot be served now, or None."""
        if self.draining:
            return "the server is shutting down"
        if self.failure:
            return f"the model failed to load: {self.failure}"
        return None if self.loaded else "the model is loading; retry shortly"

    @property
    def served(self) -> Served:
        assert self.loaded is not None  # the middleware answers 503 until it is
        return self.loaded

    def generator(self) -> Engine:
        s = self.served
        if s.speech is not None:
            raise ApiError(400, f"model {s.model_id} is Whisper; it serves /v1/audio/transcriptions and "
                           "/v1/audio/translations", "invalid_request_error", "model")
        if s.engine is None:
            raise ApiError(400, f"model {s.model_id} is an encoder; it serves /v1/embeddings"
                           + (" and /v1/classify" if s.classifier else ""), "invalid_request_error", "model")
        return s.engine

    def prompt_of(self, messages: list[Message]) -> str:
        """The chat's prompt, through the model's template; 400 for a model without one."""
        s = self.served
        if s.chat is None:
            raise ApiError(400, s.chat_missing, "invalid_request_error", "model")
        try:
            return s.chat([m.model_dump() for m in messages])
        except BigModelError as e:
            raise ApiError(400, f"messages: {e}", "invalid_request_error", "messages") from None

    def grammar_of(self, req: Sampling) -> tuple[object | None, str]:
        """The compiled grammar a request's `response_format`, `regex` or `choice` asks for (None: free text),
        and that field's name; 400 for one that is invalid or that this vocabulary cannot begin to write."""
        form = req.response_format if req.response_format and req.response_format.type != "text" else None
        asked = [(param, value) for param, value in (("response_format", form), ("regex", req.regex),
                                                     ("choice", req.choice)) if value is not None]
        if not asked:
            return None, ""
        param, value = asked[-1]
        if len(asked) > 1:
            raise ApiError(400, f"{param}: ask for one of response_format, regex and choice", "invalid_request_error",
                           param)
        kind, spec = (value.type, value.json_schema and value.json_schema.schema_) if param == "response_format" \
            else (param, value)
        if kind == "json_schema" and spec is None:
            raise ApiError(400, "response_format: json_schema needs json_schema.schema", "invalid_request_error", param)
        s = self.served
        if s.grammars is None:
            if not s.engine.stop_ids:
                raise ApiError(400, f"model {s.model_id} has no end-of-text token to end a structured answer with",
                               "invalid_request_error", param)
            s.grammars = Grammars(s.tok, s.model.config.vocab_size, s.engine.stop_ids)
        try:
            grammar = s.grammars.compile(kind, spec)
        except (RuntimeError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            reason = re.sub(r"^\[[^]]*\] \S+: ", "", first)  # xgrammar's time and source line, dropped
            raise ApiError(400, f"{param}: {reason}", "invalid_request_error", param) from None
        if not Matcher(grammar, s.model.config.vocab_size).allows_any():
            raise ApiError(400, f"{param}: no token of this model's vocabulary can begin it", "invalid_request_error",
                           param)
        return grammar, param

    def adapter_of(self, req: Sampling) -> Adapter | None:
        """The LoRA adapter a request asks for, by its `adapter` field or its `model` (`base:adapter`, or the
        adapter's name); None for the base. A server with adapters knows every name it answers to (400 for
        another); one without answers to any `model`, as single-model servers do."""
        s = self.served
        name, param = (req.adapter, "adapter") if req.adapter is not None else (req.model, "model")
        if name is None or name == s.model_id:
            return None
        base, colon, tail = name.partition(":")
        if colon and base == s.model_id:
            name = tail
        if name in s.adapters:
            return s.adapters[name]
        if param == "adapter" or colon or s.serves_adapters:
            served = ", ".join([s.model_id, *(f"{s.model_id}:{a}" for a in s.adapters)])
            raise ApiError(400, f"{param}: no adapter {name!r} here (serving {served})", "invalid_request_error",
                           param)
        return None

    def classifier(self) -> SequenceModel:
        """The fine-tuned model with its head, for the routes that need one."""
        s = self.served
        if s.classifier is None:
            raise ApiError(400, f"model {s.model_id} has no classifier head; fine-tune it with `bigmodel finetune`",
                           "invalid_request_error", "model")
        return s.classifier

    def tokens_of(self, text: str | list[int], param: str, special: bool = False) -> list[int]:
        """`text`'s ids (or the ids given, checked against the vocabulary), checked against the context
        (a prompt leaves room for one new token)."""
        config = self.served.model.config
        block = config.block_size
        if self.served.tok is None:
            raise ApiError(400, f"model {self.served.model_id} reads {config.frontend}, not text; "
                           "it serves /v1/classify", "invalid_request_error", "model")
        if not isinstance(text, str) and (wrong := [i for i in text if not 0 <= i < config.vocab_size]):
            raise ApiError(400, f"{param}: token id {wrong[0]} is outside the vocabulary (0..{config.vocab_size - 1})",
                           "invalid_request_error", param)
        ids = text if not isinstance(text, str) else self.served.tok.encode(text, add_special_tokens=special).ids
        if not ids:
            raise ApiError(400, f"{param} has no tokens", "invalid_request_error", param)
        if len(ids) > block - (0 if special else 1):
            raise ApiError(413, f"{param} is {len(ids)} tokens; the context holds {block}", "invalid_request_error",
                           param)
        return ids

    def inputs_of(self, req: TextsRequest) -> tuple[list[list[int]], int]:
        """The request's texts as token ids (special tokens included), each checked against the context."""
        ids = [self.tokens_of(t, "input", special=True) for t in req.texts()]
        tokens = sum(len(i) for i in ids)
        self.metrics.count_tokens("prompt", tokens)
        return ids, tokens



def service(request: Request) -> Service:
    return request.app.state.service
