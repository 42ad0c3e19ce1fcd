"""The routes of encoders and fine-tuned heads: `/v1/embeddings`, `/v1/classify` (labels, values or
transcripts; images and audio as base64) and `/v1/explain`. Each reads its input on a worker thread and
runs the model on the model's owner (`owner.py`), between the engine's decoding steps."""

from __future__ import annotations

import asyncio
import base64
import binascii
import importlib.util

from fastapi import APIRouter, Request

from bigmodel.data.collate import pad_id
from bigmodel.data.inputs import Inputs, TextInputs, inputs_for
from bigmodel.errors import BigModelError
from bigmodel.infer.classify import predict_scores, score_records
from bigmodel.infer.ctc import transcribe
from bigmodel.infer.embed import embed_ids
from bigmodel.serve.schema import ERRORS, MAX_EXPLAIN_TOKENS, ApiError, EmbeddingRequest, ExplainRequest, TextsRequest
from bigmodel.serve.service import service

router = APIRouter()


@router.post("/v1/embeddings", responses=ERRORS)
async def embeddings(req: EmbeddingRequest, request: Request) -> dict:
    """Mean-pooled, unit-length vectors of the last hidden states (as sentence-transformers)."""
    svc = service(request)
    s = svc.served
    ids, tokens = await asyncio.to_thread(svc.inputs_of, req)
    vectors = await s.owner.run(embed_ids, s.model, ids, pad_id(s.tok))
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
async def classify(req: TextsRequest, request: Request) -> dict:
    """Label and probabilities per text (a regression head gives its value). Image and audio classifiers
    take base64-encoded files; a speech recognizer (CTC) answers with transcripts."""
    svc = service(request)
    s = svc.served
    classifier = svc.classifier()
    head = classifier.head_config
    if classifier.config.frontend == "tokens":
        ids, tokens = await asyncio.to_thread(svc.inputs_of, req)
        inputs = TextInputs(s.tok, classifier.config.block_size)
    else:
        inputs = inputs_for(classifier.config, None)
        ids, tokens = await asyncio.to_thread(media_items, req.texts(), inputs), 0
    if head.task == "ctc":
        rows = [{"transcript": t} for t in await s.owner.run(transcribe, classifier, ids, inputs)]
        return {"object": "list", "model": s.model_id, "data": [{"object": "transcription", "index": i, **row}
                                                               for i, row in enumerate(rows)]}
    rows = score_records(head, await s.owner.run(predict_scores, classifier, ids, inputs, head.n_outputs))
    return {"object": "list", "model": s.model_id, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "data": [{"object": "classification", "index": i, **row} for i, row in enumerate(rows)]}


@router.post("/v1/explain", responses=ERRORS)
async def explain(req: ExplainRequest, request: Request) -> dict:
    """Why the classifier decided: what `bigmodel explain` writes to explanation.json."""
    svc = service(request)
    s = svc.served
    classifier = svc.classifier()
    labels = classifier.head_config.labels
    if req.target is not None and req.target not in labels:
        raise ApiError(400, f"target: not a label of this model ({', '.join(labels)})", "invalid_request_error",
                       "target")
    tokens = len(await asyncio.to_thread(svc.tokens_of, req.input, "input", True))
    if tokens > MAX_EXPLAIN_TOKENS:
        raise ApiError(413, f"input is {tokens} tokens; explanations take at most {MAX_EXPLAIN_TOKENS}",
                       "invalid_request_error", "input")
    if importlib.util.find_spec("captum") is None:
        raise ApiError(400, "this server has no Captum: pip install 'bigmodel[explain]'", "invalid_request_error",
                       "model")
    svc.metrics.count_tokens("prompt", tokens)
    from bigmodel.infer.explain import explain_classifier  # Captum, an optional extra

    explanation = await s.owner.run(lambda: explain_classifier(classifier, s.tok, req.input, req.target,
                                                               steps=req.steps))
    return {"object": "explanation", "model": s.model_id, **explanation.to_dict()}
