"""What sealing costs at load time: a 124M GPT-2-shaped checkpoint, plain vs AES-GCM sealed.

Both go through `load_checkpoint` as every command does (model built, weights read and
checked, tokenizer read): the plain one memory-maps its weights and checks their SHA-256
against the manifest; the sealed one decrypts every file in memory. Loads alternate, so drift
on a noisy machine hits both. Last line `ratio: X.XX`: plain load time over sealed load time
(1.00 means sealing is free; the acceptance bar is ≥ 0.77, i.e. sealed ≤ 1.3× plain).
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import save
from tokenizers import Tokenizer, models

from bigmodel.config import ModelConfig, preset
from bigmodel.model.checkpoint import WEIGHTS, Storage, load_checkpoint, save_checkpoint
from bigmodel.model.sealed import Key
from bigmodel.model.transformer import Transformer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    os.environ["BENCH_SEAL_KEY"] = base64.b64encode(os.urandom(32)).decode()
    os.environ["BENCH_SEAL_PASSPHRASE"] = "a passphrase for the benchmark"
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50257, **preset("gpt2")))
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    storages = {"plain": Storage(), "plain, --no-verify": Storage(verify=False),
                "sealed (raw key)": Storage(Key.from_env("BENCH_SEAL_KEY")),
                "sealed (passphrase)": Storage(Key.from_env("BENCH_SEAL_PASSPHRASE"))}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {name: Path(tmp) / str(i) for i, name in enumerate(storages)}
        write_seconds = {}
        for name, storage in storages.items():
            start = time.perf_counter()
            save_checkpoint(folders[name], model, tok, {}, storage=storage)
            write_seconds[name] = time.perf_counter() - start
        weights_mb = (folders["plain"] / WEIGHTS).stat().st_size / 1e6
        times: dict[str, list[float]] = {name: [] for name in storages}
        for _ in range(args.repeats + 1):  # the first round warms the page cache and is dropped
            for name, storage in storages.items():
                start = time.perf_counter()
                loaded, _, _ = load_checkpoint(folders[name], storage=storage)
                times[name].append(time.perf_counter() - start)
                del loaded
    medians = {name: statistics.median(t[1:]) for name, t in times.items()}
    ratio = medians["plain"] / medians["sealed (raw key)"]
    path = save("sealed_load", {"shape": "gpt2 124M", "weights_mb": weights_mb, "load_seconds": medians,
                                "write_seconds": write_seconds, "all_load_seconds": times, "ratio": ratio})
    for name, seconds in medians.items():
        print(f"{name:>20}: load {seconds:.3f} s (median of {args.repeats}), {seconds / medians['plain']:.2f}x plain; "
              f"write {write_seconds[name]:.2f} s")
    print(f"weights {weights_mb:.0f} MB; figures: {path}")
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
