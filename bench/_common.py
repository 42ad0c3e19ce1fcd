"""Shared helpers for the side-by-side benchmarks: timing, peak FLOPs, result files."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak_flops(dtype: torch.dtype = torch.float32, n: int = 2048) -> float:
    """This machine's measured dense matmul throughput, the denominator of MFU."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats=10)


def save(name: str, figures: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    figures = {"machine": {"cpu_count": torch.get_num_threads(), "platform": platform.platform(),
                           "torch": torch.__version__}, **figures}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2))
    return path
