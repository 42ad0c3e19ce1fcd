"""Front ends that turn images and audio into the vectors the Transformer's blocks read.

The blocks never know the modality: text goes through the token embedding, an image through
`PatchEmbedding` (ViT: square patches → one linear map each, a learned [CLS] vector in front),
a waveform through `LogMelFrontend` (log-mel spectrogram, then two 1-D convolutions that halve
the frame rate, as Whisper's encoder does). Positions are added afterwards by the Transformer,
as for tokens.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bigmodel.config import HOP_SECONDS, WINDOW_SECONDS, ModelConfig
from bigmodel.errors import BigModelError


class PatchEmbedding(nn.Module):
    """(B, C, H, W) pixels in [0, 1] → (B, 1 + patches, n_embd): [CLS] then the patches row by row."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # a convolution whose stride is its size is exactly one linear map per patch
        self.proj = nn.Conv2d(config.channels, config.n_embd, config.patch_size, stride=config.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, config.n_embd))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        expected = (self.config.channels, self.config.image_size, self.config.image_size)
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != expected:
            raise BigModelError(f"images must be (batch, {', '.join(map(str, expected))}); got {tuple(pixels.shape)}")
        x = self.proj((pixels * 2 - 1).to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)  # bf16 weights too
        return torch.cat((self.cls.expand(len(x), -1, -1).to(x.dtype), x), dim=1)


class MelStem(nn.Module):
    """(B, n_mels, frames) log-mel features → (B, frames / 2, n_embd): Whisper's two GELU convolutions, the
    second of stride 2. A Whisper encoder reads features computed outside (`infer/whisper.py` slides 30-s
    windows over a whole recording's spectrogram); `LogMelFrontend` computes them itself."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(config.n_mels, config.n_embd, 3, padding=1)
        self.conv2 = nn.Conv1d(config.n_embd, config.n_embd, 3, stride=2, padding=1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(mel.to(self.conv1.weight.dtype)))
        return F.gelu(self.conv2(x)).transpose(1, 2)


class LogMelFrontend(MelStem):
    """(B, samples) waveform → (B, frames / 2, n_embd): log-mel features, then the convolutions."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.n_fft = round(WINDOW_SECONDS * config.sample_rate)
        self.hop = round(HOP_SECONDS * config.sample_rate)
        self.register_buffer("window", torch.hann_window(self.n_fft))
        self.register_buffer("filters", mel_filters(config.sample_rate, self.n_fft, config.n_mels))

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, frames), scaled to about [-1, 1] (Whisper's 8-decade floor below each clip's peak)."""
        spec = torch.stft(wave.float(), self.n_fft, self.hop, window=self.window.float(),  # fp32 even in a bf16 model
                          pad_mode="constant", return_complex=True)  # constant: as batches pad
        mel = (self.filters.float() @ spec.abs().pow(2)).clamp(min=1e-10).log10()
        mel = torch.maximum(mel, mel.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (mel + 4.0) / 4.0

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2:
            raise BigModelError(f"audio must be (batch, samples); got {tuple(wave.shape)}")
        return super().forward(self.log_mel(wave))


def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """librosa's Slaney mel filterbank, (n_mels, n_fft // 2 + 1)."""
    try:
        import librosa
    except ImportError:
        raise BigModelError("audio models need librosa: pip install 'bigmodel[audio]'") from None
    return torch.from_numpy(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)).float()


def make_frontend(config: ModelConfig) -> nn.Module:
    return PatchEmbedding(config) if config.frontend == "patches" else LogMelFrontend(config)
