"""OpenAI's speech routes over a Whisper checkpoint: `POST /v1/audio/transcriptions` and
`/v1/audio/translations` (multipart upload; `response_format` json, text, srt, vtt or verbose_json).

An upload is decoded and resampled on a worker thread; its recording then waits in `SpeechQueue`, and the
route asks the model's owner to decode what is waiting. The owner runs one call at a time, so requests
that arrive while it decodes wait together, and the next call decodes all of them in one batch (those
asking for the same options); a call that finds its request already done returns at once.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from tokenizers import Tokenizer

from bigmodel.errors import BigModelError
from bigmodel.infer.whisper import TEMPERATURES, WhisperVocab, prompt, read_speech, subtitles, transcribe
from bigmodel.model.transformer import Transformer
from bigmodel.serve.schema import ERRORS, ApiError
from bigmodel.serve.service import service

router = APIRouter()
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


@dataclass(frozen=True)
class Options:
    """What a request chooses; requests with the same options decode together."""

    language: str | None
    task: str
    initial_prompt: str
    temperatures: tuple[float, ...]
    timestamps: bool


@dataclass
class Job:
    wave: np.ndarray
    options: Options
    result: dict | None = None
    error: BaseException | None = None


class SpeechQueue:
    """Recordings waiting for the owner; `run` (on the owner's thread) decodes every one waiting."""

    def __init__(self, model: Transformer, tok: Tokenizer, vocab: WhisperVocab, max_batch: int) -> None:
        self.model, self.tok, self.vocab, self.max_batch = model, tok, vocab, max_batch
        self.waiting: list[Job] = []
        self.lock = threading.Lock()
        self.batches: list[int] = []  # how many recordings each decode held (for tests and logs)

    def add(self, job: Job) -> None:
        with self.lock:
            self.waiting.append(job)

    def run(self) -> None:
        with self.lock:
            jobs, self.waiting = self.waiting, []
        for options in dict.fromkeys(job.options for job in jobs):
            group = [job for job in jobs if job.options == options]
            self.batches.append(len(group))
            try:
                results = transcribe(self.model, self.tok, self.vocab, [job.wave for job in group],
                                     options.language, options.task, initial_prompt=options.initial_prompt,
                                     temperatures=options.temperatures, timestamps=options.timestamps,
                                     batch_size=self.max_batch)
            except Exception as e:  # the requests' error, raised in each of them
                for job in group:
                    job.error = e
                continue
            for job, result in zip(group, results, strict=True):
                job.result = result


def temperatures_from(temperature: float) -> tuple[float, ...]:
    """OpenAI's meaning: 0 decodes greedily and samples hotter only when a try fails (Whisper's fallback);
    a higher value samples at it first, then hotter by 0.2 up to 1."""
    if temperature <= 0:
        return TEMPERATURES
    return tuple(round(t, 2) for t in np.arange(temperature, 1.0 + 1e-6, 0.2)) or (temperature,)


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
        raise bad(f"file {file.filename or ''}: {e}".replace("the uploaded data: ", "").replace(" : ", ": "),
                  "file") from None
    timestamps = response_format in ("srt", "vtt", "verbose_json")
    job = Job(wave, Options(language or None, task, initial_prompt, temperatures_from(temperature), timestamps))
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
