"""What a model reads, whatever the modality: raw inputs (texts, image or WAV paths, uploaded
bytes) → items → padded batches with a mask of real positions.

`inputs_for(model config, tokenizer)` picks the kind. Tasks, prediction, evaluation and the
server go through it, so a classifier trains and answers the same way on text, images and
audio. Images and audio are decoded once; their augmentation (random crops and flips; gain,
shifts and noise) makes a fresh copy per epoch.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from bigmodel.config import HOP_SECONDS, ModelConfig
from bigmodel.data.collate import collate, encode, pad_id
from bigmodel.data.media import AUDIO_SUFFIXES, IMAGE_SUFFIXES, read_audio, read_image
from bigmodel.errors import BigModelError

Source = str | Path | bytes


class TextInputs:
    """Token ids, right-padded."""

    kind = "text"
    suffixes: tuple[str, ...] = ()

    def __init__(self, tok: Tokenizer, max_length: int) -> None:
        self.tok, self.max_length, self.pad = tok, max_length, pad_id(tok)

    def read(self, texts: list[str]) -> list[list[int]]:
        return encode(self.tok, texts, self.max_length)

    def length(self, item: list[int]) -> int:
        return len(item)

    def batch(self, items: list[list[int]], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        return collate(items, self.pad, device)


class ImageInputs:
    """(C, H, W) pixels, stacked; every image has the same number of patches."""

    kind = "image"
    suffixes = IMAGE_SUFFIXES

    def __init__(self, config: ModelConfig, hflip: bool = False) -> None:
        self.config, self.hflip = config, hflip
        self.positions = 1 + (config.image_size // config.patch_size) ** 2

    def read(self, sources: list[Source]) -> list[torch.Tensor]:
        return [read_image(s, self.config.image_size, self.config.channels) for s in sources]

    def length(self, item: torch.Tensor) -> int:
        return self.positions

    def augment(self, image: torch.Tensor, rng: random.Random) -> torch.Tensor:
        """A random crop of the image padded by an eighth of its side (shifts of a few pixels); flips if asked."""
        size = image.size(-1)
        pad = max(1, size // 8)
        padded = F.pad(image, (pad, pad, pad, pad))
        top, left = rng.randint(0, 2 * pad), rng.randint(0, 2 * pad)
        image = padded[:, top:top + size, left:left + size]
        return image.flip(-1) if self.hflip and rng.random() < 0.5 else image

    def batch(self, items: list[torch.Tensor], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack(items).to(device), torch.ones(len(items), self.positions, dtype=torch.bool, device=device)


class AudioInputs:
    """Mono waveforms, right-padded with silence; the mask covers each clip's own frames."""

    kind = "audio"
    suffixes = AUDIO_SUFFIXES

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.hop = round(HOP_SECONDS * config.sample_rate)
        self.max_samples = (2 * config.block_size - 1) * self.hop  # frames / 2 (rounded up) must fit the context

    def read(self, sources: list[Source]) -> list[torch.Tensor]:
        return [read_audio(s, self.config.sample_rate, self.max_samples) for s in sources]

    def length(self, item: torch.Tensor) -> int:
        return self.positions(len(item))

    def positions(self, samples: int) -> int:
        """Vectors the encoder sees: one per two 10 ms frames (see `LogMelFrontend`)."""
        return (samples // self.hop + 2) // 2

    def augment(self, wave: torch.Tensor, rng: random.Random) -> torch.Tensor:
        """Random gain (±6 dB), up to 100 ms of leading silence, and noise at 15-40 dB SNR half the time."""
        generator = torch.Generator().manual_seed(rng.randrange(2**31))
        wave = wave * 10 ** (rng.uniform(-6, 6) / 20)
        lead = rng.randrange(0, self.config.sample_rate // 10)
        if len(wave) + lead <= self.max_samples:
            wave = torch.cat((torch.zeros(lead), wave))
        if rng.random() < 0.5:
            snr = rng.uniform(15, 40)
            noise = torch.randn(len(wave), generator=generator)
            wave = wave + noise * wave.pow(2).mean().sqrt() * 10 ** (-snr / 20)
        return wave.clamp(-1, 1)

    def batch(self, items: list[torch.Tensor], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(w) for w in items)
        waves = torch.zeros(len(items), width)
        for i, w in enumerate(items):
            waves[i, :len(w)] = w
        lengths = torch.tensor([self.positions(len(w)) for w in items])
        mask = torch.arange(self.positions(width))[None, :] < lengths[:, None]
        return waves.to(device), mask.to(device)


Inputs = TextInputs | ImageInputs | AudioInputs


def inputs_for(config: ModelConfig, tok: Tokenizer | None, max_length: int = 512, hflip: bool = False) -> Inputs:
    """The reader for a model's front end (text needs its tokenizer)."""
    if config.frontend == "patches":
        return ImageInputs(config, hflip)
    if config.frontend == "mel":
        return AudioInputs(config)
    if tok is None:
        raise BigModelError("a text model needs its tokenizer")
    return TextInputs(tok, min(max_length, config.block_size))


def media_files(path: str | Path, inputs: Inputs) -> list[str]:
    """`--input` for images or audio: one file, a folder of them (recursively), or a text file of paths."""
    path = Path(path)
    if path.suffix.lower() in inputs.suffixes:
        return [str(path)]
    if path.is_dir():
        files = sorted(str(f) for f in path.rglob("*") if f.suffix.lower() in inputs.suffixes)
        if not files:
            raise BigModelError(f"{path}: no {'/'.join(inputs.suffixes)} files in this folder")
        return files
    if not path.is_file():
        raise BigModelError(f"{path}: no such file or folder")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [str(path.parent / line) for line in lines]


def batches(items: list[Any], inputs: Inputs, size: int) -> list[list[int]]:
    """Indices of `items` cut into batches of similar length (less padding), in length order."""
    order = sorted(range(len(items)), key=lambda i: inputs.length(items[i]))
    return [order[i:i + size] for i in range(0, len(order), size)]
