"""Whisper base on Mandarin: the recorded syllables of Debian's `gcin-voice` package (2,358 Ogg files, one
syllable each, in folders named by its zhuyin and tone: `ㄅㄚ3/…ogg`; no digit is the first tone, 1 the
neutral tone). A random sample is transcribed by `bigmodel transcribe`'s path (`--language zh`), and the
first Chinese character written is read back with pypinyin (every reading of it, in zhuyin): the
syllable is right if one of its readings is the folder's, with or without the tone. An isolated
syllable is a hard test (no context to choose among homophones): it says how well base hears Mandarin
sounds, not how well it transcribes sentences. No peer runs here (faster-whisper on the same weights
decodes the same tokens, `bench/whisper.py`), so the last line `ratio: X.XX` is the share of syllables
right without the tone over the share a guess of the commonest syllable would get.
"""

from __future__ import annotations

import argparse
import collections
import random
import time
from pathlib import Path

import torch
from _common import save
from pypinyin import Style, pinyin

from bigmodel.infer.whisper import WhisperVocab, read_speech, transcribe, whisper_rules
from bigmodel.model.checkpoint import load_checkpoint

VOICE = Path("/usr/share/gcin-voice/ogg")
TONE_MARKS = {"": "", "1": "˙", "2": "ˊ", "3": "ˇ", "4": "ˋ"}  # gcin's folder digit → zhuyin's tone mark


def syllable(folder: str) -> tuple[str, str]:
    """(zhuyin without tone, with its tone mark) of a gcin folder name."""
    sound = folder.rstrip("1234")
    return sound, sound + TONE_MARKS[folder[len(sound):]]


def readings(text: str) -> list[str]:
    """Every zhuyin reading of the first Chinese character in `text` (none if it wrote none)."""
    han = [c for c in text if "\u4e00" <= c <= "\u9fff"]
    return pinyin(han[0], style=Style.BOPOMOFO, heteronym=True)[0] if han else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=300, help="a random sample of this many recordings (0: all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not VOICE.is_dir():
        raise SystemExit(f"{VOICE}: apt-get install gcin-voice")
    files = sorted(VOICE.glob("*/*.ogg"))
    random.Random(0).shuffle(files)
    files = files[:args.limit or None]
    model, tok, folder = load_checkpoint("whisper-base")
    vocab = WhisperVocab.of(tok, whisper_rules(folder), model.config.vocab_size)
    waves = [read_speech(f) for f in files]
    seconds = sum(len(w) for w in waves) / 16000
    started = time.perf_counter()
    heard = transcribe(model, tok, vocab, waves, "zh", timestamps=False)
    elapsed = time.perf_counter() - started
    toned = toneless = written = 0
    for f, said in zip(files, heard, strict=True):
        sound, marked = syllable(f.parent.name)
        found = readings(said["text"])
        written += bool(found)
        toned += marked in found
        toneless += sound in [r.rstrip("˙ˊˇˋ") for r in found]
    results = {"syllables_right_with_tone_pct": round(100 * toned / len(files), 1),
               "syllables_right_without_tone_pct": round(100 * toneless / len(files), 1),
               "wrote_a_chinese_character_pct": round(100 * written / len(files), 1),
               "x_real_time": round(seconds / elapsed, 2),
               "examples": {str(f.relative_to(VOICE)): said["text"] for f, said in list(zip(files, heard,
                                                                                            strict=True))[:12]}}
    print(f"--language zh: {results['syllables_right_with_tone_pct']}% right with the tone, "
          f"{results['syllables_right_without_tone_pct']}% without, a Chinese character in "
          f"{results['wrote_a_chinese_character_pct']}%", flush=True)
    commonest = collections.Counter(syllable(f.parent.name)[0] for f in files).most_common(1)[0][1] / len(files)
    ratio = results["syllables_right_without_tone_pct"] / (100 * commonest)
    path = save("whisper_chinese", {"recordings": len(files), "audio_seconds": round(seconds, 1),
                                    "results": results, "commonest_syllable_share_pct": round(100 * commonest, 2),
                                    "ratio": ratio})
    print(f"figures: {path}")
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
