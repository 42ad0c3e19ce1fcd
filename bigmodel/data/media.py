"""Images and WAV files: read and check one, and list a labelled collection of them.

A collection is a folder with one sub-folder per class (`digits/train/7/0042.png`), or a
CSV/TSV/JSONL file whose text column holds paths (relative to that file) next to a label or
transcript column. Every problem is one line naming the file: a corrupt or unreadable file,
an image mode that is not grayscale or colour, audio that is not WAV, at another sample rate,
silent, or longer than the model's context.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from bigmodel.data.labelled import Example, read_columns, read_rows
from bigmodel.errors import BigModelError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
AUDIO_SUFFIXES = (".wav",)
IMAGE_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")  # what converts to grayscale or RGB without guessing
SILENCE = 1e-3  # peak amplitude below which a clip holds nothing to hear


def source_name(source: str | Path | bytes) -> str:
    return "the uploaded data" if isinstance(source, bytes) else str(source)


def opened(source: str | Path | bytes) -> str | Path | io.BytesIO:
    return io.BytesIO(source) if isinstance(source, bytes) else source


def read_image(source: str | Path | bytes, size: int, channels: int) -> torch.Tensor:
    """(channels, size, size) floats in [0, 1]; resized (bilinear) when the image is another size."""
    from PIL import Image, UnidentifiedImageError

    name = source_name(source)
    try:
        with Image.open(opened(source)) as image:
            image.load()
            if image.mode not in IMAGE_MODES:
                raise BigModelError(f"{name}: image mode {image.mode} is not supported (grayscale or RGB images)")
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise BigModelError(f"{name}: no such file") from None
        raise BigModelError(f"{name}: not an image Pillow can read (corrupt or unsupported)") from None
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    return pixels[None] if channels == 1 else pixels.permute(2, 0, 1).contiguous()


def read_audio(source: str | Path | bytes, sample_rate: int, max_samples: int) -> torch.Tensor:
    """A mono waveform (samples,) in [-1, 1] from a WAV file at exactly `sample_rate`."""
    import soundfile as sf

    name = source_name(source)
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise BigModelError(f"{name}: no such file")
    try:
        with sf.SoundFile(opened(source)) as f:
            if f.format != "WAV":
                raise BigModelError(f"{name}: {f.format} audio; bigmodel reads WAV files")
            if f.samplerate != sample_rate:
                raise BigModelError(f"{name}: recorded at {f.samplerate} Hz; the model needs {sample_rate} Hz "
                                    f"(resample, e.g. `sox IN -r {sample_rate} OUT.wav`)")
            if f.frames > max_samples:
                raise BigModelError(f"{name}: {f.frames / sample_rate:.1f} s is longer than the model takes "
                                    f"({max_samples / sample_rate:.1f} s)")
            wave = f.read(dtype="float32", always_2d=True).mean(axis=1)
    except sf.LibsndfileError:
        raise BigModelError(f"{name}: not a WAV file (soundfile cannot read it)") from None
    if not len(wave) or np.abs(wave).max() < SILENCE:
        raise BigModelError(f"{name}: silent (peak amplitude below {SILENCE})")
    return torch.from_numpy(np.ascontiguousarray(wave))


def media_examples(path: str | Path, suffixes: tuple[str, ...], path_column: str, label_column: str
                   ) -> list[Example]:
    """(file path, label) pairs from a folder of class sub-folders or a table of paths."""
    path = Path(path)
    if path.is_dir():
        examples = [Example(str(f), f.parent.name) for f in sorted(path.glob("*/*")) if f.suffix.lower() in suffixes]
        if not examples:
            raise BigModelError(f"{path}: no {'/'.join(suffixes)} files in class sub-folders (FOLDER/LABEL/FILE)")
        return examples
    rows = read_columns(path, [path_column, label_column])
    return [Example(str(path.parent / file), label) for file, label in rows]


def speech_rows(path: str | Path, audio_column: str, text_column: str) -> list[dict[str, str]]:
    """(audio, text, language) rows of a speech table: `dataset speech`'s CSVs (audio, text), a manifest
    (path, text, language), or the columns named. Audio paths are relative to the table."""
    path = Path(path)
    rows = read_rows(path)
    header = set(rows[0][1])
    audio = next((c for c in (audio_column, "audio", "path") if c in header), None)
    text = text_column if text_column in header else "text" if "text" in header else None
    if audio is None or text is None:
        raise BigModelError(f"{path}: a speech table needs an audio column ({audio_column}, audio or path) and a "
                            f"text column ({text_column} or text); it has {', '.join(sorted(header))}")
    return [{"audio": str(path.parent / row[audio].strip()), "text": str(row[text]).strip(),
             "language": str(row.get("language") or "").strip()} for _, row in rows]
