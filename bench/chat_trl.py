"""Chat SFT and DPO of SmolLM2-135M-Instruct with LoRA: bigmodel beside TRL's SFTTrainer and DPOTrainer.

Same data (the first `--examples` rows of `bigmodel dataset chat` and `dataset preference`: translate a
Debian UI string into Chinese, summarise a standard-library function), same weights (TRL: the GGUF file exported
by `bigmodel export --to-hf`, since transformers will not train a model loaded from GGUF), same template,
LoRA r 8 (alpha 16, dropout 0.05) on every projection, batch 8, one epoch, lr 1e-3 with a linear schedule
and 10% warm-up, `--max-length` 256, the number format `--dtype auto` picks here, loss on the assistant's
tokens only (TRL: prompt/completion rows, `completion_only_loss`), DPO β 0.1 against the base with its
adapters off (both sides). bigmodel also runs SFT with `--packing`. Each side runs with and without
activation checkpointing (each block's activations recomputed in the backward pass to save memory), which
TRL's configs turn on by default and bigmodel's leave off. Each run is a fresh process, so its peak RSS is its
own. Figures: training tokens/s (every token of every row, prompt included, over the whole epoch's
training time: bigmodel's windows between evaluations summed, TRL's `train_runtime`, which has none), the
loss at each quarter, peak RSS.
Last line `ratio: X.XX`: our SFT tokens/s (unpacked) over TRL's faster setting.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import save

WORKER = """
import json, sys, time, torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
import trl

kind, data, out, steps_per_log, dtype, folder, checkpointing = sys.argv[1:8]
steps_per_log = int(steps_per_log)
rows = [json.loads(line) for line in open(data)]
tok = AutoTokenizer.from_pretrained(folder)  # transformers refuses to train a model it loaded from GGUF
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
common = dict(output_dir=out, per_device_train_batch_size=8, num_train_epochs=1, learning_rate=1e-3,
              lr_scheduler_type="linear", warmup_steps=int(0.1 * -(-len(rows) // 8)), weight_decay=0.01,
              max_grad_norm=1.0, max_length=256,
              logging_steps=steps_per_log, save_strategy="no", report_to=[], use_cpu=True, seed=1337,
              bf16=dtype == "bf16", dataloader_num_workers=0, activation_checkpointing=checkpointing == "on")
if kind == "sft":
    pairs = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
    trainer = trl.SFTTrainer(model=model, args=trl.SFTConfig(completion_only_loss=True, **common),
                             train_dataset=Dataset.from_list(pairs), processing_class=tok, peft_config=lora)
else:
    pairs = [{"prompt": r["messages"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
              "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]
    trainer = trl.DPOTrainer(model=model, args=trl.DPOConfig(beta=0.1, **common),
                             train_dataset=Dataset.from_list(pairs), processing_class=tok, peft_config=lora)
result = trainer.train()
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
print("RESULT", json.dumps({"seconds": result.metrics["train_runtime"], "losses": losses}))
"""


def peak_rss_mb(command: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run `command` in a fresh process of its own; its output and peak RSS (MB)."""
    probe = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
             "sys.stdout.write(done.stdout); sys.stderr.write(done.stderr);"
             "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)")
    done = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command[-5:])} failed:\n{done.stderr[-3000:]}")
    peak = next(float(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("PEAK"))
    return done, peak / 1024


def tokens_per_row(data: Path, preference: bool) -> float:
    """Tokens bigmodel (and TRL: same template, same tokenizer) trains on per row, prompt included."""
    from bigmodel.infer.chat import training_template
    from bigmodel.model.formats import find_pretrained, read_tokenizer, tokenizer_config
    from bigmodel.tasks.chat import encode_conversation, read_conversations

    path = find_pretrained("smollm2")
    tok, (render, _) = read_tokenizer(path), training_template(tokenizer_config(path), "smollm2", "", "")
    total, rows = 0, read_conversations(str(data), preference)
    for c in rows:
        answers = [c.chosen, c.rejected] if preference else [None]
        for answer in answers:
            messages = c.messages + ([{"role": "assistant", "content": answer}] if answer else [])
            total += len(encode_conversation(tok, render, messages, 256)[0])
    return total / len(rows)


def ours(kind: str, data: Path, out: Path, steps_per_log: int, dtype: str, *flags: str) -> dict:
    task = "chat" if kind == "sft" else "dpo"
    command = [sys.executable, "-m", "bigmodel.cli", "finetune", "--init", "smollm2", "--task", task,
               "--method", "lora", "--lora-r", "8", "--train", str(data), "--val", str(data.with_name("val.jsonl")),
               "--epochs", "1",
               "--batch-size", "8", "--lr", "1e-3", "--max-length", "256", "--eval-every", str(steps_per_log),
               "--dtype", dtype, "--out", str(out), *flags]
    _, peak = peak_rss_mb(command)
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    steps = [0, *(int(r["step"]) for r in rows)]  # each window's examples over its rate: training time alone
    seconds = sum((b - a) * 8 / float(r["examples_per_s"]) for a, b, r in zip(steps[:-1], steps[1:], rows, strict=True))
    return {"examples_per_s": steps[-1] * 8 / seconds, "losses": [float(r["train_loss"]) for r in rows],
            "val": {k: float(v) for k, v in rows[-1].items() if k.startswith(("val", "reward", "preference"))},
            "peak_rss_mb": peak}


def theirs(kind: str, data: Path, out: Path, steps_per_log: int, dtype: str, examples: int, folder: Path,
           checkpointing: bool) -> dict:
    done, peak = peak_rss_mb([sys.executable, "-c", WORKER, kind, str(data), str(out), str(steps_per_log), dtype,
                              str(folder), "on" if checkpointing else "off"])
    result = json.loads(next(line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")))
    return {"examples_per_s": examples / result["seconds"], "losses": result["losses"], "peak_rss_mb": peak}


def subset(source: Path, target: Path, n: int) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    lines = source.read_text(encoding="utf-8").splitlines()[:n]
    target.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256, help="training rows of each stage")
    parser.add_argument("--val", type=int, default=48, help="rows bigmodel evaluates on between windows")
    parser.add_argument("--chat", default="", help="a `bigmodel dataset chat` folder (default: build one)")
    parser.add_argument("--preference", default="", help="a `bigmodel dataset preference` folder (default: build one)")
    args = parser.parse_args()
    import torch

    from bigmodel.model.checkpoint import load_checkpoint
    from bigmodel.model.probe import training_precision

    config = load_checkpoint("smollm2")[0].config
    dtype = training_precision("auto", torch.device("cpu"), config, 8, 256).name
    steps_per_log = max(1, args.examples // 8 // 4)
    figures: dict = {"examples": args.examples, "dtype": dtype, "lora_r": 8, "batch": 8}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-m", "bigmodel.cli", "export", "--ckpt", "smollm2", "--to-hf",
                        str(work / "hf")], check=True)  # the same weights as a folder transformers trains
        folders = {}
        for name in ("chat", "preference"):
            folder = Path(getattr(args, name) or work / f"built_{name}")
            if not getattr(args, name):
                subprocess.run([sys.executable, "-m", "bigmodel.cli", "dataset", name, "--out", str(folder)],
                               check=True)
            subset(folder / "val.jsonl", work / name / "val.jsonl", args.val)
            folders[name] = subset(folder / "train.jsonl", work / name / "train.jsonl", args.examples)
        for kind, data, preference in (("sft", folders["chat"], False), ("dpo", folders["preference"], True)):
            per_row = tokens_per_row(data, preference)
            started = time.perf_counter()
            runs = {"bigmodel": ours(kind, data, work / f"ours_{kind}", steps_per_log, dtype)}
            if kind == "sft":
                runs["bigmodel --packing"] = ours(kind, data, work / "ours_packed", steps_per_log, dtype, "--packing")
            runs["bigmodel --activation-checkpointing"] = ours(kind, data, work / f"ours_{kind}_ckpt", steps_per_log,
                                                               dtype, "--activation-checkpointing")
            for checkpointing, name in ((True, "trl"), (False, "trl, no activation checkpointing")):
                runs[name] = theirs(kind, data, work / f"{name[:3]}_{kind}_{checkpointing}", steps_per_log, dtype,
                                    args.examples, work / "hf", checkpointing)
            for name, run in runs.items():
                run["tokens_per_s"] = run["examples_per_s"] * per_row
                losses = [round(x, 3) for x in run["losses"]]
                held_out = f", held out {run['val']}" if "val" in run else ""
                print(f"{kind} {name}: {run['tokens_per_s']:.0f} tokens/s, losses {losses}, "
                      f"peak RSS {run['peak_rss_mb']:.0f} MB{held_out}")
            figures[kind] = {"tokens_per_row": per_row, "wall_seconds": time.perf_counter() - started, **runs}
    for kind, key in (("sft", "ratio"), ("dpo", "dpo_ratio")):  # against the peer at its faster setting
        peer = max(run["tokens_per_s"] for name, run in figures[kind].items() if name.startswith("trl"))
        figures[key] = figures[kind]["bigmodel"]["tokens_per_s"] / peer
    print(f"figures: {save('chat_trl', figures)}")
    print(f"DPO: bigmodel over TRL {figures['dpo_ratio']:.2f}")
    print(f"ratio: {figures['ratio']:.2f}")


if __name__ == "__main__":
    main()
