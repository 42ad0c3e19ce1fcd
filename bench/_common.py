"""Shared helpers for the side-by-side benchmarks: timing, peak FLOPs, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bigmodel.device import FAST_ENOUGH, bf16_speedup, machine, machine_line

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
    """Write the figures, with the machine they were measured on, to bench/results/NAME[.CAPABILITY].json,
    and print that machine: a figure means little without it. Runs on an imitated AVX2 CPU
    (`ATEN_CPU_CAPABILITY=avx2`) get their own file beside the native one."""
    RESULTS.mkdir(exist_ok=True)
    figures = {"machine": {**machine(), "platform": platform.platform()}, **figures}
    suffix = "" if "ATEN_CPU_CAPABILITY" not in os.environ else f".{torch.backends.cpu.get_cpu_capability().lower()}"
    path = RESULTS / f"{name}{suffix}.json"
    path.write_text(json.dumps(figures, indent=2))
    print(f"machine: {machine_line()}")
    return path


def formats_here(width: int, rows: int) -> list[str]:
    """fp32, and bf16 where `--dtype auto` would choose it on this machine for these shapes; elsewhere
    a bf16 row would time a format no one should run here (tens of times slower on AVX2-only CPUs)."""
    speedup = bf16_speedup(width, rows)
    if speedup >= FAST_ENOUGH:
        return ["fp32", "bf16"]
    print(f"bf16 left out: {speedup:.2f}x fp32 at width {width}, {rows} rows on this CPU", flush=True)
    return ["fp32"]
