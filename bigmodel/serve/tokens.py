"""The tokenizer over HTTP, in the shapes vLLM serves and lm-evaluation-harness's remote tokenizer asks
for: `POST /tokenize`, `POST /detokenize` and `GET /tokenizer_info` (special tokens, chat template)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from bigmodel.data.tokenizer import EOT
from bigmodel.serve.schema import ERRORS, DetokenizeRequest, TokenizeRequest
from bigmodel.serve.service import service

router = APIRouter()


@router.post("/tokenize", responses=ERRORS)
def tokenize(req: TokenizeRequest, request: Request) -> dict:
    """A prompt's ids (special tokens added if the tokenizer adds any), or a chat's through its template."""
    svc = service(request)
    text = req.prompt if req.messages is None else svc.prompt_of(req.messages)
    ids = svc.tokens_of(text, "prompt", special=req.add_special_tokens) if text else []
    return {"tokens": ids, "count": len(ids), "max_model_len": svc.served.model.config.block_size}


@router.post("/detokenize", responses=ERRORS)
def detokenize(req: DetokenizeRequest, request: Request) -> dict:
    svc = service(request)
    return {"prompt": svc.served.tok.decode(svc.tokens_of(req.tokens, "tokens", special=True))}


@router.get("/tokenizer_info", responses=ERRORS)
def tokenizer_info(request: Request) -> dict:
    svc = service(request)
    s = svc.served
    svc.tokens_of([0], "tokenizer")  # an image or audio model has no tokenizer: 400
    named = {key: value.get("content") if isinstance(value, dict) else value
             for key, value in s.special.items() if key in ("bos_token", "eos_token", "pad_token", "unk_token")}
    if named.get("eos_token") is None and s.tok.token_to_id(EOT) is not None:
        named["eos_token"] = EOT  # bigmodel's own end of text
    return {**named, "chat_template": s.special.get("chat_template"), "model_max_length": s.model.config.block_size,
            "vocab_size": s.tok.get_vocab_size()}
