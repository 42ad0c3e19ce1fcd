"""`bigmodel transcribe`: speech to text with a Whisper checkpoint."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from bigmodel.config import CkptConfig, PrecisionConfig
from bigmodel.errors import BigModelError
from bigmodel.recipes.common import load

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")


@dataclass
class TranscribeConfig(PrecisionConfig, CkptConfig):
    """`bigmodel transcribe`: the text of each recording (WAV, FLAC, MP3, Ogg/Opus; any sample rate)."""

    input: str = ""  # an audio file, a folder of them, a text file listing one path per line, or - (paths on stdin)
    out: str = ""  # folder for one NAME.txt or NAME.json per recording (default: print to stdout)
    format: Literal["txt", "json"] = "txt"  # json: path, text, language, duration and 30-s segments
    language: str = ""  # a multilingual model's language code (en, zh, es, ...); default: detected per recording
    task: Literal["transcribe", "translate"] = "transcribe"  # translate: speech in any language to English text
    beams: int = 1  # > 1: beam search of this width for the first, greedy try
    batch_size: int = 8  # recordings decoded together
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


def cmd_transcribe(args: TranscribeConfig) -> None:
    """Recordings in batches; one that cannot be read is one line on stderr, and the others go on."""
    from bigmodel.infer.whisper import WhisperVocab, prompt, read_speech, transcribe, whisper_rules

    model, tok, folder = load(args, decoding=True)
    if model.config.source != "mel":
        raise BigModelError(f"{args.ckpt}: not a Whisper model (its encoder does not read audio)")
    vocab = WhisperVocab.of(tok, whisper_rules(folder), model.config.vocab_size)
    prompt(vocab, args.language or ("en" if vocab.languages else None), args.task)  # refused before any reading
    paths, failed = audio_inputs(args.input), 0
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(paths), args.batch_size):
        batch, waves = [], []
        for path in paths[start:start + args.batch_size]:
            try:
                waves.append(read_speech(path))
                batch.append(path)
            except BigModelError as e:
                print(f"bigmodel transcribe: error: {e}", file=sys.stderr)
                failed += 1
        if not batch:
            continue
        results = transcribe(model, tok, vocab, waves, args.language or None, args.task, args.beams,
                             batch_size=args.batch_size)
        for path, result in zip(batch, results, strict=True):
            record = {"path": str(path), **result}
            text = json.dumps(record, ensure_ascii=False) if args.format == "json" else result["text"]
            if out:
                (out / f"{path.stem}.{args.format}").write_text(text + "\n", encoding="utf-8")
            else:
                print(text if args.format == "json" or len(paths) == 1 else f"{path}\t{text}", flush=True)
    if failed:
        raise BigModelError(f"{failed} of {len(paths)} recordings could not be read (above); the rest are done")
