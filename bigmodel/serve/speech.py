"""OpenAI's speech routes over a Whisper checkpoint: `POST /v1/audio/transcriptions` and
`/v1/audio/translations` (multipart upload; `response_format` json, text, srt, vtt or verbose_json).

An upload is decoded and resampled on a worker thread; its recording then waits in the `SpeechQueue`
(`transcriber.py`), and the route asks the model's owner to decode what is waiting: recordings that
arrive while the owner is busy decode together in one batch.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from bigmodel.data.media import source_name
from bigmodel.errors import BigModelError
from bigmodel.infer.whisper import prompt, read_speech, subtitles
from bigmodel.serve.schema import ERRORS, ApiError
from bigmodel.serve.service import service
from bigmodel.serve.transcriber import Job, Options, temperatures_from

router = APIRouter()
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


def bad(message: str, param: str) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param)


async def speech_route(request: Request, task: str, file: UploadFile | None, language: str | None,
                       initial_prompt: str, response_format: str, temperature: float,
                       granularities: list[str] | None) -> Response:
    """Check the request, read the upload, decode it through the owner, answer in the asked format."""
    s = service(request).served
    if s.speech is None:
        raise bad(f"model {s.model_id} does not read audio; /v1/audio serves Whisper checkpoints", "model")
    if file is None:
        raise bad("file: the multipart upload has no file field (the recording to transcribe)", "file")
    if response_format not in FORMATS:
        raise bad(f"response_format: one of {', '.join(FORMATS)}", "response_format")
    if not 0 <= temperature <= 1:
        raise bad("temperature: between 0 and 1", "temperature")
    if "word" in (granularities or []):
        raise bad("timestamp_granularities: word timestamps are not supported; segment timestamps are",
                  "timestamp_granularities")
    try:
        prompt(s.speech.vocab, language or ("en" if s.speech.vocab.languages else None), task)
    except BigModelError as e:
        raise bad(str(e).replace("--language", "language").replace(" --task", ", task"),
                  "language" if "language" in str(e) else "model") from None
    data = await file.read()
    try:
        wave = await asyncio.to_thread(read_speech, data)
    except BigModelError as e:
        reason = str(e).removeprefix(f"{source_name(data)}: ")
        raise bad(f"file {file.filename or '(unnamed)'}: {reason}", "file") from None
    job = Job(wave, Options(language or None, task, initial_prompt, temperatures_from(temperature)))
    s.speech.add(job)
    await s.owner.run(s.speech.run)  # ours, or an earlier call that took it with the others waiting
    if job.error is not None:
        raise job.error
    result = job.result
    if response_format == "text":
        return PlainTextResponse(result["text"] + "\n")
    if response_format in ("srt", "vtt"):
        return PlainTextResponse(subtitles(result["segments"], response_format))
    usage = {"type": "duration", "seconds": result["duration"]}
    if response_format == "json":
        return JSONResponse({"text": result["text"], "usage": usage})
    return JSONResponse({"task": task, "language": result["language"], "duration": result["duration"],
                         "text": result["text"], "segments": result["segments"], "usage": usage})


Upload = Annotated[UploadFile | None, File(description="the recording: WAV, FLAC, MP3, Ogg/Opus, any rate")]
Text = Annotated[str | None, Form()]


@router.post("/v1/audio/transcriptions", responses=ERRORS)
async def transcriptions(request: Request, file: Upload = None, model: Text = None, language: Text = None,
                         prompt: Annotated[str, Form()] = "", response_format: Annotated[str, Form()] = "json",
                         temperature: Annotated[float, Form()] = 0.0,
                         timestamp_granularities: Annotated[list[str] | None,
                                                            Form(alias="timestamp_granularities[]")] = None
                         ) -> Response:
    """Speech to text in its own language (OpenAI's `audio.transcriptions.create`)."""
    return await speech_route(request, "transcribe", file, language, prompt, response_format, temperature,
                              timestamp_granularities)


@router.post("/v1/audio/translations", responses=ERRORS)
async def translations(request: Request, file: Upload = None, model: Text = None,
                       prompt: Annotated[str, Form()] = "", response_format: Annotated[str, Form()] = "json",
                       temperature: Annotated[float, Form()] = 0.0) -> Response:
    """Speech in any language to English text (OpenAI's `audio.translations.create`)."""
    return await speech_route(request, "translate", file, None, prompt, response_format, temperature, None)
