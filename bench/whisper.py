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
of 8. `--dtype auto` (what `transcribe` runs by default: bf16 where a probe finds it faster) gets its own row.
Peak memory is each system's own: a fresh process loads that system alone and transcribes the first 8
recordings (its weights, runtime and working memory, as a user's process holds them; every such process
imports all three tools, a baseline printed beside). Last
line `ratio: X.XX`: bigmodel's batch-1 real-time factor over faster-whisper's, both fp32, on
whisper-base.
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import subprocess
import sys
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
from bigmodel.model.formats import find_pretrained, to_hf
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


def systems(name: str, threads: int) -> dict[str, Callable[[], Callable]]:
    """Each system's loader, on `name`'s weights: it loads what that system needs (and nothing else, so its
    process's peak memory is its own) and returns its transcriber of one recording (batch 8: of a list)."""
    folder = find_pretrained(name)
    language = None if name.endswith(".en") else "en"  # OpenAI's names: the English-only models end in .en

    def ours(make: Callable = lambda model: model, **options) -> Callable[[], Callable]:
        def load() -> Callable:
            model, tok, _ = load_checkpoint(name)
            vocab = WhisperVocab.of(tok, whisper_rules(folder), model.config.vocab_size)
            model = make(model)
            return lambda w: transcribe(model, tok, vocab, [w], language, **options)[0]["text"]
        return load

    def batched() -> Callable:
        model, tok, _ = load_checkpoint(name)
        vocab = WhisperVocab.of(tok, whisper_rules(folder), model.config.vocab_size)
        return lambda waves: transcribe(model, tok, vocab, waves, language, batch_size=8)

    def faster(kind: str, temperature: float | tuple[float, ...] = TEMPERATURES) -> Callable[[], Callable]:
        def load() -> Callable:
            peer = WhisperModel(str(ct2_folder(folder)), device="cpu", compute_type=kind, cpu_threads=threads)

            def run(wave: np.ndarray) -> str:
                segments, _ = peer.transcribe(wave, language=language, beam_size=1, temperature=temperature,
                                              condition_on_previous_text=False)
                return " ".join(s.text.strip() for s in segments)
            return run
        return load

    def transformers_() -> Callable:
        model, tok, _ = load_checkpoint(name)
        with tempfile.TemporaryDirectory() as hf_folder:
            to_hf(model, hf_folder, tok, folder)
            hf = WhisperForConditionalGeneration.from_pretrained(hf_folder).eval()
        del model

        def run(wave: np.ndarray) -> str:
            ids = hf.generate(padded_mel(wave, hf.config.num_mel_bins)[None, :, :3000], language=language,
                              task="transcribe" if language else None, do_sample=False)  # greedy, no fallback
            return tok.decode(ids[0].tolist()).strip()
        return run

    def auto(model: torch.nn.Module) -> torch.nn.Module:
        return in_precision(model, "auto", torch.device("cpu"), decoding=True)  # what transcribe runs by default

    return {"bigmodel fp32": ours(), "bigmodel int8": ours(to_int8), "bigmodel --dtype auto": ours(auto),
            "faster-whisper fp32": faster("float32"), "faster-whisper int8": faster("int8"),
            "bigmodel fp32 greedy only": ours(temperatures=(0.0,)),
            "faster-whisper fp32 greedy only": faster("float32", 0.0),
            "transformers fp32": transformers_, "bigmodel fp32 batch 8": batched}


def peak_memory(name: str, system: str, threads: int, recordings: int) -> int:
    """The peak resident memory (MB) of a fresh process that loads `system` alone and transcribes the first
    `recordings` recordings: its weights, its runtime and its working memory, as a user's process would hold."""
    done = subprocess.run([sys.executable, __file__, "--models", name, "--threads", str(threads), "--limit",
                           str(recordings), "--peak-of", system], capture_output=True, text=True, check=True)
    return int(done.stdout.split("peak_mb:")[-1].split()[0])


def own_peak_mb() -> int:
    """This process's peak resident memory since it started its program (VmHWM; `ru_maxrss` would also count
    the parent's memory it was forked with)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) // 1024


def own_peak(name: str, system: str, threads: int, waves: list[np.ndarray]) -> None:
    """The child's side of `peak_memory` (`imports only`: what every child holds before it loads a system)."""
    if system == "imports only":
        return print(f"peak_mb: {own_peak_mb()}")
    run = systems(name, threads)[system]()
    with torch.inference_mode():
        if system.endswith("batch 8"):
            run(waves)
        else:
            for wave in waves:
                run(wave)
    print(f"peak_mb: {own_peak_mb()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="whisper-tiny.en,whisper-base")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="only the first N recordings (a quick look)")
    parser.add_argument("--memory-recordings", type=int, default=8, help="recordings each peak-memory process runs")
    parser.add_argument("--peak-of", default="", help=argparse.SUPPRESS)  # the child of peak_memory
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = english_rows()[:args.limit or None]
    names, waves = [path for path, _, _ in rows], [wave for _, wave, _ in rows]
    if args.peak_of:
        return own_peak(args.models, args.peak_of, args.threads, waves)
    audio_seconds = sum(len(w) for w in waves) / 16000
    normalise = EnglishTextNormalizer({})
    references = [normalise(text) for _, _, text in rows]
    print(f"{len(rows)} English recordings, {audio_seconds:.0f} s of audio, {args.threads} threads", flush=True)
    results: dict[str, dict] = {}
    for name in args.models.split(","):
        figures: dict = {"peak_mb_of_the_imports_alone": peak_memory(name, "imports only", args.threads, 1)}
        for system, load in systems(name, args.threads).items():
            run = load()
            with torch.inference_mode():
                if system.endswith("batch 8"):
                    start = time.perf_counter()
                    run(waves)
                    figures[system] = {"rtf": round(audio_seconds / (time.perf_counter() - start), 2)}
                else:
                    run(waves[0])  # warm-up
                    texts, seconds = timed(run, waves)
                    figures[system] = {"wer": round(100 * wer(references, [normalise(t) for t in texts]), 2),
                                       "rtf": round(audio_seconds / seconds, 2), "seconds": round(seconds, 2),
                                       "texts": dict(zip(names, texts, strict=True))}
            del run
            figures[system]["peak_mb"] = peak_memory(name, system, args.threads, args.memory_recordings)
            wer_shown = f"WER {figures[system]['wer']:5.2f}" if "wer" in figures[system] else " " * 9
            print(f"{name:>16} {system:>31}: {wer_shown}  {figures[system]['rtf']:6.2f}x real time  "
                  f"peak {figures[system]['peak_mb']:5d} MB", flush=True)
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
    table = {"columns": ["model", "system", "WER %", "real-time factor", "peak MB"],
             "rows": [[name, system, f.get("wer", ""), f["rtf"], f["peak_mb"]] for name, figs in results.items()
                      for system, f in figs.items() if isinstance(f, dict)]}
    gaps = {n: round(f["bigmodel fp32"]["wer"] - f["faster-whisper fp32"]["wer"], 2) for n, f in results.items()}
    path = save("whisper", {"recordings": len(rows), "audio_seconds": round(audio_seconds, 1), "threads": args.threads,
                            "memory_recordings": args.memory_recordings, "results": results,
                            "wer_gap_vs_faster_whisper": gaps, "table": table, "ratio": ratio})
    print(f"WER bigmodel minus faster-whisper (fp32): {gaps}")
    print(f"figures: {path}")
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
