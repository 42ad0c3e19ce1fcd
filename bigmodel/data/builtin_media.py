"""Image and speech datasets every machine can build: `bigmodel dataset digits|keywords|speech`.

- `digits`: scikit-learn's 1,797 handwritten digits (8×8, 17 grey levels) as PNG files in
  class sub-folders, split 72/8/20% by a fixed stratified shuffle (seed 0).
- `keywords`: twenty spoken words (the digits, yes/no, up/down, left/right, on/off, stop/go)
  synthesized by Debian's espeak-ng, in class sub-folders of 16 kHz WAV files. Each clip draws an
  accent, a voice variant, a speed, a pitch and sometimes background noise; validation and test
  use voice variants that training never hears.
- `speech`: short sentences (SST-2's movie-review phrases of 4-10 words, all among the phrases'
  2,000 most common words) spoken the same way, listed in train/val/test.csv (audio path, text).
  Test sentences and voice variants are unseen; their words are not.

espeak-ng is a system package (`apt-get install espeak-ng`); nothing is downloaded here.
"""

from __future__ import annotations

import io
import os
import random
import re
import shutil
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bigmodel.errors import BigModelError

SAMPLE_RATE = 16000
KEYWORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
            "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc"]
# espeak-ng's voice variants, less the whispering, croaking and effect voices nobody speaks in
VARIANTS = ["adam", "Alex", "Alicia", "Andrea", "Andy", "Annie", "antonio", "aunty", "belinda", "benjamin", "boris",
            "caleb", "david", "Denis", "Diogo", "ed", "edward", "edward2", "Gene", "Gene2", "gustave", "Henrique",
            "Hugo", "iven", "iven2", "iven3", "iven4", "Jacky", "john", "kaukovalta", "Lee", "linda", "marcelo",
            "Marco", "Mario", "max", "Michael", "michel", "miguel", "Mike", "Mr", "Nguyen", "pablo", "paul", "pedro",
            "quincy", "RicishayMax", "RicishayMax2", "RicishayMax3", "rob", "robert", "robosoft", "robosoft2",
            "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7", "robosoft8", "steph", "steph2",
            "steph3", "Storm", "Tweaky", "zac", "anika", "AnxiousAndy", "f1", "f2", "f3", "f4", "f5", "grandpa",
            "grandma", "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "m1", "m2", "m3", "m4", "m5", "m6",
            "m7", "m8", "norbert", "sandro", "shelby", "travis", "victor"]
HELD_OUT = {"val": VARIANTS[3::12], "test": VARIANTS[7::6]}  # 8 and 15 variants no training clip uses
SPLIT_SIZES = {"train": 1.0, "val": 0.1, "test": 0.25}  # relative to the training set
COMMON_WORDS = 2000  # speech: a dictation vocabulary, so each word is heard in many voices


@dataclass(frozen=True)
class Voice:
    accent: str
    variant: str
    speed: int  # words per minute
    pitch: int  # 0-99
    snr: float | None  # dB of added white noise; None: clean

    def args(self) -> list[str]:
        return ["-v", f"{self.accent}+{self.variant}", "-s", str(self.speed), "-p", str(self.pitch)]


def variants_of(split: str) -> list[str]:
    held = {v for vs in HELD_OUT.values() for v in vs}
    return HELD_OUT[split] if split in HELD_OUT else [v for v in VARIANTS if v not in held]


def random_voice(rng: random.Random, split: str) -> Voice:
    return Voice(rng.choice(ACCENTS), rng.choice(variants_of(split)), rng.randint(120, 210), rng.randint(20, 80),
                 rng.uniform(10, 35) if rng.random() < 0.5 else None)


def speak(text: str, voice: Voice, seed: int) -> np.ndarray:
    """espeak-ng's rendering at 16 kHz (soxr resampling), with the voice's noise."""
    import soundfile as sf
    import soxr

    done = subprocess.run(["espeak-ng", *voice.args(), "--stdout", text], capture_output=True, check=False)
    if done.returncode or not done.stdout:
        raise BigModelError(f"espeak-ng failed on {text!r} with {' '.join(voice.args())}: "
                            f"{done.stderr.decode(errors='replace').strip()[:200]}")
    wave, rate = sf.read(io.BytesIO(done.stdout), dtype="float32")
    wave = soxr.resample(wave, rate, SAMPLE_RATE)
    if voice.snr is not None:
        noise = np.random.default_rng(seed).standard_normal(len(wave)).astype(np.float32)
        wave = wave + noise * np.sqrt(np.mean(wave ** 2)) * 10 ** (-voice.snr / 20)
    return np.clip(wave / max(1.0, float(np.abs(wave).max())), -1, 1)


def synthesize(jobs: list[tuple[Path, str, Voice]]) -> None:
    """Write every (path, text, voice) as a 16-bit WAV file, two espeak-ng processes per core."""
    import soundfile as sf

    if shutil.which("espeak-ng") is None:
        raise BigModelError("speech datasets need Debian's espeak-ng: apt-get install espeak-ng")
    try:
        import soxr  # noqa: F401
    except ImportError:
        raise BigModelError("speech datasets need soundfile and soxr: pip install 'bigmodel[audio]'") from None

    def one(job: tuple[int, tuple[Path, str, Voice]]) -> None:
        i, (path, text, voice) = job
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, speak(text, voice, i), SAMPLE_RATE, subtype="PCM_16")

    with ThreadPoolExecutor(2 * (os.cpu_count() or 1)) as pool:
        list(pool.map(one, enumerate(jobs)))


def build_digits(out: Path) -> dict[str, int]:
    """scikit-learn's digits as 8×8 grayscale PNGs in train/val/test/LABEL/ folders."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.images * (255 / 16)).round().astype(np.uint8)
    index = np.arange(len(pixels))
    rest, test = train_test_split(index, test_size=0.2, stratify=digits.target, random_state=0)
    train, val = train_test_split(rest, test_size=0.1, stratify=digits.target[rest], random_state=0)
    counts = {}
    for split, rows in (("train", train), ("val", val), ("test", test)):
        for i in rows:
            path = out / split / str(digits.target[i]) / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i], mode="L").save(path)
        counts[split] = len(rows)
    return counts


def build_keywords(out: Path, examples: int) -> dict[str, int]:
    """`examples` training clips (and a tenth for val, a quarter for test) in SPLIT/WORD/N.wav."""
    rng = random.Random(0)
    jobs, counts = [], {}
    for split, share in SPLIT_SIZES.items():
        n = max(len(KEYWORDS), round(examples * share))
        for i in range(n):
            word = KEYWORDS[i % len(KEYWORDS)]
            jobs.append((out / split / word / f"{i:05d}.wav", word, random_voice(rng, split)))
        counts[split] = n
    synthesize(jobs)
    return counts


def sentences(source: Path, rng: random.Random) -> list[str]:
    """Distinct 4-10 word phrases of letters and apostrophes from SST-2's sentence column, of common words."""
    if not source.is_file():
        raise BigModelError(f"{source}: not found (SST-2's train.tsv, in ../shared/data/sst2)")
    found = set()
    for line in source.read_text(encoding="utf-8").splitlines()[1:]:
        words = re.sub(r"[^a-z' ]", " ", line.split("\t")[0].lower()).split()
        words = [w for w in words if w.strip("'")]
        if 4 <= len(words) <= 10:
            found.add(" ".join(words).replace(" 's", "'s").replace(" n't", "n't"))
    common = {w for w, _ in Counter(w for phrase in found for w in phrase.split()).most_common(COMMON_WORDS)}
    ordered = sorted(phrase for phrase in found if set(phrase.split()) <= common)
    rng.shuffle(ordered)
    return ordered


def build_speech(out: Path, examples: int, source: Path) -> dict[str, int]:
    """`examples` spoken training sentences (val and test: unseen sentences and voices) and their CSVs."""
    import csv

    rng = random.Random(0)
    pool = sentences(source, rng)
    jobs, counts, start = [], {}, 0
    for split, share in SPLIT_SIZES.items():
        n = max(1, round(examples * share))
        if start + n > len(pool):
            raise BigModelError(f"{source}: only {len(pool)} usable sentences for {examples} examples")
        rows = []
        for i, text in enumerate(pool[start:start + n]):
            path = Path("clips") / split / f"{i:05d}.wav"
            jobs.append((out / path, text, random_voice(rng, split)))
            rows.append({"audio": str(path), "text": text})
        start += n
        with open(out / f"{split}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, ["audio", "text"])
            writer.writeheader()
            writer.writerows(rows)
        counts[split] = n
    synthesize(jobs)
    return counts
