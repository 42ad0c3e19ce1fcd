"""Time to quality on character-level Shakespeare: `bigmodel pretrain` against nanoGPT's CPU recipe.

Both run here, one after the other, each in its own process, timed from start to exit: bigmodel's
`configs/shakespeare_char.yaml`, and the peer, a faithful re-implementation of nanoGPT's CPU
baby-GPT recipe (bench/_nanogpt_peer.py: 4 layers × 4 heads × 128, context 64, batch 12, lr 1e-3,
100 warm-up iterations, 2,000 iterations, fp32, no biases). Data preparation is not timed. Each
model is then scored on every token of its val split (the last 10% of the text). Last line:
`ratio: X.XX`, the peer's seconds over ours, printed only when our loss is at least as low as the
peer's (same quality, less time).
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
PEER = Path(__file__).with_name("_nanogpt_peer.py")


def run(*args: str) -> tuple[float, str]:
    """Wall seconds and standard output of a Python process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "shakespeare_char.yaml"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, run_dir, peer_dir, report = (Path(tmp) / name for name in ("data", "run", "peer", "eval.json"))
        run("-m", "bigmodel.cli", "prepare", "--input", str(CORPUS), "--out", str(data), "--tokenizer", "char",
            "--no-dedup")
        ours, _ = run("-m", "bigmodel.cli", "pretrain", "--config", args.config, "--data", str(data), "--out",
                      str(run_dir))
        run("-m", "bigmodel.cli", "evaluate", "--ckpt", str(run_dir / "last"), "--data", str(data), "--json",
            str(report), "--dtype", "fp32")  # the peer is scored in fp32 too
        our_loss = json.loads(report.read_text())["loss"]
        print(f"bigmodel pretrain: {ours:.1f} s wall, val loss {our_loss:.4f} (every token of the val split)",
              flush=True)
        peer, _ = run(str(PEER), "train", "--input", str(CORPUS), "--out", str(peer_dir))
        _, scored = run(str(PEER), "evaluate", "--input", str(CORPUS), "--out", str(peer_dir))
        peer_loss = json.loads(scored)["val_loss"]
        print(f"nanoGPT CPU recipe (re-implemented, run here): {peer:.1f} s wall, val loss {peer_loss:.4f}")
    ok = our_loss <= peer_loss
    path = save("shakespeare_time_to_quality", {
        "config": args.config, "bigmodel": {"wall_seconds": ours, "val_loss": our_loss},
        "peer": {"name": "nanoGPT CPU recipe (bench/_nanogpt_peer.py)", "wall_seconds": peer, "val_loss": peer_loss},
        "same_or_better_quality": ok, "ratio": peer / ours if ok else None})
    print(f"figures: {path}")
    if not ok:
        sys.exit("bigmodel's val loss is higher than the peer's: no time ratio at unequal quality")
    print(f"ratio: {peer / ours:.2f}")


if __name__ == "__main__":
    main()
