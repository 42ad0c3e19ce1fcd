"""`/v1/completions` and `/v1/chat/completions`: thin handlers that queue each (prompt, sample) on
the engine and hand its tokens back as text, whole or as server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from tokenizers import Tokenizer

from bigmodel.config import GenerateConfig
from bigmodel.data.tokenizer import StopText, StreamDecoder
from bigmodel.serve.engine import QueueFull, Sequence, ShuttingDown, TooLarge
from bigmodel.serve.schema import STREAMED, ApiError, ChatRequest, CompletionRequest, Sampling, error_body
from bigmodel.serve.service import Service, service

router = APIRouter()


@dataclass
class Choice:
    """One continuation: its engine sequence and the tokens handed over to the event loop."""

    seq: Sequence
    tokens: asyncio.Queue  # filled from the engine thread through the event loop
    used: int = 0  # tokens turned into text (what `usage` counts)

    async def pieces(self, tok: Tokenizer, stop_ids: frozenset[int], stops: list[str],
                     ) -> AsyncIterator[tuple[str, str | None]]:
        """(text, finish_reason) pieces; the reason comes with the last. Leaving early frees the row."""
        decoder, text = StreamDecoder(tok), StopText(stops)
        try:
            while (token := await self.tokens.get()) is not None:
                self.used += 1
                if token in stop_ids:
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


def start(svc: Service, prompts: list[str], req: Sampling) -> list[Choice]:
    """Tokenize, then queue every (prompt, sample) as one sequence on the engine."""
    engine = svc.generator()
    limit = svc.cfg.max_new_tokens_limit
    if req.max_tokens is not None and req.max_tokens > limit:
        raise ApiError(400, f"max_tokens: at most {limit} on this server", "invalid_request_error", "max_tokens")
    ids_list = [svc.tokens_of(p, "prompt") for p in prompts]
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
    svc.metrics.count_tokens("prompt", sum(len(i) for i in ids_list))  # as `usage` counts them
    return choices

async def complete(svc: Service, prompts: list[str], req: Sampling, kind: str) -> dict:
    choices = start(svc, prompts, req)
    s = svc.served

    async def collect(choice: Choice) -> tuple[str, str | None]:
        parts = [part async for part in choice.pieces(s.tok, s.engine.stop_ids, req.stops())]
        return "".join(p for p, _ in parts), parts[-1][1]

    try:
        results = await asyncio.gather(*(collect(c) for c in choices))
    except RuntimeError as e:
        raise ApiError(500, str(e), "server_error") from None
    finally:
        for c in choices:
            c.seq.cancel()
    usage = usage_of(choices, req.n)
    svc.metrics.count_tokens("completion", usage["completion_tokens"])
    return {"id": completion_id(kind), "object": kind, "created": int(time.time()), "model": s.model_id,
            "choices": [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                        if kind == "text_completion" else
                        {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
                        for i, (text, reason) in enumerate(results)], "usage": usage}

def stream(svc: Service, prompts: list[str], req: Sampling, kind: str) -> StreamingResponse:
    """Server-sent events, one choice after another (index = prompt × n + sample); all generate at once."""
    choices = start(svc, prompts, req)
    s = svc.served
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
                async for piece, reason in choice.pieces(s.tok, s.engine.stop_ids, req.stops()):
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
            svc.metrics.count_tokens("completion", sum(c.used for c in choices))

    return StreamingResponse(events(), media_type="text/event-stream")

def completion_id(kind: str) -> str:
    """OpenAI's id prefixes: `cmpl-` for text completions, `chatcmpl-` for chat (streamed or not)."""
    return f"{'cmpl' if kind.startswith('text_completion') else 'chatcmpl'}-{uuid.uuid4().hex}"


@router.post("/v1/completions", responses=STREAMED)
async def completions(req: CompletionRequest, request: Request):
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if req.stream:
        return stream(service(request), prompts, req, "text_completion")
    return await complete(service(request), prompts, req, "text_completion")


@router.post("/v1/chat/completions", responses=STREAMED)
async def chat(req: ChatRequest, request: Request):
    prompt = service(request).prompt_of(req.messages)
    if req.stream:
        return stream(service(request), [prompt], req, "chat.completion.chunk")
    return await complete(service(request), [prompt], req, "chat.completion")
