"""Shared helpers for the side-by-side benchmarks: timing, peak FLOPs, result files."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from bigmodel.config import ModelConfig
from bigmodel.device import machine, machine_line
from bigmodel.model.probe import training_precision

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = ROOT / "runs" / "smollm2"  # SmolLM2-135M-Instruct converted from its packaged GGUF file, once


def smollm2_checkpoint() -> Path:
    if not SMOLLM2.is_dir():
        subprocess.run([sys.executable, "-m", "bigmodel.cli", "convert", "--from-hf", "smollm2", "--out", str(SMOLLM2)],
                       check=True, cwd=ROOT)
    return SMOLLM2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(command: list[str], ready: str, quiet: bool = False) -> Iterator[str]:
    """`command` (ending in a `--port` flag, which this gives a free port) as a server until the block ends;
    its base URL once GET `ready` answers 200."""
    port = free_port()
    output = subprocess.DEVNULL if quiet else None
    server = subprocess.Popen([*command, str(port)], cwd=ROOT, stdout=output, stderr=output)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if urllib.request.urlopen(f"{base}{ready}", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=60)


def serving(ckpt: Path, *flags: str) -> contextlib.AbstractContextManager[str]:
    """`bigmodel serve --ckpt CKPT FLAGS` on a free port; its base URL once /health answers, until the block ends."""
    return server_process([sys.executable, "-m", "bigmodel.cli", "serve", "--ckpt", str(ckpt), *flags, "--port"],
                          "/health")


@contextlib.contextmanager
def llama_cpp_serving(*flags: str) -> Iterator[str | None]:
    """llama.cpp's OpenAI server (llama-cpp-python's, `python -m llama_cpp.server`) on SmolLM2's own GGUF file,
    2 threads, a 4,096-token context: its base URL once it answers, or None (said once) where llama-cpp-python
    is not installed (`pip install "llama-cpp-python[server]"` compiles llama.cpp: 10 to 35 minutes here)."""
    import importlib.util

    from bigmodel.model.formats import find_pretrained

    if importlib.util.find_spec("llama_cpp") is None:
        print("llama.cpp column left out: llama-cpp-python is not installed here", flush=True)
        yield None
        return
    with server_process([sys.executable, "-m", "llama_cpp.server", "--model", str(find_pretrained("smollm2")),
                         "--n_ctx", "4096", "--n_threads", "2", "--n_threads_batch", "2", *flags, "--port"],
                        "/v1/models", quiet=True) as base:
        yield base


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
    """Write the figures, with the machine, date and command they were measured with, to
    bench/results/NAME[.CAPABILITY].json, and print that machine: a figure means little without it. Runs on an
    imitated AVX2 CPU
    (`ATEN_CPU_CAPABILITY=avx2`) get their own file beside the native one."""
    RESULTS.mkdir(exist_ok=True)
    command = " ".join(["python", str(Path(sys.argv[0]).resolve().relative_to(ROOT)), *sys.argv[1:]])
    figures = {"machine": {**machine(), "platform": platform.platform()},
               "date": time.strftime("%Y-%m-%d", time.gmtime()), "command": command, **figures}
    suffix = "" if "ATEN_CPU_CAPABILITY" not in os.environ else f".{torch.backends.cpu.get_cpu_capability().lower()}"
    path = RESULTS / f"{name}{suffix}.json"
    path.write_text(json.dumps(figures, indent=2))
    print(f"machine: {machine_line()}")
    return path


def formats_here(config: ModelConfig, batch: int, length: int) -> list[str]:
    """fp32, and bf16 where `--dtype auto` would train this model in it on this machine; elsewhere a bf16
    row would time a format no one should run here (tens of times slower on AVX2-only CPUs)."""
    precision = training_precision("auto", torch.device("cpu"), config, batch, length)
    if precision.name == "bf16":
        return ["fp32", "bf16"]
    print(f"bf16 left out: auto chooses {precision.line()}", flush=True)
    return ["fp32"]
