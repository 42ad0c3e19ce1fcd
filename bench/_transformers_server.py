"""The peer for serve_load.py: a streaming `/v1/completions` over transformers, as people write it.

Each request runs its own `model.generate` in a thread and streams through
`TextIteratorStreamer` (transformers' documented recipe); there is no batching across
requests. Only what serve_load.py sends is implemented: `prompt`, `max_tokens`,
`temperature`, `stream` with `stream_options.include_usage`.
"""

from __future__ import annotations

import argparse
import json
import threading

import torch
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast, TextIteratorStreamer


class Completion(BaseModel):
    prompt: str
    max_tokens: int = 16
    temperature: float = 1.0


def create_app(folder: str) -> FastAPI:
    model = GPT2LMHeadModel.from_pretrained(folder).eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=f"{folder}/tokenizer.json")
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/completions")
    def completions(req: Completion) -> StreamingResponse:
        ids = torch.tensor([tok.encode(req.prompt)])
        streamer = TextIteratorStreamer(tok, skip_prompt=True)
        produced: list[torch.Tensor] = []

        def run() -> None:
            with torch.inference_mode():
                produced.append(model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=req.max_tokens,
                                               do_sample=True, temperature=req.temperature, top_k=0,
                                               streamer=streamer, pad_token_id=model.config.eos_token_id))

        def events():
            worker = threading.Thread(target=run)
            worker.start()
            for text in streamer:
                if text:
                    yield f"data: {json.dumps({'choices': [{'index': 0, 'text': text}]})}\n\n"
            worker.join()
            tokens = produced[0].shape[1] - ids.shape[1]
            yield f"data: {json.dumps({'choices': [], 'usage': {'completion_tokens': tokens}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a folder from `bigmodel export --to-hf`")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(args.model), host="127.0.0.1", port=args.port, log_level="warning")
