"""LoRA on SmolLM2-135M-Instruct: SST-2 sentiment as text to text ("positive" / "negative"), before and after.

The commands a user would run, in order: `bigmodel evaluate --task seq2seq` on the packaged GGUF model,
`bigmodel finetune --init smollm2 --task seq2seq --method lora` on the first `--train` SST-2 sentences for
`--epochs`, and the same evaluation of the result on the first `--val` dev sentences. A decoder-only model reads
`sentence <|endoftext|> label`; the untuned model has never seen that format, so its "before" is the floor.
Figures: exact match and chrF before and after, and the fine-tune's wall time (loading included).

The peer, in the same run: `peft` LoRA (same rank, alpha 2r, dropout 0.05, every projection) on transformers'
LlamaForCausalLM loaded from the same GGUF file, trained on the same token sequences (loss on the target
and its end token only), batch size, epochs and linear schedule with 10% warm-up, in the number format
`--dtype auto` picks for this model here (bf16 autocast where this CPU multiplies bf16 faster, else fp32;
both sides run it), then greedy decoding of 3 tokens per dev sentence. Last line `ratio: X.XX`: our
training examples/s over the peer's.
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

import torch
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


def peer(train: Path, val: Path, args: argparse.Namespace, dtype: str) -> dict:
    """LoRA with peft on transformers' model of the same file: training examples/s and dev exact match."""
    import random

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, get_linear_schedule_with_warmup

    from bigmodel.model.formats import find_pretrained, read_tokenizer

    path = find_pretrained("smollm2")
    tok = read_tokenizer(path)
    end = tok.token_to_id("<|endoftext|>")
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.05,
                                             target_modules=targets, task_type="CAUSAL_LM"))
    rows = [json.loads(line) for line in train.open()]
    pairs = [(tok.encode(r["sentence"]).ids[-(64 - 4):], tok.encode(r["label"]).ids) for r in rows]
    steps = args.epochs * -(-len(pairs) // 16)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    model.train()
    rng, start = random.Random(0), time.perf_counter()
    for _ in range(args.epochs):
        rng.shuffle(pairs)
        for i in range(0, len(pairs), 16):
            batch = [s + [end] + t + [end] for s, t in pairs[i:i + 16]]
            width = max(map(len, batch))
            ids = torch.tensor([b + [end] * (width - len(b)) for b in batch])
            labels = torch.full_like(ids, -100)
            for row, (s, t) in enumerate(pairs[i:i + 16]):
                labels[row, len(s) + 1:len(s) + 2 + len(t)] = ids[row, len(s) + 1:len(s) + 2 + len(t)]
            mask = torch.tensor([[1] * len(b) + [0] * (width - len(b)) for b in batch])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
    rate = args.epochs * len(pairs) / (time.perf_counter() - start)
    model.eval()
    hits, dev = 0, [json.loads(line) for line in val.open()]
    with torch.inference_mode():
        for r in dev:
            x = torch.tensor([tok.encode(r["sentence"]).ids[-60:] + [end]])
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=3, do_sample=False,
                                 eos_token_id=end, pad_token_id=end)[0, x.size(1):].tolist()
            hits += tok.decode([t for t in out if t != end]).strip() == r["label"]
    return {"train_examples_per_s": rate, "exact_match": 100 * hits / len(dev)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    from bigmodel.model.checkpoint import load_checkpoint
    from bigmodel.model.probe import training_precision

    config = load_checkpoint("smollm2")[0].config
    dtype = training_precision("auto", torch.device("cpu"), config, 16, 40).name  # both sides train in it
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_pairs(SST2 / "train.tsv", work / "train.jsonl", args.train)
        write_pairs(SST2 / "dev.tsv", work / "val.jsonl", args.val)
        before = scores("smollm2", work / "val.jsonl", work / "before")
        seconds = bigmodel("finetune", "--init", "smollm2", "--task", "seq2seq", "--method", "lora",
                           "--lora-r", str(args.lora_r), "--train", str(work / "train.jsonl"),
                           "--val", str(work / "val.jsonl"), "--source-column", "sentence", "--target-column",
                           "label", "--epochs", str(args.epochs), "--lr", str(args.lr), "--batch-size", "16",
                           "--max-length", "64", "--label-smoothing", "0", "--dtype", dtype,
                           "--out", str(work / "run"))
        after = scores(str(work / "run"), work / "val.jsonl", work / "after")
        outputs = Counter(json.loads(line)["output"] for line in (work / "after" / "outputs.jsonl").open())
        labels = Counter(json.loads(line)["label"] for line in (work / "val.jsonl").open())
        ours_rate = [line.split(",") for line in (work / "run" / "metrics.csv").read_text().splitlines()]
        ours_rate = float(ours_rate[-1][ours_rate[0].index("examples_per_s")])
        theirs = peer(work / "train.jsonl", work / "val.jsonl", args, dtype)
    keep = ("exact_match", "chrf", "examples")
    figures = {"task": f"SST-2 as text to text, {args.train} training sentences, {args.val} dev sentences",
               "lora_r": args.lora_r, "lr": args.lr, "epochs": args.epochs, "dtype": dtype,
               "before": {k: before[k] for k in keep}, "after": {k: after[k] for k in keep},
               "outputs_after": dict(outputs.most_common(5)),
               "majority_label_share": 100 * labels.most_common(1)[0][1] / args.val,
               "finetune_wall_seconds": seconds, "train_examples_per_s_with_startup": args.train / seconds,
               "train_examples_per_s": {"bigmodel": ours_rate, "peft + transformers": theirs["train_examples_per_s"]},
               "peer_exact_match_after": theirs["exact_match"],
               "ratio": ours_rate / theirs["train_examples_per_s"]}
    path = save("smollm2_lora", figures)
    print(f"before: exact match {before['exact_match']:.1f}%, chrF {before['chrf']:.1f}")
    print(f"after LoRA r={args.lora_r}, {args.epochs} epochs of {args.train} ({seconds:.0f} s with loading): "
          f"exact match {after['exact_match']:.1f}%, chrF {after['chrf']:.1f}")
    print(f"outputs after: {dict(outputs.most_common(5))}; the majority label is "
          f"{figures['majority_label_share']:.1f}% of the dev sentences")
    print(f"training in {dtype}: bigmodel {ours_rate:.1f} examples/s, peft + transformers "
          f"{theirs['train_examples_per_s']:.1f}; the peer's exact match after: {theirs['exact_match']:.1f}%")
    print(f"figures: {path}")
    print(f"ratio: {figures['ratio']:.2f}")


if __name__ == "__main__":
    main()
