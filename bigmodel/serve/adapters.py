"""LoRA adapters loaded and unloaded while the server runs, with vLLM's routes and fields, so scripts
written for it work here. Only with `--runtime-lora`: the paths are folders on the server's machine."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from bigmodel.errors import BigModelError
from bigmodel.model.checkpoint import Storage
from bigmodel.serve.schema import ERRORS, ApiError
from bigmodel.serve.service import Service, load_adapter, service

router = APIRouter()


class LoadAdapter(BaseModel):
    lora_name: str = Field(min_length=1, pattern=r"^[^:]+$")
    lora_path: str = Field(min_length=1)


class UnloadAdapter(BaseModel):
    lora_name: str = Field(min_length=1)


def allowed(svc: Service) -> None:
    if not svc.cfg.runtime_lora:
        raise ApiError(400, "adapters load at start-up here (--lora-modules); start the server with --runtime-lora "
                       "to load them through this route", "invalid_request_error")


@router.post("/v1/load_lora_adapter", responses={400: ERRORS[400], 401: ERRORS[401]})
async def load(req: LoadAdapter, request: Request) -> dict:
    svc = service(request)
    allowed(svc)
    s = svc.served
    if req.lora_name in s.adapters or req.lora_name == s.model_id:
        raise ApiError(400, f"lora_name: {req.lora_name!r} is already served; unload it first",
                       "invalid_request_error", "lora_name")
    try:  # reading the file takes a while: off the event loop
        adapter = await asyncio.to_thread(load_adapter, req.lora_name, req.lora_path, s.model, Storage.of(svc.cfg))
    except BigModelError as e:
        raise ApiError(400, f"lora_path: {e}", "invalid_request_error", "lora_path") from None
    s.adapters[req.lora_name] = adapter
    return {"status": "loaded", "lora_name": req.lora_name}


@router.post("/v1/unload_lora_adapter", responses={400: ERRORS[400], 401: ERRORS[401]})
def unload(req: UnloadAdapter, request: Request) -> dict:
    """Requests already running with it finish with it; new ones cannot ask for it."""
    svc = service(request)
    allowed(svc)
    if svc.served.adapters.pop(req.lora_name, None) is None:
        raise ApiError(400, f"lora_name: no adapter {req.lora_name!r} here", "invalid_request_error", "lora_name")
    return {"status": "unloaded", "lora_name": req.lora_name}
