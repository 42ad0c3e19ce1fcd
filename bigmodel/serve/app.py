"""An OpenAI-compatible HTTP server for a bigmodel checkpoint (FastAPI + uvicorn).

Routes: `POST /v1/completions`, `POST /v1/chat/completions` (both with `stream`),
`GET /v1/models`, `GET /health`, `GET /metrics`. Errors use OpenAI's error JSON. Requests are
served one generation at a time behind a bounded queue (429 when it is full); sharing
forward passes across requests is not built yet.
"""


import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from bigmodel.config import GenerateConfig
from bigmodel.data.tokenizer import EOT, StreamDecoder, special_id
from bigmodel.infer.generate import generate_ids
from bigmodel.train.checkpoint import load_checkpoint


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def request_models(max_new_tokens: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """Request bodies whose schema states this server's own `max_tokens` limit."""
    NonEmpty = Annotated[str, Field(min_length=1)]
    MaxTokens = Annotated[int, Field(ge=1, le=max_new_tokens)]

    class Sampling(BaseModel):
        model: str | None = None
        max_tokens: MaxTokens = min(16, max_new_tokens)
        temperature: float = Field(1.0, ge=0, le=2)
        top_p: float = Field(1.0, gt=0, le=1)
        n: int = Field(1, ge=1, le=8)
        stop: str | list[str] | None = None
        seed: int | None = None
        stream: bool = False

        @field_validator("max_tokens", "temperature", "top_p", "n", "seed", mode="before")
        @classmethod
        def numbers_are_numbers(cls, value: object) -> object:
            if isinstance(value, str | bool):  # JSON "5" or true is not a number, whatever pydantic would make of it
                raise ValueError("must be a JSON number")
            return value

        @field_validator("stream", mode="before")
        @classmethod
        def stream_is_boolean(cls, value: object) -> object:
            if not isinstance(value, bool):
                raise ValueError("must be true or false")
            return value

    class CompletionRequest(Sampling):
        prompt: NonEmpty | Annotated[list[NonEmpty], Field(min_length=1, max_length=8)]

    class ChatRequest(Sampling):
        messages: list[Message] = Field(min_length=1)

    return CompletionRequest, ChatRequest


ERRORS = {status: {"model": ErrorResponse, "description": text} for status, text in {
    400: "invalid field", 401: "wrong or missing API key", 413: "prompt longer than the context",
    429: "queue full"}.items()}
EVENT_SCHEMA = {"type": "object", "properties": {"data": {"type": "string"}}}
STREAMED = {200: {"description": "the completion, or with `stream` server-sent events ending in [DONE]",
                  "content": {"text/event-stream": {"schema": EVENT_SCHEMA}}}, **ERRORS}


def chat_prompt(messages: list[Message]) -> str:
    """The plain default template for base models: `role: content` lines, then `assistant:`."""
    return "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant:"


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


def error_body(message: str, kind: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


class Metrics:
    """Counters and a latency histogram in Prometheus' text format."""

    BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.tokens = {"prompt": 0, "completion": 0}
        self.latency = [0] * (len(self.BUCKETS) + 1)
        self.latency_sum = 0.0
        self.queue_depth = 0

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            key = f'route="{route}",status="{status}"'
            self.requests[key] = self.requests.get(key, 0) + 1
            self.latency[next((i for i, b in enumerate(self.BUCKETS) if seconds <= b), len(self.BUCKETS))] += 1
            self.latency_sum += seconds

    def text(self) -> str:
        with self.lock:
            lines = ["# TYPE bigmodel_requests_total counter"]
            lines += [f"bigmodel_requests_total{{{k}}} {v}" for k, v in sorted(self.requests.items())]
            lines.append("# TYPE bigmodel_tokens_total counter")
            lines += [f'bigmodel_tokens_total{{kind="{k}"}} {v}' for k, v in self.tokens.items()]
            lines.append("# TYPE bigmodel_request_seconds histogram")
            running = 0
            for bound, count in zip([*map(str, self.BUCKETS), "+Inf"], self.latency, strict=True):
                running += count
                lines.append(f'bigmodel_request_seconds_bucket{{le="{bound}"}} {running}')
            lines += [f"bigmodel_request_seconds_sum {self.latency_sum}", f"bigmodel_request_seconds_count {running}",
                      "# TYPE bigmodel_queue_depth gauge", f"bigmodel_queue_depth {self.queue_depth}"]
            return "\n".join(lines) + "\n"


def create_app(ckpt: str, api_key: str | None = None, max_queue: int = 16,
               max_new_tokens_limit: int = 512) -> FastAPI:
    model, tok, folder = load_checkpoint(ckpt)
    model_id = folder.parent.name if folder.name in ("best", "last") else folder.name
    stop_id = special_id(tok, EOT)
    gate = threading.Lock()  # one generation at a time on the model
    slots = threading.BoundedSemaphore(max_queue)
    metrics = Metrics()
    CompletionRequest, ChatRequest = request_models(max_new_tokens_limit)
    app = FastAPI(title="bigmodel", version="0.1.0")

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(error_body(e.message, e.kind, e.param), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(e.detail), kind), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return JSONResponse(error_body(f"{field or 'body'}: {first.get('msg', 'invalid request')}",
                                       "invalid_request_error", field), status_code=400)

    @app.middleware("http")
    async def authenticate_and_measure(request: Request, call_next):
        started = time.perf_counter()
        if api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not secrets.compare_digest(given, api_key):
                response = JSONResponse(error_body("invalid or missing API key", "authentication_error"), 401)
                metrics.observe(request.url.path, 401, time.perf_counter() - started)
                return response
        response = await call_next(request)
        metrics.observe(request.url.path, response.status_code, time.perf_counter() - started)
        return response

    def tokens_of(prompt: str) -> list[int]:
        ids = tok.encode(prompt, add_special_tokens=False).ids
        if not ids:
            raise ApiError(400, "prompt has no tokens", "invalid_request_error", "prompt")
        if len(ids) >= model.config.block_size:
            raise ApiError(413, f"prompt is {len(ids)} tokens; the context holds {model.config.block_size}",
                           "invalid_request_error", "prompt")
        return ids

    def pieces(ids: list[int], req, choice: int) -> Iterator[tuple[str, str | None]]:
        """(text, finish_reason) pieces of one continuation; the reason comes with the last."""
        cfg = GenerateConfig(max_new_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                             seed=(req.seed if req.seed is not None else secrets.randbelow(2**31)) + choice)
        stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        decoder, text, produced = StreamDecoder(tok), "", 0
        with gate, torch.inference_mode():
            for token in generate_ids(model, ids, cfg, 1, stop_id):
                produced += 1
                if int(token[0]) == stop_id:
                    yield "", "stop"
                    return
                piece = decoder.push(int(token[0]))
                text += piece
                hit = next((s for s in stops if s and s in text), None)
                if hit:
                    yield piece[:max(0, len(piece) - (len(text) - text.index(hit)))], "stop"
                    return
                if piece:
                    yield piece, None
        yield decoder.flush(), "length"

    def admitted():
        if not slots.acquire(blocking=False):
            raise ApiError(429, "the queue is full; retry later", "rate_limit_error")
        metrics.queue_depth += 1

    def release():
        metrics.queue_depth -= 1
        slots.release()

    def complete(prompts: list[str], req, kind: str) -> dict:
        ids_list = [tokens_of(p) for p in prompts]
        admitted()
        try:
            choices, completion_tokens = [], 0
            for ids in ids_list:
                for c in range(req.n):
                    parts = list(pieces(ids, req, c))
                    text, reason = "".join(p for p, _ in parts), parts[-1][1]
                    completion_tokens += len(tok.encode(text, add_special_tokens=False).ids)
                    index = len(choices)
                    choices.append({"index": index, "text": text, "finish_reason": reason, "logprobs": None}
                                   if kind == "text_completion" else
                                   {"index": index, "message": {"role": "assistant", "content": text},
                                    "finish_reason": reason})
        finally:
            release()
        prompt_tokens = sum(len(i) for i in ids_list)
        metrics.tokens["prompt"] += prompt_tokens
        metrics.tokens["completion"] += completion_tokens
        return {"id": f"{'cmpl' if kind == 'text_completion' else 'chatcmpl'}-{uuid.uuid4().hex}", "object": kind,
                "created": int(time.time()), "model": model_id, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def stream(prompts: list[str], req, kind: str) -> StreamingResponse:
        """Server-sent events, one choice after another (index = prompt × n + sample)."""
        ids_list = [tokens_of(p) for p in prompts]
        admitted()
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def events() -> Iterator[str]:
            try:
                for index, (ids, sample) in enumerate((ids, c) for ids in ids_list for c in range(req.n)):
                    if kind == "chat.completion.chunk":
                        first = {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                        yield f"data: {json.dumps(chunk(first))}\n\n"
                    for piece, reason in pieces(ids, req, sample):
                        choice = ({"index": index, "text": piece, "finish_reason": reason, "logprobs": None}
                                  if kind == "text_completion" else
                                  {"index": index, "delta": {"content": piece} if piece else {},
                                   "finish_reason": reason})
                        yield f"data: {json.dumps(chunk(choice))}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                release()

        def chunk(choice: dict) -> dict:
            return {"id": ident, "object": kind, "created": created, "model": model_id, "choices": [choice]}

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model_id}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> str:
        return metrics.text()

    @app.get("/v1/models", responses={401: ERRORS[401]})
    def models() -> dict:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "bigmodel"}]}

    @app.post("/v1/completions", responses=STREAMED)
    def completions(req: CompletionRequest):
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if req.stream:
            return stream(prompts, req, "text_completion")
        return complete(prompts, req, "text_completion")

    @app.post("/v1/chat/completions", responses=STREAMED)
    def chat(req: ChatRequest):
        prompt = chat_prompt(req.messages)
        if req.stream:
            return stream([prompt], req, "chat.completion.chunk")
        return complete([prompt], req, "chat.completion")

    return app
