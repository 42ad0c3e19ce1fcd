"""An OpenAI-compatible HTTP server for a bigmodel checkpoint (FastAPI + uvicorn).

Routes: `POST /v1/completions`, `POST /v1/chat/completions` (both with `stream`),
`POST /v1/embeddings`, `POST /v1/classify` (fine-tuned classifiers), `GET /v1/models`,
`GET /health`, `GET /metrics`. Errors use OpenAI's error JSON (`schema.py`). Generation goes
through the continuous-batching `Engine`; the model loads in the background after the port
opens (503 until then), and SIGTERM lets every admitted request finish before the process exits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import secrets
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from tokenizers import Tokenizer

from bigmodel.config import GenerateConfig, ServeConfig
from bigmodel.data.collate import pad_id
from bigmodel.data.inputs import Inputs, TextInputs, inputs_for
from bigmodel.data.tokenizer import EOT, StopText, StreamDecoder, special_id
from bigmodel.device import pick_device
from bigmodel.errors import BigModelError
from bigmodel.infer.classify import predict_scores
from bigmodel.infer.ctc import transcribe
from bigmodel.infer.embed import embed_ids
from bigmodel.model.checkpoint import Storage, in_precision, load_checkpoint, locate
from bigmodel.model.heads import HEAD_FILE, SequenceModel
from bigmodel.model.quantize import is_int8, to_int8
from bigmodel.model.transformer import Transformer
from bigmodel.serve.chat import chat_template
from bigmodel.serve.engine import Engine, QueueFull, Sequence, ShuttingDown, TooLarge
from bigmodel.serve.metrics import Metrics
from bigmodel.serve.schema import (
    ERRORS,
    MAX_EXPLAIN_TOKENS,
    STREAMED,
    ApiError,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    ExplainRequest,
    Message,
    Sampling,
    TextsRequest,
    error_body,
)

PLAYGROUND = Path(__file__).with_name("static") / "playground.html"

@dataclass
class Served:
    """What the server holds once the checkpoint has loaded."""

    model: Transformer  # generates (through the engine) and embeds
    tok: Tokenizer | None  # None for image and audio models
    model_id: str
    engine: Engine | None  # decoders only
    chat: Callable[[list[Message]], str]  # messages to prompt
    classifier: SequenceModel | None = None  # a fine-tuned checkpoint's model with its head

    def capabilities(self) -> list[str]:
        """What this model answers, as `/v1/models` tells clients such as the playground."""
        text = self.tok is not None
        head = self.classifier.head_config.task if self.classifier else None
        return [name for name, able in (("generate", self.engine is not None), ("classify", head is not None),
                                        ("explain", text and head == "classify"), ("embeddings", text)) if able]

log = logging.getLogger("bigmodel.serve")


def load_served(cfg: ServeConfig) -> Served:
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
    engine = Engine(model, cfg.max_batch, cfg.max_queue, special_id(tok, EOT)) if model.config.causal else None
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
        decoder, text = StreamDecoder(tok), StopText(stops)
        try:
            while (token := await self.tokens.get()) is not None:
                self.used += 1
                if token == stop_id:
                    yield text.flush(), "stop"
                    return
                piece, hit = text.push(decoder.push(token))
                if hit:
                    yield piece, "stop"
                    return
                if piece:
                    yield piece, None
            if self.seq.error:
                raise RuntimeError(self.seq.error)
            piece, hit = text.push(decoder.flush())
            yield piece + ("" if hit else text.flush()), "stop" if hit else "length"
        finally:
            self.seq.cancel()


def usage_of(choices: list[Choice], n: int) -> dict:
    prompt = sum(len(c.seq.prompt) for c in choices[::n])  # each prompt counted once, not per sample
    completion = sum(c.used for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def json_text(body: dict) -> str:
    return json.dumps(body, ensure_ascii=False)


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
            self.loaded = load_served(self.cfg)
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
        if s.engine is None:
            raise ApiError(400, f"model {s.model_id} is an encoder; it serves /v1/embeddings"
                           + (" and /v1/classify" if s.classifier else ""), "invalid_request_error", "model")
        return s.engine

    def classifier(self) -> SequenceModel:
        """The fine-tuned model with its head, for the routes that need one."""
        s = self.served
        if s.classifier is None:
            raise ApiError(400, f"model {s.model_id} has no classifier head; fine-tune it with `bigmodel finetune`",
                           "invalid_request_error", "model")
        return s.classifier

    def tokens_of(self, text: str, param: str, special: bool = False) -> list[int]:
        """`text`'s ids, checked against the context (a prompt leaves room for one new token)."""
        block = self.served.model.config.block_size
        if self.served.tok is None:
            raise ApiError(400, f"model {self.served.model_id} reads {self.served.model.config.frontend}, not text; "
                           "it serves /v1/classify", "invalid_request_error", "model")
        ids = self.served.tok.encode(text, add_special_tokens=special).ids
        if not ids:
            raise ApiError(400, f"{param} has no tokens", "invalid_request_error", param)
        if len(ids) > block - (0 if special else 1):
            raise ApiError(413, f"{param} is {len(ids)} tokens; the context holds {block}", "invalid_request_error",
                           param)
        return ids

    def start(self, prompts: list[str], req: Sampling) -> list[Choice]:
        """Tokenize, then queue every (prompt, sample) as one sequence on the engine."""
        engine = self.generator()
        limit = self.cfg.max_new_tokens_limit
        if req.max_tokens is not None and req.max_tokens > limit:
            raise ApiError(400, f"max_tokens: at most {limit} on this server", "invalid_request_error", "max_tokens")
        ids_list = [self.tokens_of(p, "prompt") for p in prompts]
        loop = asyncio.get_running_loop()
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        choices = []
        for ids in ids_list:
            for _ in range(req.n):
                queue: asyncio.Queue = asyncio.Queue()

                def emit(token: int | None, queue: asyncio.Queue = queue) -> None:
                    with contextlib.suppress(RuntimeError):  # the event loop is gone: nobody listens
                        loop.call_soon_threadsafe(queue.put_nowait, token)

                cfg = GenerateConfig(max_new_tokens=req.max_tokens or min(16, limit), temperature=req.temperature,
                                     top_p=req.top_p, seed=seed + len(choices))
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
        self.metrics.count_tokens("prompt", sum(len(i) for i in ids_list))  # as `usage` counts them
        return choices

    async def complete(self, prompts: list[str], req: Sampling, kind: str) -> dict:
        choices = self.start(prompts, req)
        s = self.served

        async def collect(choice: Choice) -> tuple[str, str | None]:
            parts = [part async for part in choice.pieces(s.tok, s.engine.stop_id, req.stops())]
            return "".join(p for p, _ in parts), parts[-1][1]

        try:
            results = await asyncio.gather(*(collect(c) for c in choices))
        except RuntimeError as e:
            raise ApiError(500, str(e), "server_error") from None
        finally:
            for c in choices:
                c.seq.cancel()
        usage = usage_of(choices, req.n)
        self.metrics.count_tokens("completion", usage["completion_tokens"])
        return {"id": completion_id(kind), "object": kind, "created": int(time.time()), "model": s.model_id,
                "choices": [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                            if kind == "text_completion" else
                            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
                            for i, (text, reason) in enumerate(results)], "usage": usage}

    def stream(self, prompts: list[str], req: Sampling, kind: str) -> StreamingResponse:
        """Server-sent events, one choice after another (index = prompt × n + sample); all generate at once."""
        choices = self.start(prompts, req)
        s = self.served
        ident, created = completion_id(kind), int(time.time())

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
                    async for piece, reason in choice.pieces(s.tok, s.engine.stop_id, req.stops()):
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
                self.metrics.count_tokens("completion", sum(c.used for c in choices))

        return StreamingResponse(events(), media_type="text/event-stream")

    def inputs_of(self, req: TextsRequest) -> tuple[list[list[int]], int]:
        """The request's texts as token ids (special tokens included), each checked against the context."""
        ids = [self.tokens_of(t, "input", special=True) for t in req.texts()]
        tokens = sum(len(i) for i in ids)
        self.metrics.count_tokens("prompt", tokens)
        return ids, tokens


def completion_id(kind: str) -> str:
    """OpenAI's id prefixes: `cmpl-` for text completions, `chatcmpl-` for chat (streamed or not)."""
    return f"{'cmpl' if kind.startswith('text_completion') else 'chatcmpl'}-{uuid.uuid4().hex}"


def service(request: Request) -> Service:
    return request.app.state.service


router = APIRouter()


@router.get("/health", responses={503: {"description": "loading, failed, or shutting down"}})
def health(request: Request) -> JSONResponse:
    reason = service(request).unavailable()
    if reason:
        return JSONResponse({"status": reason}, 503)
    return JSONResponse({"status": "ok", "model": service(request).served.model_id})


@router.get("/metrics", response_class=PlainTextResponse)
def prometheus(request: Request) -> str:
    loaded = service(request).loaded
    return service(request).metrics.text(loaded.engine.depth if loaded and loaded.engine else 0)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def playground() -> str:
    """The playground page; it calls the /v1 routes with the key the user types."""
    return PLAYGROUND.read_text(encoding="utf-8")


@router.get("/v1/models", responses={401: ERRORS[401], 503: ERRORS[503]})
def models(request: Request) -> dict:
    served = service(request).served
    return {"object": "list", "data": [{"id": served.model_id, "object": "model", "created": 0,
                                        "owned_by": "bigmodel", "capabilities": served.capabilities()}]}


@router.post("/v1/completions", responses=STREAMED)
async def completions(req: CompletionRequest, request: Request):
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if req.stream:
        return service(request).stream(prompts, req, "text_completion")
    return await service(request).complete(prompts, req, "text_completion")


@router.post("/v1/chat/completions", responses=STREAMED)
async def chat(req: ChatRequest, request: Request):
    prompt = service(request).served.chat(req.messages)
    if req.stream:
        return service(request).stream([prompt], req, "chat.completion.chunk")
    return await service(request).complete([prompt], req, "chat.completion")


@router.post("/v1/embeddings", responses=ERRORS)
def embeddings(req: EmbeddingRequest, request: Request) -> dict:
    """Mean-pooled, unit-length vectors of the last hidden states (as sentence-transformers)."""
    svc = service(request)
    s = svc.served
    ids, tokens = svc.inputs_of(req)
    vectors = embed_ids(s.model, ids, pad_id(s.tok))
    return {"object": "list", "model": s.model_id, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "data": [{"object": "embedding", "index": i,
                      "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()
                      if req.encoding_format == "base64" else v.tolist()} for i, v in enumerate(vectors)]}


def media_items(inputs_b64: list[str], inputs: Inputs) -> list:
    """Images or WAV files sent as base64 (or `data:...;base64,` URLs), decoded and checked."""
    items = []
    for i, text in enumerate(inputs_b64):
        try:
            data = base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text, validate=True)
            items += inputs.read([data])
        except binascii.Error:
            raise ApiError(400, f"input[{i}] is not base64 (an {inputs.kind} model takes base64-encoded files)",
                           "invalid_request_error", "input") from None
        except BigModelError as e:
            raise ApiError(400, f"input[{i}]: {e}".replace("the uploaded data: ", ""), "invalid_request_error",
                           "input") from None
    return items


@router.post("/v1/classify", responses=ERRORS)
def classify(req: TextsRequest, request: Request) -> dict:
    """Label and probabilities per text (a regression head gives its value). Image and audio classifiers
    take base64-encoded files; a speech recognizer (CTC) answers with transcripts."""
    svc = service(request)
    s = svc.served
    classifier = svc.classifier()
    head = classifier.head_config
    if classifier.config.frontend == "tokens":
        ids, tokens = svc.inputs_of(req)
        inputs = TextInputs(s.tok, classifier.config.block_size)
    else:
        inputs = inputs_for(classifier.config, None)
        ids, tokens = media_items(req.texts(), inputs), 0
    if head.task == "ctc":
        rows = [{"transcript": t} for t in transcribe(classifier, ids, inputs)]
        return {"object": "list", "model": s.model_id, "data": [{"object": "transcription", "index": i, **row}
                                                               for i, row in enumerate(rows)]}
    scores = predict_scores(classifier, ids, inputs, head.n_outputs)
    if head.task == "classify":
        rows = [{"label": head.labels[int(p.argmax())],
                 "probabilities": dict(zip(head.labels, p.tolist(), strict=True))} for p in scores.softmax(-1)]
    else:
        rows = [{"value": float(v[0])} for v in scores]
    return {"object": "list", "model": s.model_id, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "data": [{"object": "classification", "index": i, **row} for i, row in enumerate(rows)]}


@router.post("/v1/explain", responses=ERRORS)
def explain(req: ExplainRequest, request: Request) -> dict:
    """Why the classifier decided: what `bigmodel explain` writes to explanation.json."""
    svc = service(request)
    s = svc.served
    classifier = svc.classifier()
    labels = classifier.head_config.labels
    if req.target is not None and req.target not in labels:
        raise ApiError(400, f"target: not a label of this model ({', '.join(labels)})", "invalid_request_error",
                       "target")
    tokens = len(svc.tokens_of(req.input, "input", special=True))
    if tokens > MAX_EXPLAIN_TOKENS:
        raise ApiError(413, f"input is {tokens} tokens; explanations take at most {MAX_EXPLAIN_TOKENS}",
                       "invalid_request_error", "input")
    try:
        from bigmodel.infer.explain import explain_classifier
    except ImportError:
        raise ApiError(400, "this server has no Captum: pip install 'bigmodel[explain]'", "invalid_request_error",
                       "model") from None
    svc.metrics.count_tokens("prompt", tokens)
    explanation = explain_classifier(classifier, s.tok, req.input, req.target, steps=req.steps)
    return {"object": "explanation", "model": s.model_id, **explanation.to_dict()}


def route_label(request: Request) -> str:
    """The route template a request matched (`/v1/completions`), so probes of random paths add no labels."""
    for route in [*router.routes, *request.app.router.routes]:  # ours, then FastAPI's own (/docs, /openapi.json)
        if hasattr(route, "path") and route.matches(request.scope)[0] != Match.NONE:
            return route.path
    return "unmatched"


async def authenticate_and_measure(request: Request, call_next):
    started = time.perf_counter()
    svc = service(request)
    response = None
    if request.url.path.startswith("/v1/"):
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if svc.api_key and not secrets.compare_digest(given, svc.api_key):
            response = JSONResponse(error_body("invalid or missing API key", "authentication_error"), 401)
        elif reason := svc.unavailable():
            response = JSONResponse(error_body(reason, "service_unavailable"), 503, headers={"Retry-After": "1"})
    if response is None:
        response = await call_next(request)
    svc.metrics.observe(route_label(request), response.status_code, time.perf_counter() - started)
    return response


def add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's JSON shape; invalid fields are 400s, as OpenAI answers them."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(error_body(e.message, e.kind, e.param), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(e.detail), kind), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:  # a bug: still OpenAI's shape, and logged
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=e)
        return JSONResponse(error_body(f"internal error: {type(e).__name__}", "server_error"), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return JSONResponse(error_body(f"{field or 'body'}: {first.get('msg', 'invalid request')}",
                                       "invalid_request_error", field), status_code=400)


def openapi_schema(app: FastAPI, max_new_tokens: int) -> dict:
    """FastAPI's schema without its 422 answers (invalid fields get OpenAI's 400 here), stating this
    server's `max_tokens` limit."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for operation in (op for path in schema["paths"].values() for op in path.values()):
            operation["responses"].pop("422", None)
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for body in components.values():
            if "max_tokens" in body.get("properties", {}):
                for option in body["properties"]["max_tokens"].get("anyOf", []):
                    if option.get("type") == "integer":
                        option["maximum"] = max_new_tokens
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(cfg: ServeConfig) -> FastAPI:
    """The app; the checkpoint loads in a background thread once the server starts."""
    locate(cfg.ckpt)  # a wrong path fails now, in one line, not after the port opens
    pick_device(cfg.device)
    svc = Service(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=svc.load, name="bigmodel-load", daemon=True).start()
        yield
        svc.draining = True
        if svc.loaded and svc.loaded.engine:
            await asyncio.to_thread(svc.loaded.engine.close)

    app = FastAPI(title="bigmodel", version="0.1.0", lifespan=lifespan)
    app.state.service = svc
    app.include_router(router)
    app.middleware("http")(authenticate_and_measure)
    add_error_handlers(app)
    app.openapi = lambda: openapi_schema(app, cfg.max_new_tokens_limit)
    return app


class DrainingServer(uvicorn.Server):
    """uvicorn, but a signal first marks the service as draining (new requests get 503), and a drained
    server exits 0: uvicorn's own `capture_signals` re-raises the signal once it has shut down."""

    def __init__(self, config: uvicorn.Config, svc: Service) -> None:
        super().__init__(config)
        self.svc = svc

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.svc.draining = True
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(app: FastAPI, cfg: ServeConfig) -> None:
    """Run uvicorn until a signal (then admitted requests finish, up to 30 s) or a failed load."""
    svc: Service = app.state.service
    server = DrainingServer(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                                           timeout_graceful_shutdown=30), svc)

    async def watch_loading() -> None:
        while svc.loaded is None and svc.failure is None:
            await asyncio.sleep(0.05)
        if svc.failure:
            server.should_exit = True

    async def main() -> None:
        watcher = asyncio.ensure_future(watch_loading())
        await server.serve()
        watcher.cancel()

    asyncio.run(main())
