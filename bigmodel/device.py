"""Which device a command runs on: `--device auto|cpu|cuda|cuda:N` for every verb."""

from __future__ import annotations

import re

import torch

from bigmodel.errors import BigModelError

DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` is this process's GPU when there is one (torchrun's local rank picks which), else the CPU."""
    if preference == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", preference):
        raise BigModelError(f"--device {preference!r}: choose {DEVICE_CHOICES}")
    device = torch.device(preference)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BigModelError(f"--device {preference}: this machine has no CUDA GPU (torch sees none)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BigModelError(f"--device {preference}: only {torch.cuda.device_count()} GPU(s) here")
    return device
