"""Peak memory per process for the gpt2-medium preset (355M parameters) trained by two processes:
FSDP2 (`--strategy fsdp`, sharded per block) against DDP, in one run, same data and config.

    python bench/fsdp_memory.py [--iters 2] [--block-size 256]

Each strategy runs under `torchrun --nproc_per_node 2` on the CPU (gloo); every process reports its
peak resident set size. Writes bench/results/fsdp_memory.json; the last line is `ratio: X.XX`, DDP's
largest per-process peak over FSDP's (above 1: FSDP needs less memory per process).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import free_port, save

from bigmodel.config import DataConfig
from bigmodel.data.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def run(strategy: str, data: Path, out: Path, iters: int, block_size: int) -> list[dict]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(ROOT / "bench" / "_fsdp_worker.py"), "--data", str(data),
               "--out", str(out), "--preset", "gpt2-medium", "--vocab-size", "50304", "--block-size",
               str(block_size), "--batch-size", "1", "--max-iters", str(iters), "--eval-interval", str(iters),
               "--eval-iters", "1", "--warmup-iters", "1", "--strategy", strategy]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return sorted((json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")),
                  key=lambda r: r["rank"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=256)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fsdp_memory_"))
    prepare(DataConfig(input=[str(TEXT)], out=str(work / "data"), tokenizer="char", dedup=False))
    figures = {}
    for strategy in ("ddp", "fsdp"):
        figures[strategy] = run(strategy, work / "data", work / strategy, args.iters, args.block_size)
        print(f"{strategy}: peak RSS per process " + ", ".join(f"rank {r['rank']} {r['peak_rss_mb']:,.0f} MB"
                                                            for r in figures[strategy]), flush=True)
    peak = {s: max(r["peak_rss_mb"] for r in rows) for s, rows in figures.items()}
    path = save("fsdp_memory", {"preset": "gpt2-medium", "vocab_size": 50304, "block_size": args.block_size,
                                "batch_size": 1, "iters": args.iters, "processes": 2, "per_process": figures,
                                "max_peak_rss_mb": peak})
    print(f"results {path}")
    print(f"ratio: {peak['ddp'] / peak['fsdp']:.2f}")


if __name__ == "__main__":
    main()
