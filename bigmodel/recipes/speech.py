"""`bigmodel transcribe`: speech to text with a Whisper checkpoint (`predict` on one does the same)."""

from __future__ import annotations

import collections
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from bigmodel.config import Checked, CkptConfig, PrecisionConfig
from bigmodel.errors import BigModelError
from bigmodel.recipes.common import load

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")


@dataclass
class SpeechConfig(Checked):
    """How Whisper decodes: what `transcribe` takes as flags and the server as request fields."""

    language: str = ""  # a multilingual model's language code (en, zh, es, ...); default: detected per recording
    task: Literal["transcribe", "translate"] = "transcribe"  # translate: speech in any language to English text
    beams: int = 1  # > 1: beam search of this width for the first try (later tries sample)
    timestamps: bool = True  # segment times; the next 30-s window starts where the last whole segment ended
    initial_prompt: str = ""  # text the decoder reads first: names, spellings, a style to follow
    condition_on_previous_text: bool = False  # each window also reads the text before it (may repeat itself)
    batch_size: int = 8  # recordings decoded together

    def options(self) -> dict:
        """`infer.whisper.transcribe`'s keyword arguments."""
        return {"language": self.language or None, "task": self.task, "beams": self.beams,
                "timestamps": self.timestamps, "initial_prompt": self.initial_prompt,
                "condition_on_previous_text": self.condition_on_previous_text, "batch_size": self.batch_size}


@dataclass
class TranscribeConfig(SpeechConfig, PrecisionConfig, CkptConfig):
    """`bigmodel transcribe`: the text of each recording (WAV, FLAC, MP3, Ogg/Opus; any sample rate)."""

    input: str = ""  # an audio file, a folder of them, a text file listing one path per line, or - (paths on stdin)
    out: str = ""  # folder for one NAME.txt (or .json, .srt, .vtt) per recording (default: print to stdout)
    format: Literal["txt", "json", "srt", "vtt"] = "txt"  # json: path, text, language, duration, timed segments
    required: ClassVar[tuple[str, ...]] = ("ckpt", "input")


def audio_inputs(name: str) -> list[Path]:
    """The recordings `--input` names: a file, every audio file of a folder, or a list of paths."""
    path = Path(name)
    if name != "-" and path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        if not found:
            raise BigModelError(f"{path}: no {', '.join(AUDIO_SUFFIXES)} files in this folder")
        return found
    if name == "-" or path.suffix.lower() in (".txt", ".lst"):
        lines = sys.stdin.read().splitlines() if name == "-" else path.read_text(encoding="utf-8").splitlines()
        return [Path(line.strip()) for line in lines if line.strip()]
    return [path]


def output_names(paths: list[Path]) -> dict[str, str]:
    """Each recording's file name in `--out`: its stem, or where stems repeat (`a/3.ogg`, `b/3.ogg`) its path
    below the inputs' common folder (`a_3`, `b_3`)."""
    stems = collections.Counter(p.stem for p in paths)
    common = Path(os.path.commonpath([p.resolve().parent for p in paths])) if paths else Path()
    return {str(p): p.stem if stems[p.stem] == 1 else
            "_".join(p.resolve().relative_to(common).with_suffix("").parts) for p in paths}


def whisper_of(model, tok, folder: Path, ckpt: str):
    """The checkpoint's Whisper vocabulary, or one line saying it is not a Whisper model."""
    from bigmodel.infer.whisper import WhisperVocab, whisper_rules

    if model.config.source != "mel":
        raise BigModelError(f"{ckpt}: not a Whisper model (its encoder does not read audio)")
    return WhisperVocab.of(tok, whisper_rules(folder), model.config.vocab_size)


def transcribed(model, tok, vocab, paths: list[Path], speech: SpeechConfig) -> Iterator[dict]:
    """One record per recording, in order, `batch_size` recordings at a time. One that cannot be read is a
    line on stderr and a record with its `error`; the others go on."""
    from bigmodel.infer.whisper import prompt, read_speech, transcribe

    prompt(vocab, speech.language or ("en" if vocab.languages else None), speech.task)  # refused before any reading
    for start in range(0, len(paths), speech.batch_size):
        records: list[dict] = []
        waves = []
        for path in paths[start:start + speech.batch_size]:
            try:
                waves.append(read_speech(path))
                records.append({"path": str(path)})
            except BigModelError as e:
                print(f"bigmodel: error: {e}", file=sys.stderr)
                records.append({"path": str(path), "error": str(e)})
        found = iter(transcribe(model, tok, vocab, waves, **speech.options()) if waves else [])
        for record in records:
            yield record if "error" in record else {**record, **next(found)}


def table_transcripts(model, tok, vocab, rows: list[dict[str, str]]) -> tuple[list[tuple[dict, dict]], int]:
    """The record of each readable row of a speech table (`data.media.speech_rows`), each decoded in its
    row's language when it names one, and how many rows are in languages the model cannot transcribe."""
    known = set(vocab.languages) or {"en"}
    kept = [r for r in rows if (r["language"] or "en") in known]
    heard: dict[int, dict] = {}
    for language in sorted({r["language"] for r in kept}):
        group = [i for i, r in enumerate(kept) if r["language"] == language]
        speech = SpeechConfig(language=language if vocab.languages else "")
        records = transcribed(model, tok, vocab, [Path(kept[i]["audio"]) for i in group], speech)
        heard.update(zip(group, records, strict=True))
    pairs = [(row, heard[i]) for i, row in enumerate(kept) if "error" not in heard[i]]
    if not pairs:
        raise BigModelError("no recording of the table could be read")
    return pairs, len(rows) - len(kept)


def cmd_transcribe(args: TranscribeConfig) -> None:
    """Text, JSON, SRT or WebVTT per recording, to stdout or one file each in `--out`; exit 1 if any failed."""
    from bigmodel.infer.whisper import subtitles

    model, tok, folder = load(args, decoding=True)
    vocab = whisper_of(model, tok, folder, args.ckpt)
    paths = audio_inputs(args.input)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    names, failed = output_names(paths), 0
    for record in transcribed(model, tok, vocab, paths, args):
        if "error" in record:
            failed += 1
            continue
        if args.format == "json":
            text = json.dumps(record, ensure_ascii=False)
        elif args.format in ("srt", "vtt"):
            text = subtitles(record["segments"], args.format)
        else:
            text = record["text"]
        if out:
            (out / f"{names[record['path']]}.{args.format}").write_text(text.rstrip("\n") + "\n", encoding="utf-8")
        elif args.format == "txt" and len(paths) > 1:
            print(f"{record['path']}\t{text}", flush=True)
        else:
            print(text, flush=True)
    if failed:
        raise BigModelError(f"{failed} of {len(paths)} recordings could not be read (above); the rest are done")
