"""Whisper behind `bigmodel serve`: OpenAI's audio routes answered to the real `openai` client, concurrent
uploads batched on the model's owner with the answers each would get alone, and bad uploads refused in
one line naming the field."""

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from bigmodel.infer.whisper import WhisperVocab, read_speech, transcribe, whisper_rules
from bigmodel.model.checkpoint import load_checkpoint
from bigmodel.serve.transcriber import Job, Options, SpeechQueue

from .test_serve import start_server
from .test_whisper import SPEECH, TEMPERATURES_GREEDY

NAMES = ["61-70968-0000.flac", "mfa_whatscalled.flac", "common_voice_en_22058264.mp3"]


@pytest.fixture(scope="module")
def server():
    proc, base = start_server("whisper-tiny.en", "--api-key-env", "BIGMODEL_TEST_KEY", "--dtype", "fp32")
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="s3cret", max_retries=0)


def test_the_openai_client_transcribes_in_every_format(server):
    c = client(server)
    with open(SPEECH / NAMES[0], "rb") as f:
        verbose = c.audio.transcriptions.create(model="whisper-tiny.en", file=f, response_format="verbose_json",
                                                timestamp_granularities=["segment"])
    assert verbose.text.startswith("He began a confused complaint against the wizard")
    assert verbose.language == "en" and verbose.duration == pytest.approx(4.905, abs=0.01)
    assert verbose.segments[0].start == 0.0 and verbose.segments[-1].end <= verbose.duration
    with open(SPEECH / NAMES[0], "rb") as f:
        plain = c.audio.transcriptions.create(model="whisper-tiny.en", file=f)
    assert plain.text == verbose.text
    for kind, head in (("srt", "1\n00:00:00,000 --> "), ("vtt", "WEBVTT\n\n00:00:00.000 --> "), ("text", "He began")):
        with open(SPEECH / NAMES[0], "rb") as f:
            said = c.audio.transcriptions.create(model="whisper-tiny.en", file=f, response_format=kind)
        assert said.startswith(head), said


def test_concurrent_uploads_get_what_each_would_alone(server):
    c = client(server)

    def ask(name):
        with open(SPEECH / name, "rb") as f:
            return c.audio.transcriptions.create(model="whisper-tiny.en", file=f, response_format="verbose_json")

    alone = [ask(name) for name in NAMES]
    with ThreadPoolExecutor(len(NAMES) * 2) as pool:
        together = list(pool.map(ask, NAMES * 2))
    for i, said in enumerate(together):
        assert said.text == alone[i % len(NAMES)].text
        assert [s.start for s in said.segments] == [s.start for s in alone[i % len(NAMES)].segments]


def test_waiting_recordings_decode_in_one_batch():
    """The owner's one call decodes every recording waiting, each as it would be decoded alone."""
    model, tok, folder = load_checkpoint("whisper-tiny.en")
    vocab = WhisperVocab.of(tok, whisper_rules(folder), model.config.vocab_size)
    queue = SpeechQueue(model, tok, vocab, max_batch=8)
    waves = [read_speech(SPEECH / name) for name in NAMES[:3]]
    jobs = [Job(wave, Options(None, "transcribe", "", TEMPERATURES_GREEDY)) for wave in waves]
    for job in jobs:
        queue.add(job)
    queue.run()
    assert queue.batches == [3] and not queue.waiting
    for job, wave in zip(jobs, waves, strict=True):
        [alone] = transcribe(model, tok, vocab, [wave], temperatures=TEMPERATURES_GREEDY)
        assert job.result["text"] == alone["text"]


def test_bad_uploads_are_one_line_naming_the_field(server, tmp_path):
    headers = {"Authorization": "Bearer s3cret"}
    url = f"{server}/v1/audio/transcriptions"

    def error(**kwargs):
        r = httpx.post(url, headers=headers, timeout=60, **kwargs)
        assert r.status_code == 400, r.text
        return r.json()["error"]

    assert error(data={"model": "whisper-tiny.en"})["param"] == "file"
    said = error(files={"file": ("notes.wav", b"not audio at all")})
    assert said["param"] == "file" and "notes.wav" in said["message"] and "not audio" in said["message"]
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(16000, np.float32), 16000, format="WAV")
    assert "silent" in error(files={"file": ("quiet.wav", buffer.getvalue())})["message"]
    wav = (SPEECH / NAMES[2]).read_bytes()
    assert error(files={"file": ("a.mp3", wav)}, data={"response_format": "xml"})["param"] == "response_format"
    assert error(files={"file": ("a.mp3", wav)}, data={"language": "xx"})["param"] == "language"
    assert "English-only" in error(files={"file": ("a.mp3", wav)}, data={"language": "de"})["message"]
    r = httpx.post(f"{server}/v1/audio/translations", headers=headers, files={"file": ("a.mp3", wav)}, timeout=60)
    assert r.status_code == 400 and "English-only" in r.json()["error"]["message"]
    assert httpx.post(url, files={"file": ("a.mp3", wav)}, timeout=60).status_code == 401
    r = httpx.post(f"{server}/v1/completions", headers=headers, json={"prompt": "hello"}, timeout=60)
    assert r.status_code == 400 and "/v1/audio/transcriptions" in r.json()["error"]["message"]
