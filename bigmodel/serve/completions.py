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
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from tokenizers import Tokenizer

from bigmodel.config import GenerateConfig
from bigmodel.data.tokenizer import StopText, StreamDecoder
from bigmodel.infer.decoder import Penalties
from bigmodel.serve.engine import QueueFull, Sequence, ShuttingDown, Token, TooLarge
from bigmodel.serve.grammar import DeadEnd
from bigmodel.serve.metrics import Metrics
from bigmodel.serve.schema import STREAMED, ApiError, ChatRequest, CompletionRequest, Sampling, error_body
from bigmodel.serve.service import Service, service

router = APIRouter()


@dataclass
class Choice:
    """One continuation: its engine sequence, the tokens handed over to the event loop, and those
    turned into text so far (what `usage` counts, and what log-probabilities are reported for)."""

    seq: Sequence
    tokens: asyncio.Queue  # filled from the engine thread through the event loop
    metrics: Metrics
    used: list[Token] = field(default_factory=list)
    reported: int = 0  # of `used`, already sent in a stream's chunks
    last: float = field(default_factory=time.perf_counter)  # when the request came, then the latest token

    def arrived(self, token: Token) -> None:
        now = time.perf_counter()
        (self.metrics.token_gap if self.used else self.metrics.first_token).observe(now - self.last)
        self.last = now
        self.used.append(token)

    async def pieces(self, tok: Tokenizer, stop_ids: frozenset[int], stops: list[str],
                     ) -> AsyncIterator[tuple[str, str | None]]:
        """(text, finish_reason) pieces; the reason comes with the last. Leaving early frees the row."""
        decoder, text = StreamDecoder(tok), StopText(stops)
        try:
            while (token := await self.tokens.get()) is not None:
                self.arrived(token)
                if token.id in stop_ids:
                    yield text.flush(), "stop"
                    return
                piece, hit = text.push(decoder.push(token.id))
                if hit:
                    yield piece, "stop"
                    return
                if piece:
                    yield piece, None
            if self.seq.error:
                raise (DeadEnd if self.seq.dead_end else RuntimeError)(self.seq.error)
            piece, hit = text.push(decoder.flush())
            yield piece + ("" if hit else text.flush()), "stop" if hit else "length"
        finally:
            self.seq.cancel()

    def unreported(self) -> list[Token]:
        """The tokens used since the last call (a stream's chunk carries their log-probabilities)."""
        tokens, self.reported = self.used[self.reported:], len(self.used)
        return tokens


def usage_of(choices: list[Choice], n: int) -> dict:
    prompt = sum(len(c.seq.prompt) for c in choices[::n])  # each prompt counted once, not per sample
    completion = sum(len(c.used) for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def json_text(body: dict) -> str:
    return json.dumps(body, ensure_ascii=False)


@dataclass
class Ask:
    """What a request wants besides text: log-probabilities (`alternatives` per token; None: none, and
    where in the request that was asked), for completions its prompts echoed in front, and the field
    that asked for a grammar (named when the grammar proves impossible mid-way)."""

    alternatives: int | None = None
    param: str = "logprobs"
    echo: bool = False
    grammar_param: str = "response_format"  # set by `start` to the field that asked for a grammar


def piece_of(tok: Tokenizer, token: int) -> str:
    return tok.decode([token], skip_special_tokens=False)


def completion_logprobs(tok: Tokenizer, tokens: list[Token], offset: int) -> dict:
    """OpenAI's completions `logprobs`: each token's text, log-probability, likeliest alternatives and
    where its text starts in the choice's text (from `offset`)."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    decoder = StreamDecoder(tok)
    for t in tokens:
        out["tokens"].append(piece_of(tok, t.id))
        out["token_logprobs"].append(t.logprob)
        out["top_logprobs"].append(None if t.logprob is None else {piece_of(tok, i): lp for i, lp in t.top})
        out["text_offset"].append(offset)
        offset += len(decoder.push(t.id))
    return out


def chat_logprobs(tok: Tokenizer, tokens: list[Token]) -> dict:
    """OpenAI's chat `logprobs`: `content`, one entry per token with its UTF-8 bytes and alternatives."""
    def entry(token: int, logprob: float | None) -> dict:
        text = piece_of(tok, token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
    return {"content": [{**entry(t.id, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top]}
                        for t in tokens]}


def penalties_of(svc: Service, req: Sampling) -> Penalties:
    vocab = svc.served.model.config.vocab_size
    bias = []
    for key, value in (req.logit_bias or {}).items():
        if not (key.lstrip("-").isdigit() and 0 <= int(key) < vocab):
            raise ApiError(400, f"logit_bias: {key!r} is no token id of this model (0..{vocab - 1})",
                           "invalid_request_error", "logit_bias")
        bias.append((int(key), value))
    return Penalties(req.presence_penalty, req.frequency_penalty, req.repetition_penalty, tuple(bias))


async def start(svc: Service, prompts: list[list[int]], req: Sampling, ask: Ask) -> list[Choice]:
    """Queue every (prompt, sample) as one sequence on the engine (a grammar compiles off the event loop)."""
    engine = svc.generator()
    limit = svc.cfg.max_new_tokens_limit
    if req.max_tokens is not None and req.max_tokens > limit:
        raise ApiError(400, f"max_tokens: at most {limit} on this server", "invalid_request_error", "max_tokens")
    if ask.alternatives is not None and ask.alternatives > svc.cfg.max_logprobs:
        raise ApiError(400, f"{ask.param}: at most {svc.cfg.max_logprobs} on this server", "invalid_request_error",
                       ask.param)
    penalties, (grammar, ask.grammar_param) = penalties_of(svc, req), await asyncio.to_thread(svc.grammar_of, req)
    adapter = svc.adapter_of(req)
    loop = asyncio.get_running_loop()
    seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
    choices = []
    for ids in prompts:
        for _ in range(req.n):
            queue: asyncio.Queue = asyncio.Queue()

            def emit(token: Token | None, queue: asyncio.Queue = queue) -> None:
                with contextlib.suppress(RuntimeError):  # the event loop is gone: nobody listens
                    loop.call_soon_threadsafe(queue.put_nowait, token)

            cfg = GenerateConfig(max_new_tokens=req.max_tokens or min(16, limit), temperature=req.temperature,
                                 top_p=req.top_p, top_k=max(req.top_k, 0), min_p=req.min_p, seed=seed + len(choices))
            choices.append(Choice(Sequence(ids, cfg, emit, penalties, grammar, ask.alternatives, ask.echo, adapter),
                                  queue, svc.metrics))
    try:
        engine.submit([c.seq for c in choices])
    except TooLarge:  # retrying would never help: not a 429
        raise ApiError(400, f"prompts × n asks for {len(choices)} sequences; this server holds at most "
                       f"{engine.capacity} at once", "invalid_request_error", "n") from None
    except QueueFull:
        raise ApiError(429, "the queue is full; retry later", "rate_limit_error") from None
    except ShuttingDown:
        raise ApiError(503, "the server is shutting down", "service_unavailable") from None
    svc.metrics.count_tokens("prompt", sum(len(i) for i in prompts))  # as `usage` counts them
    return choices


def prompt_texts(svc: Service, prompts: list[list[int]], texts: list[str | None], ask: Ask) -> list[str]:
    """What each choice's text starts with: its prompt when echoed (as given, or decoded from ids)."""
    if not ask.echo:
        return [""] * len(prompts)
    return [t if t is not None else svc.served.tok.decode(ids) for ids, t in zip(prompts, texts, strict=True)]


def choice_logprobs(tok: Tokenizer, choice: Choice, tokens: list[Token], offset: int, echoed: str,
                    chat: bool) -> dict | None:
    """The log-probabilities of `tokens` (with the prompt's first, when echoed), as the endpoint shapes them."""
    if choice.seq.logprobs is None:
        return None
    if chat:
        return chat_logprobs(tok, tokens)
    parts = [completion_logprobs(tok, choice.seq.prompt_scores, 0)] if echoed else []
    parts.append(completion_logprobs(tok, tokens, offset))
    return {key: [v for part in parts for v in part[key]] for key in parts[0]}


async def complete(svc: Service, prompts: list[list[int]], texts: list[str | None], req: Sampling, ask: Ask,
                   kind: str) -> dict:
    choices = await start(svc, prompts, req, ask)
    s, chat = svc.served, kind == "chat.completion"
    echoed = prompt_texts(svc, prompts, texts, ask)

    async def collect(choice: Choice) -> tuple[str, str | None]:
        parts = [part async for part in choice.pieces(s.tok, s.engine.stop_ids, req.stops())]
        return "".join(p for p, _ in parts), parts[-1][1]

    try:
        results = await asyncio.gather(*(collect(c) for c in choices))
    except DeadEnd as e:
        raise ApiError(400, f"{ask.grammar_param}: {e}", "invalid_request_error", ask.grammar_param) from None
    except RuntimeError as e:
        raise ApiError(500, str(e), "server_error") from None
    finally:
        for c in choices:
            c.seq.cancel()
    usage = usage_of(choices, req.n)
    svc.metrics.count_tokens("completion", usage["completion_tokens"])
    out = []
    for i, (choice, (text, reason)) in enumerate(zip(choices, results, strict=True)):
        echo = echoed[i // req.n]
        logprobs = choice_logprobs(s.tok, choice, choice.used, len(echo), echo, chat)
        out.append({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                    "finish_reason": reason} if chat else
                   {"index": i, "text": echo + text, "finish_reason": reason, "logprobs": logprobs})
    return {"id": completion_id(kind), "object": kind, "created": int(time.time()), "model": served_as(svc, choices),
            "choices": out, "usage": usage}


def served_as(svc: Service, choices: list[Choice]) -> str:
    """The `model` a response names: the base's id, or `BASE:ADAPTER`."""
    adapter = choices[0].seq.adapter
    return f"{svc.served.model_id}:{adapter.name}" if adapter else svc.served.model_id


async def stream(svc: Service, prompts: list[list[int]], texts: list[str | None], req: Sampling, ask: Ask,
                 kind: str) -> StreamingResponse:
    """Server-sent events, one choice after another (index = prompt × n + sample); all generate at once."""
    choices = await start(svc, prompts, req, ask)
    s, chat = svc.served, kind == "chat.completion.chunk"
    ident, created, model = completion_id(kind), int(time.time()), served_as(svc, choices)
    echoed = prompt_texts(svc, prompts, texts, ask)

    def chunk(choice: dict | None, **extra: object) -> str:
        body = {"id": ident, "object": kind, "created": created, "model": model,
                "choices": [choice] if choice else [], **extra}
        return f"data: {json_text(body)}\n\n"

    async def events() -> AsyncIterator[str]:
        try:
            for index, choice in enumerate(choices):
                echo, offset = echoed[index // req.n], 0
                if chat:
                    yield chunk({"index": index, "delta": {"role": "assistant", "content": ""},
                                 "finish_reason": None})
                async for piece, reason in choice.pieces(s.tok, s.engine.stop_ids, req.stops()):
                    if echo and not offset:  # the prompt first, once its scores (set before any token) are in
                        yield chunk({"index": index, "text": echo, "finish_reason": None,
                                     "logprobs": choice_logprobs(s.tok, choice, [], 0, echo, chat)})
                        offset = len(echo)
                    logprobs = choice_logprobs(s.tok, choice, choice.unreported(), offset, "", chat)
                    offset += len(piece)
                    yield chunk({"index": index, "delta": {"content": piece} if piece else {}, "logprobs": logprobs,
                                 "finish_reason": reason} if chat else
                                {"index": index, "text": piece, "finish_reason": reason, "logprobs": logprobs})
            if req.stream_options and req.stream_options.include_usage:
                yield chunk(None, usage=usage_of(choices, req.n))
            yield "data: [DONE]\n\n"
        except DeadEnd as e:
            yield f"data: {json_text(error_body(str(e), 'invalid_request_error', ask.grammar_param))}\n\n"
        except RuntimeError as e:  # the engine failed mid-stream: say so in the stream
            yield f"data: {json_text(error_body(str(e), 'server_error'))}\n\n"
        finally:  # also when the client has gone: every row it held is freed
            for c in choices:
                c.seq.cancel()
            svc.metrics.count_tokens("completion", sum(len(c.used) for c in choices))

    return StreamingResponse(events(), media_type="text/event-stream")


def completion_id(kind: str) -> str:
    """OpenAI's id prefixes: `cmpl-` for text completions, `chatcmpl-` for chat (streamed or not)."""
    return f"{'cmpl' if kind.startswith('text_completion') else 'chatcmpl'}-{uuid.uuid4().hex}"


@router.post("/v1/completions", responses=STREAMED)
async def completions(req: CompletionRequest, request: Request):
    svc = service(request)
    texts = req.prompts()
    prompts = await asyncio.to_thread(lambda: [svc.tokens_of(p, "prompt") for p in texts])  # long prompts: a worker
    ask = Ask(req.logprobs, "logprobs", req.echo)
    strings = [p if isinstance(p, str) else None for p in texts]
    if req.stream:
        return await stream(svc, prompts, strings, req, ask, "text_completion")
    return await complete(svc, prompts, strings, req, ask, "text_completion")


@router.post("/v1/chat/completions", responses=STREAMED)
async def chat(req: ChatRequest, request: Request):
    svc = service(request)
    prompt = [await asyncio.to_thread(lambda: svc.tokens_of(svc.prompt_of(req.messages), "messages"))]
    ask = Ask((req.top_logprobs or 0) if req.logprobs else None, "top_logprobs")
    if req.stream:
        return await stream(svc, prompt, [None], req, ask, "chat.completion.chunk")
    return await complete(svc, prompt, [None], req, ask, "chat.completion")
