"""Whisper on real human speech: bigmodel vs faster-whisper (CTranslate2, the same weights) vs transformers
(our export), word error rate and speed, for tiny.en and base.

Every system reads the same 16-kHz waveforms (decoded and resampled once, by bigmodel) of the English rows
of `../shared/data/speech_real` and decodes greedily on the same number of threads: bigmodel and
faster-whisper with their defaults (timestamps, Whisper's temperature fallback, no-speech skip), without
conditioning on earlier text, and again greedy only (no fallback: the same decoding, so the same WER is
expected; the fallback samples, and each tool draws its own random numbers); transformers' `generate` on
our export, without timestamps or fallback. A
last check feeds CTranslate2 bigmodel's own first window (no timestamps): the greedy tokens then show
whether models and decoding rules agree, apart from how each computes features. WER is scored after
Whisper's English normaliser (transformers' copy of OpenAI's, the same for every system), the references stripped
of the aligner's markup (`<cutoff-...>`, `[laughter]`). Speed is the real-time factor: seconds of audio
per second of wall clock, one recording at a time (batch 1) and, for bigmodel, the whole set in batches
of 8. `--dtype auto` (what `transcribe` runs by default: bf16 where this CPU has it) gets its own row. Last
line `ratio: X.XX`: bigmodel's batch-1 real-time factor over faster-whisper's, both fp32, on
whisper-base.
"""

from __future__ import annotations

import argparse
import csv
import re
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import ctranslate2
import numpy as np
import torch
from _common import ROOT, save
from faster_whisper import WhisperModel
from jiwer import wer
from transformers import WhisperForConditionalGeneration
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from bigmodel.infer.whisper import (
    TEMPERATURES,
    WhisperVocab,
    decode_windows,
    padded_mel,
    read_speech,
    transcribe,
    whisper_rules,
    window,
)
from bigmodel.model.checkpoint import in_precision, load_checkpoint
from bigmodel.model.formats import to_hf
from bigmodel.model.quantize import to_int8
from bigmodel.model.whisper import weight_files

SPEECH = ROOT.parent / "shared" / "data" / "speech_real"
MARKUP = re.compile(r"<[^>]*>|\[[^\]]*\]")


def english_rows() -> list[tuple[str, np.ndarray, str]]:
    rows = list(csv.DictReader((SPEECH / "manifest.tsv").open(encoding="utf-8"), delimiter="\t"))
    return [(r["path"], read_speech(SPEECH / r["path"]), MARKUP.sub(" ", r["text"])) for r in rows
            if r["language"] == "en"]


def ct2_folder(folder: Path) -> Path:
    """A CTranslate2 folder with one `model.bin`, as faster-whisper needs: whisper-base's two parts joined once."""
    if (folder / "model.bin").is_file():
        return folder
    whole = ROOT / "runs" / "whisper-ct2" / folder.parent.name
    if not (whole / "model.bin").is_file():
        whole.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copy(folder / name, whole / name)
        (whole / "model.bin.tmp").write_bytes(b"".join(p.read_bytes() for p in weight_files(folder)))
        (whole / "model.bin.tmp").rename(whole / "model.bin")
    return whole


def same_greedy_tokens(name: str, waves: list[np.ndarray]) -> int:
    """How many recordings CTranslate2 (faster-whisper's engine) and bigmodel decode to the same greedy tokens
    when both read bigmodel's features: the model and decoding rules alike, whatever the features."""
    model, tok, folder = load_checkpoint(name)
    vocab = WhisperVocab.of(tok, whisper_rules(folder), model.config.vocab_size)
    engine = ctranslate2.models.Whisper(str(ct2_folder(folder)), device="cpu", compute_type="float32")
    prompt = [vocab.sot, vocab.languages["en"], vocab.transcribe, vocab.no_timestamps] if vocab.languages \
        else [vocab.sot, vocab.no_timestamps]
    same = 0
    for wave in waves:
        mel = window(padded_mel(wave, model.config.n_mels), 0, min(3000, len(wave) // 160))[None]
        theirs = engine.generate(ctranslate2.StorageView.from_array(mel.numpy()), [prompt], beam_size=1,
                                 max_length=224)[0].sequences_ids[0]
        ours = decode_windows(model, tok, vocab, mel, [prompt], temperatures=(0.0,))[0]["text"]
        same += ours == tok.decode(theirs).strip()
    return same


def timed(run, waves: list[np.ndarray]) -> tuple[list[str], float]:
    """Each recording's text, one at a time, and the wall seconds it all took."""
    start = time.perf_counter()
    texts = [run(wave) for wave in waves]
    return texts, time.perf_counter() - start


def systems(name: str, threads: int) -> dict[str, Callable]:
    """Each system's text of one recording, every one on `name`'s weights."""
    model, tok, folder = load_checkpoint(name)
    vocab = WhisperVocab.of(tok, whisper_rules(folder), model.config.vocab_size)
    language = "en" if vocab.languages else None
    quantized = to_int8(load_checkpoint(name)[0])
    auto = in_precision(load_checkpoint(name)[0], "auto", torch.device("cpu"), decoding=True)  # transcribe's default
    auto_name = f"bigmodel {'bf16' if next(auto.parameters()).dtype == torch.bfloat16 else 'fp32'} (--dtype auto)"
    whole = ct2_folder(folder)
    peers = {kind: WhisperModel(str(whole), device="cpu", compute_type=kind, cpu_threads=threads)
             for kind in ("float32", "int8")}
    with tempfile.TemporaryDirectory() as hf_folder:
        to_hf(model, hf_folder, tok, folder)
        hf = WhisperForConditionalGeneration.from_pretrained(hf_folder).eval()

    def faster(wave: np.ndarray, kind: str, temperature: float | tuple[float, ...] = TEMPERATURES) -> str:
        segments, _ = peers[kind].transcribe(wave, language=language, beam_size=1, condition_on_previous_text=False,
                                             temperature=temperature)
        return " ".join(s.text.strip() for s in segments)

    def transformers_(wave: np.ndarray) -> str:
        ids = hf.generate(padded_mel(wave, model.config.n_mels)[None, :, :3000], language=language,
                          task="transcribe" if language else None, do_sample=False)  # greedy, no fallback
        return tok.decode(ids[0].tolist()).strip()

    return {"bigmodel fp32": lambda w: transcribe(model, tok, vocab, [w], language)[0]["text"],
            "bigmodel int8": lambda w: transcribe(quantized, tok, vocab, [w], language)[0]["text"],
            auto_name: lambda w: transcribe(auto, tok, vocab, [w], language)[0]["text"],
            "faster-whisper fp32": lambda w: faster(w, "float32"), "faster-whisper int8": lambda w: faster(w, "int8"),
            "bigmodel fp32 greedy only": lambda w: transcribe(model, tok, vocab, [w], language,
                                                              temperatures=(0.0,))[0]["text"],
            "faster-whisper fp32 greedy only": lambda w: faster(w, "float32", 0.0),
            "transformers fp32": transformers_,
            "bigmodel fp32 batch 8": lambda waves: transcribe(model, tok, vocab, waves, language, batch_size=8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="whisper-tiny.en,whisper-base")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="only the first N recordings (a quick look)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = english_rows()[:args.limit or None]
    names, waves = [path for path, _, _ in rows], [wave for _, wave, _ in rows]
    audio_seconds = sum(len(w) for w in waves) / 16000
    normalise = EnglishTextNormalizer({})
    references = [normalise(text) for _, _, text in rows]
    print(f"{len(rows)} English recordings, {audio_seconds:.0f} s of audio, {args.threads} threads", flush=True)
    results: dict[str, dict] = {}
    for name in args.models.split(","):
        runs = systems(name, args.threads)
        batched = runs.pop("bigmodel fp32 batch 8")
        figures: dict = {}
        with torch.inference_mode():
            for system, run in runs.items():
                run(waves[0])  # warm-up
                texts, seconds = timed(run, waves)
                figures[system] = {"wer": round(100 * wer(references, [normalise(t) for t in texts]), 2),
                                   "rtf": round(audio_seconds / seconds, 2), "seconds": round(seconds, 2),
                                   "texts": dict(zip(names, texts, strict=True))}
                print(f"{name:>16} {system:>21}: WER {figures[system]['wer']:5.2f}  "
                      f"{figures[system]['rtf']:6.2f}x real time", flush=True)
            start = time.perf_counter()
            batched(waves)
            figures["bigmodel fp32 batch 8"] = {"rtf": round(audio_seconds / (time.perf_counter() - start), 2)}
        print(f"{name:>16} {'bigmodel fp32 batch 8':>21}:             "
              f"{figures['bigmodel fp32 batch 8']['rtf']:6.2f}x real time")
        same = sum(a == b for a, b in zip(figures["bigmodel fp32"]["texts"].values(),
                                          figures["faster-whisper fp32"]["texts"].values(), strict=True))
        figures["same_text_as_faster_whisper_fp32"] = f"{same} of {len(rows)}"
        greedy = same_greedy_tokens(name, waves)
        figures["same_greedy_tokens_as_ctranslate2_on_the_same_features"] = f"{greedy} of {len(rows)}"
        print(f"{name:>16} same text as faster-whisper fp32: {same} of {len(rows)}; same greedy tokens as "
              f"CTranslate2 given the same features: {greedy} of {len(rows)}", flush=True)
        results[name] = figures
    last = results[args.models.split(",")[-1]]
    ratio = last["bigmodel fp32"]["rtf"] / last["faster-whisper fp32"]["rtf"]
    table = {"columns": ["model", "system", "WER %", "real-time factor"],
             "rows": [[name, system, f.get("wer", ""), f["rtf"]] for name, figs in results.items()
                      for system, f in figs.items() if isinstance(f, dict)]}
    gaps = {n: round(f["bigmodel fp32"]["wer"] - f["faster-whisper fp32"]["wer"], 2) for n, f in results.items()}
    path = save("whisper", {"recordings": len(rows), "audio_seconds": round(audio_seconds, 1), "threads": args.threads,
                            "results": results, "wer_gap_vs_faster_whisper": gaps,
                            "peak_rss_mb_all_systems": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                            "table": table, "ratio": ratio})
    print(f"WER bigmodel minus faster-whisper (fp32): {gaps}")
    print(f"figures: {path}")
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
