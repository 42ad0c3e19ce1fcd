"""Speech to text with Whisper: a recording at any rate, in any format soundfile reads → 16 kHz mono →
log-mel features exactly as OpenAI computes them → 30-second windows → tokens → text.

The decoder's prompt is Whisper's: start of transcript, the language (multilingual models), the task
(transcribe or translate) and, without timestamps, `<|notimestamps|>`. Decoding goes through the same
`decode` as every sequence-to-sequence model, with Whisper's rules on the logits: the tokens the model
was trained never to say (`suppress_ids`), and no blank or end as the first word.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
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
from bigmodel.model.formats import tokenizer_files
from bigmodel.model.frontends import mel_filters
from bigmodel.model.transformer import Memory, Transformer

SAMPLE_RATE = 16000
WINDOW = 30 * SAMPLE_RATE  # samples the encoder reads at once
MAX_SECONDS = 2 * 3600  # longer recordings are refused before they are decoded into memory
N_FRAMES = WINDOW // 160  # 10-ms feature frames in a window
N_CTX = 448  # the decoder's context: a prompt of earlier text takes at most half, the new text the rest
TIME_PRECISION = 0.02  # seconds between timestamp tokens
FRAMES_PER_TOKEN = 2  # feature frames per timestamp step (the encoder halves the frame rate)
MAX_INITIAL_TIMESTAMP = 1.0  # seconds: the first segment starts within the window's first second
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # Whisper's fallback: each try samples hotter than the last
MAX_COMPRESSION, LOGPROB_FLOOR, NO_SPEECH = 2.4, -1.0, 0.6  # the reference's thresholds for a failed try and silence
RESULT_FIELDS = ("temperature", "avg_logprob", "compression_ratio", "no_speech_prob")


@dataclass
class WhisperVocab:
    """The special tokens a Whisper tokenizer names, and the logit rules its CTranslate2 config gives."""

    eot: int
    sot: int
    transcribe: int
    translate: int
    no_timestamps: int  # the first timestamp, <|0.00|>, is the next id; one per 20 ms up to <|30.00|>
    previous: int  # <|startofprev|>: what follows it, up to the start of transcript, is context (a prompt)
    no_speech: int  # <|nocaptions|> (<|nospeech|> in later tokenizers): its probability says a window is silent
    languages: dict[str, int]  # "en" → id of <|en|>; empty for an English-only model
    suppress: list[int]  # never said
    suppress_begin: list[int]  # not as the first token

    @property
    def timestamp_begin(self) -> int:
        return self.no_timestamps + 1

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
        no_speech = tok.token_to_id("<|nospeech|>") or sid("<|nocaptions|>")
        return cls(sid("<|endoftext|>"), sid("<|startoftranscript|>"), sid("<|transcribe|>"), sid("<|translate|>"),
                   sid("<|notimestamps|>"), sid("<|startofprev|>"), no_speech, languages,
                   list(rules.get("suppress_ids", [])), list(rules.get("suppress_ids_begin", [])))


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


def padded_mel(wave: np.ndarray, n_mels: int) -> torch.Tensor:
    """(n_mels, samples // 160 + 3000): the recording's log-mel features followed by those of 30 s of silence,
    as OpenAI computes them once per recording. The first 3000 frames are what `WhisperFeatureExtractor` gives."""
    return log_mel(np.pad(wave, (0, WINDOW)), n_mels)


def window(mel: torch.Tensor, seek: int, frames: int) -> torch.Tensor:
    """The encoder's input (n_mels, 3000) at frame `seek`: `frames` frames of speech, then zeros (the
    reference's `pad_or_trim` of a window that the recording's end cuts short)."""
    return torch.nn.functional.pad(mel[:, seek:seek + frames], (0, N_FRAMES - frames))


def whisper_rules(folder: Path) -> dict:
    """The logit rules of a Whisper checkpoint (`whisper.json`), CTranslate2 or Hugging Face folder, or the
    packaged model an OpenAI `.pt` borrows them from."""
    text = tokenizer_files(folder).get("whisper.json")
    if text is None:
        raise BigModelError(f"{folder}: no whisper.json; not a Whisper checkpoint")
    return json.loads(text)


def prompt(vocab: WhisperVocab, language: str | None, task: str, timestamps: bool = False,
           context: list[int] = ()) -> list[int]:
    """The decoder's prompt: `context` (earlier text, at most 223 tokens) after <|startofprev|>, then the
    start of transcript, the language and the task (multilingual models), and <|notimestamps|> unless
    the model is to say when each segment starts and ends."""
    before = [vocab.previous, *context[-(N_CTX // 2 - 1):]] if context else []
    after = [] if timestamps else [vocab.no_timestamps]
    if not vocab.languages:
        if task == "translate" or language not in (None, "en"):
            raise BigModelError(f"--language {language} --task {task}: this Whisper is English-only")
        return [*before, vocab.sot, *after]
    if language not in vocab.languages:
        raise BigModelError(f"--language {language}: Whisper knows {', '.join(vocab.languages)}")
    task_id = vocab.translate if task == "translate" else vocab.transcribe
    return [*before, vocab.sot, vocab.languages[language], task_id, *after]


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


def logit_rules(vocab: WhisperVocab, timestamps: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Whisper's rules on the next token's logits (B, V), given what each row generated so far (B, T).

    Always: never a suppressed token; not a blank or the end first. With timestamps (the reference's
    `ApplyTimestampRules`): the first token is a timestamp within the first second; timestamps come in
    pairs (a segment's end and the next one's start) except the last; they never go back; and when
    the timestamps together are likelier than any one text token, a timestamp it is."""
    suppress = torch.tensor(vocab.suppress, dtype=torch.long)
    begin = torch.tensor(vocab.suppress_begin, dtype=torch.long)
    ts = vocab.timestamp_begin

    def rules(logits: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        logits[:, suppress] = float("-inf")
        if generated.size(1) == 0:
            logits[:, begin] = float("-inf")
        if not timestamps:
            return logits
        logits[:, vocab.no_timestamps] = float("-inf")
        if generated.size(1) == 0:
            logits[:, :ts] = float("-inf")
            logits[:, ts + round(MAX_INITIAL_TIMESTAMP / TIME_PRECISION) + 1:] = float("-inf")
        for row, said in enumerate(generated.tolist()):
            stamps = [t for t in said if t >= ts]
            if not stamps:
                continue
            last = said[-1] >= ts
            pair = len(said) < 2 or said[-2] >= ts  # the last timestamp closed a pair (or started the text)
            if last:
                if pair:
                    logits[row, ts:] = float("-inf")
                else:
                    logits[row, :vocab.eot] = float("-inf")
            logits[row, ts:stamps[-1] + (0 if last and not pair else 1)] = float("-inf")
        logp = logits.float().log_softmax(-1)
        stamp_wins = logp[:, ts:].logsumexp(-1) > logp[:, :ts].max(-1).values
        logits[stamp_wins, :ts] = float("-inf")
        return logits

    return rules


def segments_of(tokens: list[int], vocab: WhisperVocab, tok: Tokenizer, offset: float,
                frames: int) -> tuple[list[dict], int]:
    """A window's tokens cut into timed segments at each pair of timestamps, and how many frames the next
    window starts after this one's start: up to the last closed segment (a segment the window cut short
    is decoded again from its start), or the whole window when it ended on one timestamp (or none)."""
    ts = vocab.timestamp_begin

    def segment(part: list[int], start: float, end: float) -> dict:
        return {"start": round(offset + start, 3), "end": round(offset + end, 3),
                "text": tok.decode([t for t in part if t < vocab.eot]).strip(), "tokens": part}

    stamp = [t >= ts for t in tokens]
    closes = [i + 1 for i in range(len(tokens) - 1) if stamp[i] and stamp[i + 1]]
    single_end = stamp[-2:] == [False, True]
    if not closes:
        stamps = [t - ts for t in tokens if t >= ts]
        end = stamps[-1] * TIME_PRECISION if stamps and stamps[-1] > 0 else frames * HOP_SECONDS
        return [segment(tokens, 0.0, end)], frames
    cuts, found, last = closes + ([len(tokens)] if single_end else []), [], 0
    for cut in cuts:
        part = tokens[last:cut]
        found.append(segment(part, (part[0] - ts) * TIME_PRECISION, (part[-1] - ts) * TIME_PRECISION))
        last = cut
    return found, frames if single_end else (tokens[last - 1] - ts) * FRAMES_PER_TOKEN


@torch.no_grad()
def transcribe(model: Transformer, tok: Tokenizer, vocab: WhisperVocab, waves: list[np.ndarray],
               language: str | None = None, task: str = "transcribe", beams: int = 1, seed: int = 0,
               batch_size: int = 8, timestamps: bool = True, initial_prompt: str = "",
               condition_on_previous_text: bool = False,
               temperatures: tuple[float, ...] = TEMPERATURES) -> list[dict]:
    """The text, language and timed segments of each recording, as the reference's `transcribe` finds them.

    Each recording is read one 30-s window at a time; with timestamps, the next window starts where the
    last complete segment ended. The next windows of up to `batch_size` recordings decode together
    (a progress bar, in seconds of audio, when there is more than a minute). A multilingual model detects
    each recording's language on its first 30 s. A window the model judges silent (no-speech probability
    above 0.6, and unlikely text) adds nothing. `initial_prompt` (and, if asked, the text so far) is
    the decoder's context: spellings, names, style."""
    n_mels, dtype = model.config.n_mels, next(model.parameters()).dtype
    mels = [padded_mel(wave, n_mels) for wave in waves]
    frames = [mel.size(1) - N_FRAMES for mel in mels]
    languages = [language or "en"] * len(waves)
    if vocab.languages and language is None:
        languages = []
        for start in range(0, len(waves), batch_size):
            first = torch.stack([mel[:, :N_FRAMES] for mel in mels[start:start + batch_size]]).to(dtype)
            languages += detect_language(model, vocab, model.encode(first))
    initial = tok.encode(" " + initial_prompt.strip(), add_special_tokens=False).ids if initial_prompt.strip() else []
    seeks, segments = [0] * len(waves), [[] for _ in waves]
    context: list[list[int]] = [list(initial) for _ in waves]
    with tqdm(total=round(sum(frames) * HOP_SECONDS), unit=" s", desc="transcribe", mininterval=1.0,
              disable=sum(frames) * HOP_SECONDS < 60) as bar:
        while todo := [i for i in range(len(waves)) if seeks[i] < frames[i]][:batch_size]:
            sizes = [min(N_FRAMES, frames[i] - seeks[i]) for i in todo]
            batch = torch.stack([window(mels[i], seeks[i], n) for i, n in zip(todo, sizes, strict=True)]).to(dtype)
            prompts = [prompt(vocab, languages[i], task, timestamps, context[i]) for i in todo]
            found = decode_windows(model, tok, vocab, batch, prompts, beams, seed, timestamps, temperatures)
            for i, n, result in zip(todo, sizes, found, strict=True):
                offset = seeks[i] * HOP_SECONDS
                if result["no_speech_prob"] > NO_SPEECH and result["avg_logprob"] < LOGPROB_FLOOR:
                    new, advance = [], n  # silence
                else:
                    new, advance = segments_of(result["tokens"], vocab, tok, offset, n)
                for seg in new:
                    if seg["text"]:
                        segments[i].append({"id": len(segments[i]), "seek": seeks[i], **seg,
                                            **{k: result[k] for k in RESULT_FIELDS}})
                seeks[i] += max(advance, 1)
                bar.update(round(seeks[i] * HOP_SECONDS - offset))
                if not condition_on_previous_text or result["temperature"] > 0.5:
                    context[i] = list(initial)
                else:
                    context[i] += [t for seg in new for t in seg["tokens"]]
    return [{"text": " ".join(seg["text"] for seg in segs), "language": lang,
             "duration": round(len(wave) / SAMPLE_RATE, 3),
             "segments": [{**seg, "start": min(seg["start"], len(wave) / SAMPLE_RATE),
                           "end": round(min(seg["end"], len(wave) / SAMPLE_RATE), 3)} for seg in segs]}
            for wave, segs, lang in zip(waves, segments, languages, strict=True)]


def decode_windows(model: Transformer, tok: Tokenizer, vocab: WhisperVocab, mels: torch.Tensor,
                   prompts: list[list[int]], beams: int = 1, seed: int = 0, timestamps: bool = False,
                   temperatures: tuple[float, ...] = TEMPERATURES) -> list[dict]:
    """The tokens, text and scores of each 30-s window (B, n_mels, 3000) after its prompt.

    Greedy (or a beam search) first; a window whose text repeats itself (gzip ratio > 2.4) or whose mean
    log-probability is below -1 is decoded again, sampled at the next of `temperatures` (Whisper's 0.2,
    0.4, ... 1.0), unless the model judges it silent. When every try fails, the likeliest try that does
    not repeat itself stands (as faster-whisper chooses; OpenAI's keeps the last)."""
    memory = model.encode(mels)
    rules = logit_rules(vocab, timestamps)
    starts = [p.index(vocab.sot) for p in prompts]
    width = max(map(len, prompts))
    ids = torch.tensor([p + [vocab.eot] * (width - len(p)) for p in prompts])
    at_start = torch.zeros(ids.shape, dtype=torch.bool)
    at_start[torch.arange(len(prompts)), torch.tensor(starts)] = True
    after_start, _ = model(ids, memory=memory, logits_at=at_start)  # (B, V): the logits after each <|sot|>
    no_speech = after_start.float().softmax(-1)[:, vocab.no_speech].tolist()
    tries: list[list[dict]] = [[] for _ in prompts]
    todo = list(range(len(prompts)))
    for temperature in temperatures:
        cfg = GenerateConfig(temperature=temperature, beams=beams if temperature == 0 else 1, seed=seed,
                             max_new_tokens=N_CTX // 2)
        if temperature == 0:
            found, sums = decode(model, [prompts[i] for i in todo], cfg, vocab.eot,
                                 memory.select(torch.tensor(todo)), rules=rules, scored=True)
        else:  # each window samples alone, from its own seed: what it says does not depend on its batch
            alone = [decode(model, [prompts[i]], cfg, vocab.eot, memory.select(torch.tensor([i])), rules=rules,
                            scored=True) for i in todo]
            found, sums = [tokens[0] for tokens, _ in alone], [total[0] for _, total in alone]
        retry = []
        for i, tokens, total in zip(todo, found, sums, strict=True):
            text = tok.decode([t for t in tokens if t < vocab.eot]).strip()
            ratio, score = compression_ratio(text), total / (len(tokens) + 1)
            tries[i].append({"tokens": tokens, "text": text, "temperature": temperature,
                             "avg_logprob": round(score, 4), "compression_ratio": round(ratio, 3),
                             "no_speech_prob": round(no_speech[i], 4)})
            silent = no_speech[i] > NO_SPEECH and score < LOGPROB_FLOOR
            if (ratio > MAX_COMPRESSION or score < LOGPROB_FLOOR) and not silent:
                retry.append(i)
        todo = retry
        if not todo:
            break
    failed = set(todo)
    return [max([t for t in row if t["compression_ratio"] <= MAX_COMPRESSION] or row, key=lambda t: t["avg_logprob"])
            if i in failed else row[-1] for i, row in enumerate(tries)]


def clock(seconds: float, decimal: str) -> str:
    """`hh:mm:ss,mmm` (SubRip) or `hh:mm:ss.mmm` (WebVTT)."""
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{decimal}{ms % 1000:03d}"


def subtitles(segments: list[dict], kind: str) -> str:
    """A recording's segments as an SRT or WebVTT file: numbered cues with their times and text."""
    if kind == "srt":
        return "".join(f"{i}\n{clock(s['start'], ',')} --> {clock(s['end'], ',')}\n{s['text']}\n\n"
                       for i, s in enumerate(segments, 1))
    return "WEBVTT\n\n" + "".join(f"{clock(s['start'], '.')} --> {clock(s['end'], '.')}\n{s['text']}\n\n"
                                  for s in segments)
