"""Where a command runs and in which number format: `--device auto|cpu|cuda|cuda:N` and
`--dtype auto|fp32|bf16|fp16`, decided here for every verb."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bigmodel import disk
from bigmodel.config import DTYPES
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


TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FAST_ENOUGH = 1.2  # bf16 must beat fp32 by this much on a real step: less is noise, not worth the lost precision
TOO_SLOW = 0.5  # an explicit bf16 that runs at less than this fraction of fp32's speed gets a warning
PROBE_REVISION = 2  # raised when what a probe times changes: answers cached before no longer apply


@dataclass(frozen=True)
class Precision:
    """The number format a run computes in, and why it was chosen (printed once, so figures say it)."""

    name: str  # fp32 | bf16 | fp16
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.name]

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """A gradient scaler that does its work for fp16 only (bf16 has fp32's range); disabled it is a no-op."""
        return torch.amp.GradScaler(device.type, enabled=self.name == "fp16")

    def line(self) -> str:
        return f"{self.name}: {self.reason}"


def autocast(dtype: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for a concrete `dtype` (fp32 | bf16 | fp16): matrix products in the low format,
    the weights and reductions in fp32; nothing for fp32."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=TORCH_DTYPES[dtype])


def machine() -> dict[str, str | int]:
    """What decides speed here: CPU model, the kernels PyTorch picked, cores, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default"),
            "cores": os.cpu_count() or 1, "threads": torch.get_num_threads(), "torch": torch.__version__}


def machine_line() -> str:
    m = machine()
    isa = "" if m["onednn_isa"] == "default" else f", oneDNN {m['onednn_isa']}"
    return f"{m['cpu']} ({m['capability']}{isa}), {m['cores']} cores, {m['threads']} threads, torch {m['torch']}"


def _probe_file() -> Path:
    return Path(os.environ.get("BIGMODEL_CACHE", Path.home() / ".cache" / "bigmodel")) / "dtype_probe.json"


Step = Callable[[str], object]  # runs one step of the job in the named format (fp32 | bf16)


def kernel_speedup(width: int, repeats: int = 5) -> float:
    """fp32 time over bf16 time of one matrix product at this width (2,048 rows): a cheap first look that
    tells a CPU with no fast bf16 kernels (AVX2 only: tens of times slower) from one that has them."""
    x, w = torch.randn(2048, width), torch.randn(4 * width, width)
    return _alternating({"fp32": lambda: F.linear(x, w), "bf16": lambda: F.linear(x.bfloat16(), w.bfloat16())},
                        repeats)


def _alternating(runs: dict[str, Callable[[], object]], repeats: int) -> float:
    """fp32's median time over bf16's, timed in turns after a warm-up so a noisy neighbour slows both alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for i in range(2 + repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                if i >= 2:
                    times[name].append(time.perf_counter() - start)
    return statistics.median(times["fp32"]) / statistics.median(times["bf16"])


def measure_bf16_speedup(width: int, make_step: Callable[[], Step], repeats: int = 5) -> float:
    """bf16's speed-up over fp32 for a job: the kernel look first; where bf16 kernels are fast, one real
    step of the job in each format (small models lose to autocast's casts what their products gain)."""
    kernels = kernel_speedup(width)
    if kernels < TOO_SLOW:
        return kernels
    step = make_step()
    return _alternating({name: functools.partial(step, name) for name in ("fp32", "bf16")}, repeats)


def bf16_speedup(shape: str, width: int, make_step: Callable[[], Step]) -> float:
    """`measure_bf16_speedup`, measured once per machine, torch version and job `shape`, then cached."""
    key = "|".join(str(v) for v in (*machine().values(), PROBE_REVISION, shape))
    path = _probe_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache[key] = round(measure_bf16_speedup(width, make_step), 3)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1))
            disk.replace(tmp, path)
        except OSError:  # a read-only home only costs a re-measure next time
            pass
    return cache[key]


def decide_cpu(requested: str, speedup: float) -> tuple[Precision, str | None]:
    """The CPU's choice for `requested` given bf16's measured speed-up over fp32; and a warning, if any."""
    shown = f"bf16 {speedup:.2f}x fp32 here"
    if requested == "auto":
        if speedup >= FAST_ENOUGH:
            return Precision("bf16", f"{speedup:.1f}x fp32 here"), None
        why = "this CPU has no fast bf16" if speedup < TOO_SLOW else "bf16 is not faster at this size"
        return Precision("fp32", f"{why} ({shown})"), None
    if requested == "bf16":
        warning = None
        if speedup < TOO_SLOW:
            warning = (f"--dtype bf16 runs {1 / speedup:.0f}x slower than fp32 on this CPU (no fast bf16); "
                       "--dtype auto would choose fp32")
        return Precision("bf16", f"asked for ({shown})"), warning
    return Precision(requested, "asked for"), None


def choose_precision(requested: str, device: torch.device, shape: str, width: int,
                     make_step: Callable[[], Step]) -> Precision:
    """`--dtype auto|fp32|bf16|fp16` made concrete for this device and a job (`shape` names it in the
    cache; `make_step` builds what runs one step of it in a format; `width` is the model's).

    CUDA: bf16 where the GPU supports it, else fp16 (training then scales the loss). CPU: bf16 only
    where a short probe of this job finds it faster than fp32; many CPUs (AVX2 without AVX-512
    BF16/AMX) run bf16 tens of times slower. An explicit choice is kept, with a warning when it is
    much slower."""
    if requested not in DTYPES:
        raise BigModelError(f"--dtype must be one of {', '.join(DTYPES)}, not {requested!r}")
    if device.type == "cuda":
        if requested != "auto":
            return Precision(requested, "asked for")
        if torch.cuda.is_bf16_supported(including_emulation=False):  # a T4 or V100 only emulates it: slow
            return Precision("bf16", "this GPU supports it")
        return Precision("fp16", "this GPU has no bf16 (loss scaling on)")
    if requested in ("fp32", "fp16"):
        return Precision(requested, "asked for")
    precision, warning = decide_cpu(requested, bf16_speedup(shape, width, make_step))
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    return precision
