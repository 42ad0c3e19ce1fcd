"""An OpenAI-compatible HTTP server for a bigmodel checkpoint (FastAPI + uvicorn): the app's frame.

Routes: `POST /v1/completions`, `POST /v1/chat/completions` (both with `stream`; `completions.py`),
`POST /v1/embeddings`, `POST /v1/classify`, `POST /v1/explain` (`encoders.py`), `POST /tokenize`,
`POST /detokenize`, `GET /tokenizer_info` (`tokens.py`), `POST /v1/load_lora_adapter` and
`/v1/unload_lora_adapter` (`adapters.py`), `GET /v1/models` (the base, then its adapters),
`POST /v1/audio/transcriptions` and `/v1/audio/translations` (`speech.py`), `GET /health`,
`GET /metrics` and the playground (here). This file holds what every route shares:
the key check and metrics middleware, OpenAI-shaped errors (`schema.py`), the OpenAPI schema and the
server's lifecycle: the model loads in the background after the port opens (503 until then), and
SIGTERM lets every admitted request finish before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from bigmodel.config import ServeConfig
from bigmodel.device import pick_device
from bigmodel.model.checkpoint import locate
from bigmodel.serve import adapters, completions, encoders, speech, tokens
from bigmodel.serve.schema import ERRORS, ApiError, error_body
from bigmodel.serve.service import Service, service

PLAYGROUND = Path(__file__).with_name("static") / "playground.html"
log = logging.getLogger("bigmodel.serve")
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
    base = {"id": served.model_id, "object": "model", "created": 0, "owned_by": "bigmodel",
            "capabilities": served.capabilities()}
    return {"object": "list", "data": [base, *({**base, "id": f"{served.model_id}:{name}", "parent": served.model_id,
                                                 "root": adapter.base} for name, adapter in served.adapters.items())]}



ROUTERS = (router, completions.router, encoders.router, speech.router, tokens.router, adapters.router)
GUARDED = ("/v1/", "/tokenize", "/detokenize", "/tokenizer_info")  # what the key protects


def route_label(request: Request) -> str:
    """The route template a request matched (`/v1/completions`), so probes of random paths add no labels."""
    routes = [*(route for routes in ROUTERS for route in routes.routes), *request.app.router.routes]
    for route in routes:  # ours, then FastAPI's own (/docs, /openapi.json)
        if hasattr(route, "path") and route.matches(request.scope)[0] != Match.NONE:
            return route.path
    return "unmatched"


async def authenticate_and_measure(request: Request, call_next):
    started = time.perf_counter()
    svc = service(request)
    response = None
    if request.url.path.startswith(GUARDED):
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
        if svc.loaded:
            await asyncio.to_thread(svc.loaded.owner.close)

    app = routes_app(cfg.max_new_tokens_limit, lifespan)
    app.state.service = svc
    app.middleware("http")(authenticate_and_measure)
    return app


def routes_app(max_new_tokens: int = ServeConfig.max_new_tokens_limit, lifespan: Any = None) -> FastAPI:
    """Every route, its error answers and its schema, with no model behind them: what `create_app`
    serves, and what the documentation's HTTP reference is generated from."""
    app = FastAPI(title="bigmodel", version="0.1.0", lifespan=lifespan)
    for routes in ROUTERS:
        app.include_router(routes)
    add_error_handlers(app)
    app.openapi = lambda: openapi_schema(app, max_new_tokens)
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
