"""Many LoRA adapters over one base: SmolLM2-135M-Instruct served with two adapters kept unmerged,
against the same server answering the base alone, and each adapter's merged checkpoint served alone.

The adapters are LoRA fine-tunes (`finetune --task seq2seq --method lora`, rank 8, 2 epochs) on two
small text tasks made here: a word in capitals, and a word's letters reversed; they are made once
into runs/smollm2_lora_{upper,reverse}. Each measurement sends 12 greedy requests of 48 tokens at
once (prompts: 12 words): base only, then 4 base + 4 per adapter mixed in one batch. The end-of-text
tokens are biased away (`logit_bias` -100), so every request writes all 48 tokens and both sets keep 12
rows to the end. Aggregate decode tokens/s is completion tokens over the wall time of the whole set.
The adapters' texts through the base server are compared with their merged checkpoints' (the issue's
acceptance), token for token.
Last line `ratio: X.XX`: mixed-adapter tokens/s over base-only tokens/s (the cost of the adapters).
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _common import ROOT, save, serving, smollm2_checkpoint

TASKS = {"upper": str.upper, "reverse": lambda w: w[::-1]}
WORDS = ["river", "garden", "silver", "candle", "window", "forest", "pocket", "winter", "basket", "mirror",
         "lantern", "harbor"]


def adapter(name: str) -> Path:
    run = ROOT / "runs" / f"smollm2_lora_{name}"
    if (run / "best" / "adapter.safetensors").is_file():
        return run
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnoprstuvwy") for _ in range(rng.randint(3, 7))) for _ in range(96)]
    data = run.parent / f"smollm2_lora_{name}.jsonl"
    data.write_text("".join(json.dumps({"source": w, "target": TASKS[name](w)}) + "\n" for w in words))
    subprocess.run([sys.executable, "-m", "bigmodel.cli", "finetune", "--init", str(smollm2_checkpoint()), "--task",
                    "seq2seq", "--method", "lora", "--train", str(data), "--val", str(data), "--epochs", "2",
                    "--lr", "3e-3", "--batch-size", "8", "--max-length", "16", "--dtype", "fp32",
                    "--label-smoothing", "0", "--out", str(run)], check=True, cwd=ROOT)
    return run


def ask(base: str, model: str, word: str) -> tuple[str, int]:
    body = {"model": model, "prompt": f"{word}<|endoftext|>", "max_tokens": 48, "temperature": 0,
            "logit_bias": {"0": -100, "2": -100}}  # <|endoftext|>, <|im_end|>: every answer runs to max_tokens
    request = urllib.request.Request(f"{base}/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        out = json.loads(response.read())
    return out["choices"][0]["text"], out["usage"]["completion_tokens"]


def batch(base: str, asks: list[tuple[str, str]]) -> tuple[list[str], float]:
    """Every request at once; the texts and aggregate tokens/s."""
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(asks)) as pool:
        results = list(pool.map(lambda a: ask(base, *a), asks))
    return [r[0] for r in results], sum(r[1] for r in results) / (time.perf_counter() - start)


def main() -> None:
    runs = {name: adapter(name) for name in TASKS}
    flags = ("--dtype", "fp32", "--max-batch", "12", "--prefix-cache-mb", "0")
    with serving(smollm2_checkpoint(), *flags, "--lora-modules", *(f"{n}={r}" for n, r in runs.items())) as base:
        ask(base, "smollm2", "warm")
        _, base_only = batch(base, [("smollm2", w) for w in WORDS])
        mixed_asks = [(["smollm2", "smollm2:upper", "smollm2:reverse"][i % 3], w) for i, w in enumerate(WORDS)]
        mixed_texts, mixed = batch(base, mixed_asks)
    identical, compared = 0, 0
    for name, run in runs.items():
        with serving(run, *flags) as merged_base:
            mine = [(w, t) for (m, w), t in zip(mixed_asks, mixed_texts, strict=True) if m.endswith(f":{name}")]
            merged, _ = batch(merged_base, [("m", w) for w, _ in mine])
        identical += sum(a == b for (_, a), b in zip(mine, merged, strict=True))
        compared += len(mine)
        print(f"{name}: e.g. {mine[0][0]!r} -> {mine[0][1][:40]!r}")
    print(f"tokens/s, 12 requests at once: base only {base_only:.1f}; base + 2 adapters mixed {mixed:.1f}")
    print(f"adapter answers equal to their merged checkpoints': {identical} of {compared}")
    save("multi_lora", {"base_only_tokens_per_s": base_only, "mixed_tokens_per_s": mixed,
                        "identical_to_merged": identical, "compared": compared})
    print(f"ratio: {mixed / base_only:.2f}")


if __name__ == "__main__":
    main()
