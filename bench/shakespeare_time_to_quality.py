"""Wall time for `bigmodel pretrain` to reach val loss <= 1.88 on character-level Shakespeare.

Prepares `../shared/data/tinyshakespeare/input.txt` (not timed), then times the whole
`bigmodel pretrain --config configs/shakespeare_char.yaml` process from start to exit and
scores the result on the full validation split with `bigmodel evaluate`. The peer figure
is quoted, not run: nanoGPT's CPU recipe reaches 1.886 in 111 s on this machine kind
(issue #2); nanoGPT itself cannot be fetched here. Last line: `ratio: X.XX` (111 s over our
seconds; above 1 means we are faster), printed only if our loss reaches the target.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import save

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
NANOGPT_SECONDS, NANOGPT_LOSS, TARGET = 111.0, 1.886, 1.88


def bigmodel(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bigmodel.cli", *args], capture_output=True, text=True, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "shakespeare_char.yaml"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, run = Path(tmp) / "data", Path(tmp) / "run"
        bigmodel("prepare", "--input", str(CORPUS), "--out", str(data), "--tokenizer", "char", "--no-dedup")
        start = time.perf_counter()
        bigmodel("pretrain", "--config", args.config, "--data", str(data), "--out", str(run))
        seconds = time.perf_counter() - start
        rows = (run / "metrics.csv").read_text().splitlines()
        trainer_val = float(rows[-1].split(",")[2])
        report = Path(tmp) / "eval.json"
        bigmodel("evaluate", "--ckpt", str(run / "last"), "--data", str(data), "--json", str(report))
        full_val = json.loads(report.read_text())["loss"]
    ok = full_val <= TARGET and trainer_val <= TARGET
    path = save("shakespeare_time_to_quality", {
        "config": args.config, "wall_seconds": seconds, "trainer_val_loss": trainer_val,
        "full_split_val_loss": full_val, "target": TARGET, "reached": ok,
        "peer": {"name": "nanoGPT CPU recipe", "source": "quoted from issue #2", "seconds": NANOGPT_SECONDS,
                 "val_loss": NANOGPT_LOSS}})
    print(f"bigmodel pretrain: {seconds:.1f} s wall; val loss {trainer_val:.4f} (trainer's estimate), "
          f"{full_val:.4f} (every token of the val split)")
    print(f"nanoGPT (quoted, not run): {NANOGPT_SECONDS:.0f} s to {NANOGPT_LOSS}")
    print(f"figures: {path}")
    if not ok:
        sys.exit(f"target {TARGET} not reached")
    print(f"ratio: {NANOGPT_SECONDS / seconds:.2f}")


if __name__ == "__main__":
    main()
