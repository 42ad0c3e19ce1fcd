"""LoRA on SmolLM2-135M-Instruct: SST-2 sentiment as text to text ("positive" / "negative"), before and after.

The commands a user would run, in order: `bigmodel evaluate --task seq2seq` on the packaged GGUF model,
`bigmodel finetune --init smollm2 --task seq2seq --method lora` on the first `--train` SST-2 sentences for
`--epochs`, and the same evaluation of the result on the first `--val` dev sentences. A decoder-only model reads
`sentence <|endoftext|> label`; the untuned model has never seen that format, so its "before" is the floor.
Figures: exact match and chrF before and after, and the fine-tune's wall time (loading included).
Last line `ratio: X.XX`: exact match after over before (+1 each, so a floor of 0 stays finite).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import save

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def write_pairs(source: Path, target: Path, n: int) -> None:
    with source.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))[:n]
    with target.open("w", encoding="utf-8") as out:
        for row in rows:
            label = "positive" if row["label"] == "1" else "negative"
            out.write(json.dumps({"sentence": row["sentence"].strip(), "label": label}) + "\n")


def bigmodel(*args: str) -> float:
    """Run a verb as a user would; its wall time."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bigmodel.cli", *args], check=True)
    return time.perf_counter() - start


def scores(ckpt: str, val: Path, out: Path) -> dict:
    bigmodel("evaluate", "--task", "seq2seq", "--ckpt", ckpt, "--data", str(val), "--source-column", "sentence",
             "--target-column", "label", "--max-new-tokens", "3", "--max-length", "64", "--out", str(out))
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_pairs(SST2 / "train.tsv", work / "train.jsonl", args.train)
        write_pairs(SST2 / "dev.tsv", work / "val.jsonl", args.val)
        before = scores("smollm2", work / "val.jsonl", work / "before")
        seconds = bigmodel("finetune", "--init", "smollm2", "--task", "seq2seq", "--method", "lora",
                           "--lora-r", str(args.lora_r), "--train", str(work / "train.jsonl"),
                           "--val", str(work / "val.jsonl"), "--source-column", "sentence", "--target-column",
                           "label", "--epochs", str(args.epochs), "--lr", str(args.lr), "--batch-size", "16",
                           "--max-length", "64", "--label-smoothing", "0", "--out", str(work / "run"))
        after = scores(str(work / "run"), work / "val.jsonl", work / "after")
        outputs = Counter(json.loads(line)["output"] for line in (work / "after" / "outputs.jsonl").open())
        labels = Counter(json.loads(line)["label"] for line in (work / "val.jsonl").open())
    keep = ("exact_match", "chrf", "examples")
    figures = {"task": f"SST-2 as text to text, {args.train} training sentences, {args.val} dev sentences",
               "lora_r": args.lora_r, "lr": args.lr, "epochs": args.epochs,
               "before": {k: before[k] for k in keep}, "after": {k: after[k] for k in keep},
               "outputs_after": dict(outputs.most_common(5)),
               "majority_label_share": 100 * labels.most_common(1)[0][1] / args.val,
               "finetune_wall_seconds": seconds, "train_examples_per_s_with_startup": args.train / seconds,
               "ratio": (after["exact_match"] + 1) / (before["exact_match"] + 1)}
    path = save("smollm2_lora", figures)
    print(f"before: exact match {before['exact_match']:.1f}%, chrF {before['chrf']:.1f}")
    print(f"after LoRA r={args.lora_r}, {args.epochs} epochs of {args.train} ({seconds:.0f} s with loading): "
          f"exact match {after['exact_match']:.1f}%, chrF {after['chrf']:.1f}")
    print(f"outputs after: {dict(outputs.most_common(5))}; the majority label is "
          f"{figures['majority_label_share']:.1f}% of the dev sentences")
    print(f"figures: {path}")
    print(f"ratio: {figures['ratio']:.2f}")


if __name__ == "__main__":
    main()
