"""What a served Whisper model decodes: recordings waiting for the model's owner (`owner.py`), which one
call decodes together. The routes (`speech.py`) add a request's recording and ask the owner to run the
queue; the owner runs one call at a time, so recordings that arrive while it decodes wait together and
the next call decodes all of them in one batch (those asking for the same options). A call that finds
its request already done returns at once."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from bigmodel.infer.whisper import TEMPERATURES, WhisperVocab, transcribe
from bigmodel.model.transformer import Transformer


@dataclass(frozen=True)
class Options:
    """What a request chooses; requests with the same options decode together."""

    language: str | None
    task: str
    initial_prompt: str
    temperatures: tuple[float, ...]


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
                                     temperatures=options.temperatures, batch_size=self.max_batch)
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
