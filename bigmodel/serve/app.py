"""An OpenAI-compatible HTTP server for a bigmodel checkpoint (FastAPI + uvicorn).

Routes: `POST /v1/completions`, `POST /v1/chat/completions` (both with `stream`),
`POST /v1/embeddings`, `POST /v1/classify` (fine-tuned classifiers), `GET /v1/models`,
`GET /health`, `GET /metrics`. Errors use OpenAI's error JSON. Generation goes through the
continuous-batching `Engine`; the model loads in the background after the port opens
(503 until then), and SIGTERM lets every admitted request finish before the process exits.
"""

import asyncio
import base64
import contextlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field, StrictBool, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from tokenizers import Tokenizer

from bigmodel.config import GenerateConfig
from bigmodel.data.collate import pad_id
from bigmodel.data.tokenizer import EOT, StreamDecoder, special_id
from bigmodel.infer.classify import predict_scores
from bigmodel.infer.embed import embed_ids
from bigmodel.model.checkpoint import load_checkpoint, resolve_checkpoint
from bigmodel.model.heads import HEAD_FILE, SequenceModel
from bigmodel.model.quantize import is_int8, to_int8
from bigmodel.model.transformer import Transformer
from bigmodel.serve.engine import Engine, QueueFull, Sequence, ShuttingDown, TooLarge


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


def request_models(max_new_tokens: int) -> tuple[type[BaseModel], ...]:
    """Request bodies (completion, chat, embedding, classify); the schema states this server's limits."""
    NonEmpty = Annotated[str, Field(min_length=1)]
    MaxTokens = Annotated[int, Field(ge=1, le=max_new_tokens)]

    class StreamOptions(BaseModel):
        include_usage: StrictBool = False  # a last chunk, before [DONE], with `usage` and no choices

    class Sampling(BaseModel):
        model: str | None = None
        max_tokens: MaxTokens = min(16, max_new_tokens)
        temperature: float = Field(1.0, ge=0, le=2)
        top_p: float = Field(1.0, gt=0, le=1)
        n: int = Field(1, ge=1, le=8)
        stop: str | list[str] | None = None
        seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # what torch's generator takes
        stream: bool = False
        stream_options: StreamOptions | None = None

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

    class TextsRequest(BaseModel):
        model: str | None = None
        input: NonEmpty | Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_INPUTS)]

    class EmbeddingRequest(TextsRequest):
        encoding_format: Literal["float", "base64"] = "float"

    return CompletionRequest, ChatRequest, EmbeddingRequest, TextsRequest


MAX_INPUTS = 128  # texts in one embeddings or classify request
ERRORS = {status: {"model": ErrorResponse, "description": text} for status, text in {
    400: "invalid field, or a route this checkpoint does not serve", 401: "wrong or missing API key",
    413: "prompt longer than the context", 429: "queue full", 503: "model loading, or server shutting down",
}.items()}
EVENT_SCHEMA = {"type": "object", "properties": {"data": {"type": "string"}}}
STREAMED = {200: {"description": "the completion, or with `stream` server-sent events ending in [DONE]",
                  "content": {"text/event-stream": {"schema": EVENT_SCHEMA}}}, **ERRORS}


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

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            key = f'route="{route}",status="{status}"'
            self.requests[key] = self.requests.get(key, 0) + 1
            self.latency[next((i for i, b in enumerate(self.BUCKETS) if seconds <= b), len(self.BUCKETS))] += 1
            self.latency_sum += seconds

    def count_tokens(self, kind: str, n: int) -> None:
        with self.lock:
            self.tokens[kind] += n

    def text(self, queue_depth: int) -> str:
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
                      "# TYPE bigmodel_queue_depth gauge", f"bigmodel_queue_depth {queue_depth}"]
            return "\n".join(lines) + "\n"


@dataclass
class Served:
    """What the server holds once the checkpoint has loaded."""

    model: Transformer  # generates (through the engine) and embeds
    tok: Tokenizer
    model_id: str
    engine: Engine | None  # decoders only
    chat: Callable[[list[Message]], str]  # messages to prompt
    classifier: SequenceModel | None = None  # a fine-tuned checkpoint's model with its head


@dataclass
class State:
    served: Served | None = None
    failure: str | None = None
    draining: bool = False

    def unavailable(self) -> str | None:
        """Why requests cannot be served now, or None."""
        if self.draining:
            return "the server is shutting down"
        if self.failure:
            return f"the model failed to load: {self.failure}"
        return None if self.served else "the model is loading; retry shortly"


def load_served(ckpt: str, max_batch: int, max_queue: int, quantize: str) -> Served:
    folder = resolve_checkpoint(ckpt)
    classifier = None
    if (folder / HEAD_FILE).is_file():
        classifier, tok, folder = load_checkpoint(folder, with_head=True)
        model = classifier.backbone
    else:
        model, tok, folder = load_checkpoint(folder)
    tok.no_padding()  # requests are checked against the context, never cut or padded by the tokenizer
    tok.no_truncation()
    if quantize == "int8" and not is_int8(model):
        model = to_int8(model)
    engine = None
    if model.config.causal:
        engine = Engine(model, max_batch, max_queue, special_id(tok, EOT))
    model_id = folder.parent.name if folder.name in ("best", "last") else folder.name
    return Served(model, tok, model_id, engine, chat_template(folder), classifier)


@dataclass
class Choice:
    """One continuation: its engine sequence and the tokens handed over to the event loop."""

    seq: Sequence
    tokens: asyncio.Queue  # filled from the engine thread through the event loop
    used: int = 0  # tokens turned into text (what `usage` counts)

    async def pieces(self, tok: Tokenizer, stop_id: int | None, stops: list[str],
                     ) -> AsyncIterator[tuple[str, str | None]]:
        """(text, finish_reason) pieces; the reason comes with the last. Leaving early frees the row."""
        decoder, text = StreamDecoder(tok), ""
        try:
            while (token := await self.tokens.get()) is not None:
                self.used += 1
                if token == stop_id:
                    yield "", "stop"
                    return
                piece = decoder.push(token)
                text += piece
                hit = next((s for s in stops if s and s in text), None)
                if hit:
                    yield piece[:max(0, len(piece) - (len(text) - text.index(hit)))], "stop"
                    return
                if piece:
                    yield piece, None
            if self.seq.error:
                raise RuntimeError(self.seq.error)
            yield decoder.flush(), "length"
        finally:
            self.seq.cancel()


def create_app(ckpt: str, api_key: str | None = None, max_queue: int = 64, max_new_tokens_limit: int = 512,
               max_batch: int = 16, quantize: str = "none") -> FastAPI:
    """The app; the checkpoint loads in a background thread once the server starts."""
    resolve_checkpoint(ckpt)  # a wrong path fails now, in one line, not after the port opens
    state = State()
    metrics = Metrics()
    CompletionRequest, ChatRequest, EmbeddingRequest, TextsRequest = request_models(max_new_tokens_limit)

    def load() -> None:
        try:
            state.served = load_served(ckpt, max_batch, max_queue, quantize)
        except Exception as e:  # reported by /health and every route; the CLI exits with it
            state.failure = str(e).splitlines()[0] if str(e) else type(e).__name__

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=load, name="bigmodel-load", daemon=True).start()
        yield
        state.draining = True
        if state.served and state.served.engine:
            await asyncio.to_thread(state.served.engine.close)

    app = FastAPI(title="bigmodel", version="0.1.0", lifespan=lifespan)
    app.state.bigmodel = state

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(error_body(e.message, e.kind, e.param), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(e.detail), kind), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, e: Exception) -> JSONResponse:  # a bug: still OpenAI's shape, and logged
        return JSONResponse(error_body(f"internal error: {type(e).__name__}", "server_error"), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return JSONResponse(error_body(f"{field or 'body'}: {first.get('msg', 'invalid request')}",
                                       "invalid_request_error", field), status_code=400)

    @app.middleware("http")
    async def authenticate_and_measure(request: Request, call_next):
        started = time.perf_counter()
        response = None
        if request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if api_key and not secrets.compare_digest(given, api_key):
                response = JSONResponse(error_body("invalid or missing API key", "authentication_error"), 401)
            elif reason := state.unavailable():
                response = JSONResponse(error_body(reason, "service_unavailable"), 503, headers={"Retry-After": "1"})
        if response is None:
            response = await call_next(request)
        metrics.observe(request.url.path, response.status_code, time.perf_counter() - started)
        return response

    def served() -> Served:
        assert state.served is not None  # the middleware answers 503 until it is
        return state.served

    def generator() -> tuple[Served, Engine]:
        s = served()
        if s.engine is None:
            raise ApiError(400, f"model {s.model_id} is an encoder; it serves /v1/embeddings"
                           + (" and /v1/classify" if s.classifier else ""), "invalid_request_error", "model")
        return s, s.engine

    def tokens_of(s: Served, text: str, param: str, special: bool = False) -> list[int]:
        ids = s.tok.encode(text, add_special_tokens=special).ids
        if not ids:
            raise ApiError(400, f"{param} has no tokens", "invalid_request_error", param)
        limit = s.model.config.block_size - (0 if special else 1)  # a prompt leaves room for one new token
        if len(ids) > limit:
            raise ApiError(413, f"{param} is {len(ids)} tokens; the context holds {s.model.config.block_size}",
                           "invalid_request_error", param)
        return ids

    def start(prompts: list[str], req) -> tuple[Served, list[Choice]]:
        """Tokenize, then queue every (prompt, sample) as one sequence on the engine."""
        s, engine = generator()
        ids_list = [tokens_of(s, p, "prompt") for p in prompts]
        loop = asyncio.get_running_loop()
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        choices = []
        for ids in ids_list:
            for _ in range(req.n):
                queue: asyncio.Queue = asyncio.Queue()

                def emit(token: int | None, queue: asyncio.Queue = queue) -> None:
                    with contextlib.suppress(RuntimeError):  # the event loop is gone: nobody listens
                        loop.call_soon_threadsafe(queue.put_nowait, token)

                cfg = GenerateConfig(max_new_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                                     seed=seed + len(choices))
                choices.append(Choice(Sequence(ids, cfg, emit), queue))
        try:
            engine.submit([c.seq for c in choices])
        except TooLarge:  # retrying would never help: not a 429
            raise ApiError(400, f"prompts × n asks for {len(choices)} sequences; this server holds at most "
                           f"{engine.capacity} at once", "invalid_request_error", "n") from None
        except QueueFull:
            raise ApiError(429, "the queue is full; retry later", "rate_limit_error") from None
        except ShuttingDown:
            raise ApiError(503, "the server is shutting down", "service_unavailable") from None
        metrics.count_tokens("prompt", sum(len(i) for i in ids_list))  # as `usage` counts them
        return s, choices

    def usage_of(choices: list[Choice], n: int) -> dict:
        prompt = sum(len(c.seq.prompt) for c in choices[::n])  # each prompt counted once, not per sample
        completion = sum(c.used for c in choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def stops_of(req) -> list[str]:
        return [req.stop] if isinstance(req.stop, str) else (req.stop or [])

    async def complete(prompts: list[str], req, kind: str) -> dict:
        s, choices = start(prompts, req)
        stop_id, stops = s.engine.stop_id, stops_of(req)

        async def collect(choice: Choice) -> tuple[str, str | None]:
            parts = [part async for part in choice.pieces(s.tok, stop_id, stops)]
            return "".join(p for p, _ in parts), parts[-1][1]

        try:
            results = await asyncio.gather(*(collect(c) for c in choices))
        except RuntimeError as e:
            raise ApiError(500, str(e), "server_error") from None
        finally:
            for c in choices:
                c.seq.cancel()
        usage = usage_of(choices, req.n)
        metrics.count_tokens("completion", usage["completion_tokens"])
        return {"id": f"{'cmpl' if kind == 'text_completion' else 'chatcmpl'}-{uuid.uuid4().hex}", "object": kind,
                "created": int(time.time()), "model": s.model_id,
                "choices": [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                            if kind == "text_completion" else
                            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
                            for i, (text, reason) in enumerate(results)], "usage": usage}

    def stream(prompts: list[str], req, kind: str) -> StreamingResponse:
        """Server-sent events, one choice after another (index = prompt × n + sample); all generate at once."""
        s, choices = start(prompts, req)
        stop_id, stops = s.engine.stop_id, stops_of(req)
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(choice: dict | None, **extra: object) -> str:
            body = {"id": ident, "object": kind, "created": created, "model": s.model_id,
                    "choices": [choice] if choice else [], **extra}
            return f"data: {json_text(body)}\n\n"

        async def events() -> AsyncIterator[str]:
            try:
                for index, choice in enumerate(choices):
                    if kind == "chat.completion.chunk":
                        yield chunk({"index": index, "delta": {"role": "assistant", "content": ""},
                                     "finish_reason": None})
                    async for piece, reason in choice.pieces(s.tok, stop_id, stops):
                        yield chunk({"index": index, "text": piece, "finish_reason": reason, "logprobs": None}
                                    if kind == "text_completion" else
                                    {"index": index, "delta": {"content": piece} if piece else {},
                                     "finish_reason": reason})
                if req.stream_options and req.stream_options.include_usage:
                    yield chunk(None, usage=usage_of(choices, req.n))
                yield "data: [DONE]\n\n"
            except RuntimeError as e:  # the engine failed mid-stream: say so in the stream
                yield f"data: {json_text(error_body(str(e), 'server_error'))}\n\n"
            finally:  # also when the client has gone: every row it held is freed
                for c in choices:
                    c.seq.cancel()
                metrics.count_tokens("completion", sum(c.used for c in choices))

        return StreamingResponse(events(), media_type="text/event-stream")

    def inputs_of(s: Served, req) -> tuple[list[list[int]], int]:
        """The request's texts as token ids (special tokens included), each checked against the context."""
        ids = [tokens_of(s, t, "input", special=True) for t in ([req.input] if isinstance(req.input, str)
                                                                 else req.input)]
        tokens = sum(len(i) for i in ids)
        metrics.count_tokens("prompt", tokens)
        return ids, tokens

    @app.get("/health", responses={503: {"description": "loading, failed, or shutting down"}})
    def health() -> JSONResponse:
        reason = state.unavailable()
        if reason:
            return JSONResponse({"status": reason}, 503)
        return JSONResponse({"status": "ok", "model": served().model_id})

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> str:
        engine = state.served.engine if state.served else None
        return metrics.text(engine.depth if engine else 0)

    @app.get("/v1/models", responses={401: ERRORS[401], 503: ERRORS[503]})
    def models() -> dict:
        return {"object": "list", "data": [{"id": served().model_id, "object": "model", "created": 0,
                                            "owned_by": "bigmodel"}]}

    @app.post("/v1/completions", responses=STREAMED)
    async def completions(req: CompletionRequest):
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if req.stream:
            return stream(prompts, req, "text_completion")
        return await complete(prompts, req, "text_completion")

    @app.post("/v1/chat/completions", responses=STREAMED)
    async def chat(req: ChatRequest):
        prompt = served().chat(req.messages)
        if req.stream:
            return stream([prompt], req, "chat.completion.chunk")
        return await complete([prompt], req, "chat.completion")

    @app.post("/v1/embeddings", responses=ERRORS)
    def embeddings(req: EmbeddingRequest) -> dict:
        """Mean-pooled, unit-length vectors of the last hidden states (as sentence-transformers)."""
        s = served()
        ids, tokens = inputs_of(s, req)
        vectors = embed_ids(s.model, ids, pad_id(s.tok))
        return {"object": "list", "model": s.model_id, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "data": [{"object": "embedding", "index": i,
                          "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()
                          if req.encoding_format == "base64" else v.tolist()} for i, v in enumerate(vectors)]}

    @app.post("/v1/classify", responses=ERRORS)
    def classify(req: TextsRequest) -> dict:
        """Label and probabilities per text (a regression head gives its value)."""
        s = served()
        if s.classifier is None:
            raise ApiError(400, f"model {s.model_id} has no classifier head; fine-tune it with `bigmodel finetune`",
                           "invalid_request_error", "model")
        ids, tokens = inputs_of(s, req)
        head = s.classifier.head_config
        scores = predict_scores(s.classifier, ids, pad_id(s.tok), head.n_outputs)
        if head.task == "classify":
            rows = [{"label": head.labels[int(p.argmax())],
                     "probabilities": dict(zip(head.labels, p.tolist(), strict=True))} for p in scores.softmax(-1)]
        else:
            rows = [{"value": float(v[0])} for v in scores]
        return {"object": "list", "model": s.model_id, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "data": [{"object": "classification", "index": i, **row} for i, row in enumerate(rows)]}

    def openapi() -> dict:
        """FastAPI's schema without its 422 answers: invalid fields get OpenAI's 400 here."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for operation in (op for path in schema["paths"].values() for op in path.values()):
                operation["responses"].pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


def json_text(body: dict) -> str:
    return json.dumps(body, ensure_ascii=False)


def serve(app: FastAPI, host: str, port: int) -> None:
    """Run uvicorn; on SIGTERM/SIGINT new requests get 503 and admitted ones finish (up to 30 s)."""
    state: State = app.state.bigmodel

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            state.draining = True
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # uvicorn would re-raise it after the drain; a drained server exits 0

    server = Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30))

    async def watch_loading() -> None:
        while state.served is None and state.failure is None:
            await asyncio.sleep(0.05)
        if state.failure:
            server.should_exit = True

    async def main() -> None:
        watcher = asyncio.ensure_future(watch_loading())
        await server.serve()
        watcher.cancel()

    asyncio.run(main())
