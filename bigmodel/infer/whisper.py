"""Speech to text with Whisper: a recording at any rate, in any format soundfile reads → 16 kHz mono →
log-mel features exactly as OpenAI computes them → 30-second windows → tokens → text.

The decoder's prompt is Whisper's: start of transcript, the language (multilingual models), the task
(transcribe or translate) and, without timestamps, `<|notimestamps|>`. Decoding goes through the same
`decode` as every sequence-to-sequence model, with Whisper's rules on the logits: the tokens the model
was trained never to say (`suppress_ids`), and no blank or end as the first word.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from bigmodel.config import HOP_SECONDS, WINDOW_SECONDS, GenerateConfig
from bigmodel.data.media import SILENCE, opened, source_name
from bigmodel.errors import BigModelError
from bigmodel.infer.seq2seq import decode
from bigmodel.model.frontends import mel_filters
from bigmodel.model.transformer import Memory, Transformer
from bigmodel.model.whisper import whisper_rules_file

SAMPLE_RATE = 16000
WINDOW = 30 * SAMPLE_RATE  # samples the encoder reads at once
MAX_SECONDS = 2 * 3600  # longer recordings are refused before they are decoded into memory
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # Whisper's fallback: each try samples hotter than the last


@dataclass
class WhisperVocab:
    """The special tokens a Whisper tokenizer names, and the logit rules its CTranslate2 config gives."""

    eot: int
    sot: int
    transcribe: int
    translate: int
    no_timestamps: int
    languages: dict[str, int]  # "en" → id of <|en|>; empty for an English-only model
    suppress: list[int]  # never said
    suppress_begin: list[int]  # not as the first token

    @classmethod
    def of(cls, tok: Tokenizer, rules: dict, model_vocab: int) -> WhisperVocab:
        def sid(token: str) -> int:
            found = tok.token_to_id(token)
            if found is None:
                raise BigModelError(f"not a Whisper tokenizer: it has no {token}")
            return found

        languages = {}
        if model_vocab >= 51865:  # OpenAI's test: the multilingual models have one more token (an extra language)
            for i in range(sid("<|startoftranscript|>") + 1, sid("<|translate|>")):
                languages[tok.id_to_token(i)[2:-2]] = i
        return cls(sid("<|endoftext|>"), sid("<|startoftranscript|>"), sid("<|transcribe|>"), sid("<|translate|>"),
                   sid("<|notimestamps|>"), languages, list(rules.get("suppress_ids", [])),
                   list(rules.get("suppress_ids_begin", [])))


def read_speech(source: str | Path | bytes) -> np.ndarray:
    """A mono float32 waveform at 16 kHz from WAV, FLAC, MP3 or Ogg (Vorbis, Opus) at any sample rate."""
    import soundfile as sf
    import soxr

    name = source_name(source)
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise BigModelError(f"{name}: no such file")
    try:
        with sf.SoundFile(opened(source)) as f:
            if f.frames > MAX_SECONDS * f.samplerate:
                raise BigModelError(f"{name}: {f.frames / f.samplerate / 3600:.1f} hours is longer than the "
                                    f"{MAX_SECONDS // 3600} hours bigmodel transcribes at once; split it")
            wave, rate = f.read(dtype="float32", always_2d=True).mean(axis=1), f.samplerate
    except sf.LibsndfileError:
        raise BigModelError(f"{name}: not audio soundfile can read (WAV, FLAC, MP3, Ogg)") from None
    if not len(wave) or np.abs(wave).max() < SILENCE:
        raise BigModelError(f"{name}: silent (peak amplitude below {SILENCE})")
    if rate != SAMPLE_RATE:
        wave = soxr.resample(wave, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


def log_mel(wave: np.ndarray | torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """(n_mels, samples // 160) log-mel features as OpenAI's `log_mel_spectrogram`: 25-ms Hann windows every
    10 ms, reflect-padded at the ends and the last frame dropped, power through Slaney's mel filters, log10,
    floored 8 decades below the loudest value and scaled to about [-1, 1]."""
    n_fft, hop = round(WINDOW_SECONDS * SAMPLE_RATE), round(HOP_SECONDS * SAMPLE_RATE)
    spec = torch.stft(torch.as_tensor(wave, dtype=torch.float32), n_fft, hop, window=torch.hann_window(n_fft),
                      return_complex=True)
    mel = (mel_filters(SAMPLE_RATE, n_fft, n_mels) @ spec[..., :-1].abs().pow(2)).clamp(min=1e-10).log10()
    return (torch.maximum(mel, mel.max() - 8.0) + 4.0) / 4.0


def windows(wave: np.ndarray, n_mels: int) -> torch.Tensor:
    """The encoder's inputs for a recording of any length, (windows, n_mels, 3000): its spectrogram with 30 s
    of silence after it, as OpenAI computes it, cut into consecutive 30-s windows."""
    mel = log_mel(np.pad(wave, (0, WINDOW)), n_mels)
    frames = WINDOW // round(HOP_SECONDS * SAMPLE_RATE)
    count = max(1, math.ceil(len(wave) / WINDOW))
    return torch.stack([mel[:, i * frames:(i + 1) * frames] for i in range(count)])


def whisper_rules(folder: Path) -> dict:
    """The logit rules of a Whisper checkpoint (`whisper.json`) or CTranslate2 folder (`config.json`)."""
    text = whisper_rules_file(folder)
    if text is None:
        raise BigModelError(f"{folder}: no whisper.json; not a Whisper checkpoint")
    return json.loads(text)


def prompt(vocab: WhisperVocab, language: str | None, task: str) -> list[int]:
    """Start of transcript, then (multilingual models) the language and the task, then no timestamps."""
    if not vocab.languages:
        if task == "translate" or language not in (None, "en"):
            raise BigModelError(f"--language {language} --task {task}: this Whisper is English-only")
        return [vocab.sot, vocab.no_timestamps]
    if language not in vocab.languages:
        raise BigModelError(f"--language {language}: Whisper knows {', '.join(vocab.languages)}")
    task_id = vocab.translate if task == "translate" else vocab.transcribe
    return [vocab.sot, vocab.languages[language], task_id, vocab.no_timestamps]


@torch.no_grad()
def detect_language(model: Transformer, vocab: WhisperVocab, memory: Memory) -> list[str]:
    """The most likely language of each encoded window: the language token the decoder ranks first after
    the start of transcript."""
    logits, _ = model(torch.full((memory.mask.size(0), 1), vocab.sot), memory=memory, last_only=True)
    ids = torch.tensor(list(vocab.languages.values()))
    names = list(vocab.languages)
    return [names[i] for i in logits[:, -1, ids].argmax(-1).tolist()]


def compression_ratio(text: str) -> float:
    """How much gzip shrinks the text: above 2.4 it repeats itself (Whisper's test for a decoding stuck in a loop)."""
    raw = text.encode("utf-8")
    return len(raw) / max(1, len(zlib.compress(raw)))


@torch.no_grad()
def mean_logprob(model: Transformer, memory: Memory, prompts: list[list[int]], outputs: list[list[int]],
                 eot: int) -> list[float]:
    """Each output's mean log-probability per token, its end included, scored in one teacher-forced pass."""
    rows = [p + o + [eot] for p, o in zip(prompts, outputs, strict=True)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [eot] * (width - len(r)) for r in rows])
    logp = model(ids[:, :-1], memory=memory)[0].float().log_softmax(-1)
    taken = logp.gather(-1, ids[:, 1:, None])[..., 0]
    return [taken[i, len(p) - 1:len(r) - 1].mean().item() for i, (p, r) in enumerate(zip(prompts, rows, strict=True))]


@torch.no_grad()
def transcribe(model: Transformer, tok: Tokenizer, vocab: WhisperVocab, waves: list[np.ndarray],
               language: str | None = None, task: str = "transcribe", beams: int = 1, seed: int = 0,
               batch_size: int = 8) -> list[dict]:
    """The text, language and 30-s segments of each recording; windows of all of them decode together,
    `batch_size` at a time (a progress bar when there are several batches). A multilingual model detects
    each recording's language on its first window.
    Windows follow one another without overlap, so a word cut at a window's edge may be lost."""
    cut = [windows(wave, model.config.n_mels) for wave in waves]
    mels = torch.cat(cut).to(next(model.parameters()).dtype)
    owner = [i for i, w in enumerate(cut) for _ in range(len(w))]
    first = [owner.index(i) for i in range(len(waves))]
    languages = ["en"] * len(waves) if not vocab.languages else [language] * len(waves)
    if vocab.languages and language is None:
        languages = detect_language(model, vocab, model.encode(mels[first]))
    decoded: list[dict] = []
    starts = range(0, len(mels), batch_size)
    for start in tqdm(starts, desc="transcribe", unit=" batches", disable=len(starts) < 2, mininterval=1.0):
        rows = range(start, min(start + batch_size, len(mels)))
        decoded += decode_windows(model, tok, vocab, mels[rows.start:rows.stop],
                                  [prompt(vocab, languages[owner[r]], task) for r in rows], beams, seed)
    results = []
    for i, wave in enumerate(waves):
        segments = [{"start": 30.0 * k, "end": min(30.0 * (k + 1), len(wave) / SAMPLE_RATE), **d}
                    for k, d in enumerate(d for r, d in enumerate(decoded) if owner[r] == i)]
        results.append({"text": " ".join(seg["text"] for seg in segments if seg["text"]), "language": languages[i],
                        "duration": round(len(wave) / SAMPLE_RATE, 3), "segments": segments})
    return results


def decode_windows(model: Transformer, tok: Tokenizer, vocab: WhisperVocab, mels: torch.Tensor,
                   prompts: list[list[int]], beams: int, seed: int, fallback: bool = True) -> list[dict]:
    """The text of each 30-s window (B, n_mels, 3000) after its prompt.

    Greedy (or a beam search) first; a window whose text repeats itself (gzip ratio > 2.4) or whose mean
    log-probability is below -1 is decoded again, sampled at the next of Whisper's temperatures
    0.2, 0.4, ... 1.0. When every try fails, the likeliest try that does not repeat itself stands (as
    faster-whisper chooses; OpenAI's keeps the last, sampled at 1.0). Without `fallback`, the first try stands."""
    memory = model.encode(mels)
    suppress = torch.tensor(vocab.suppress, dtype=torch.long)
    begin = torch.tensor(vocab.suppress_begin, dtype=torch.long)

    def rules(logits: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        logits[:, suppress] = float("-inf")
        if generated.size(1) == 0:
            logits[:, begin] = float("-inf")
        return logits

    tries: list[list[dict]] = [[] for _ in prompts]
    todo = list(range(len(prompts)))
    for temperature in TEMPERATURES if fallback else TEMPERATURES[:1]:
        cfg = GenerateConfig(temperature=temperature, beams=beams if temperature == 0 else 1, seed=seed,
                             max_new_tokens=model.config.block_size // 2)
        retry = []
        for same in sorted({tuple(prompts[i]) for i in todo}):  # rows with one prompt decode together
            rows = [i for i in todo if tuple(prompts[i]) == same]
            rows_memory = memory.select(torch.tensor(rows))
            found = decode(model, [list(same)] * len(rows), cfg, vocab.eot, rows_memory, rules=rules)
            scores = mean_logprob(model, rows_memory, [list(same)] * len(rows), found, vocab.eot)
            for i, ids, score in zip(rows, found, scores, strict=True):
                text = tok.decode(ids).strip()
                ratio = compression_ratio(text)
                tries[i].append({"text": text, "temperature": temperature, "avg_logprob": round(score, 4),
                                 "compression_ratio": round(ratio, 3)})
                if ratio > 2.4 or score < -1.0:
                    retry.append(i)
        todo = retry
        if not todo:
            break
    failed = set(todo)
    return [max([t for t in row if t["compression_ratio"] <= 2.4] or row, key=lambda t: t["avg_logprob"])
            if i in failed else row[-1] for i, row in enumerate(tries)]
