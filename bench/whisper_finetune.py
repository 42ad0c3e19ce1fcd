"""Fine-tuning Whisper tiny.en on a voice it mishears (espeak-ng's, `bigmodel dataset speech`): WER before and
after on held-out clips, and on real human speech (`../shared/data/speech_real`, English rows) to show what it
forgets, for `finetune --task asr` with each method's defaults (full, freeze, LoRA; `--dtype auto`). Then the
speed of one full fine-tuning step, bigmodel vs transformers' `WhisperForConditionalGeneration` (our export)
on the same batch, the same AdamW and the same thread count. Writes a bar chart beside the JSON.
Last line `ratio: X.XX`: transformers' median step time over bigmodel's (higher is better for bigmodel).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import matplotlib
import torch
from _common import RESULTS, ROOT, save
from transformers import WhisperForConditionalGeneration

from bigmodel.cli import main as bigmodel
from bigmodel.config import FinetuneConfig
from bigmodel.model.checkpoint import load_checkpoint
from bigmodel.model.formats import to_hf
from bigmodel.tasks.asr import ASRTask

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

WORK = ROOT / "runs" / "whisper-finetune"
SPEECH = ROOT.parent / "shared" / "data" / "speech_real" / "manifest.tsv"


def wer(ckpt: str | Path, table: Path, name: str) -> float:
    out = WORK / "eval" / name
    assert bigmodel(["evaluate", "--task", "asr", "--ckpt", str(ckpt), "--data", str(table), "--out", str(out),
                     "--dtype", "fp32"]) == 0
    return json.loads((out / "metrics.json").read_text())["wer"]


def step_seconds(threads: int, repeats: int = 5) -> dict[str, float]:
    """Median seconds of one full fine-tuning step (batch 8) for bigmodel and transformers, same batch."""
    torch.set_num_threads(threads)
    data = WORK / "data"
    cfg = FinetuneConfig(task="asr", init="whisper-tiny.en", train=str(data / "train.csv"), val=str(data / "val.csv"),
                         max_train=8, dtype="fp32")
    model, tok, folder = load_checkpoint("whisper-tiny.en")
    task = ASRTask(cfg, model, tok)
    batch = task._batch(task.train_items(None), torch.device("cpu"))
    with tempfile.TemporaryDirectory() as hf_folder:
        to_hf(model, hf_folder, tok, folder)
        hf = WhisperForConditionalGeneration.from_pretrained(hf_folder)
    labels = batch["targets"].clone()
    labels[labels == -1] = -100
    runs = {
        "bigmodel": (model, lambda: model(**batch)[1]),
        "transformers": (hf, lambda: hf(input_features=batch["source"], decoder_input_ids=batch["idx"],
                                        labels=labels).loss),
    }
    figures = {}
    for name, (module, loss_of) in runs.items():
        module.train()
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5)
        times = []
        for i in range(repeats + 1):
            start = time.perf_counter()
            optimizer.zero_grad()
            loss_of().backward()
            optimizer.step()
            if i:  # the first step allocates
                times.append(time.perf_counter() - start)
        figures[name] = statistics.median(times)
        print(f"one full fine-tuning step, batch 8: {name} {figures[name]:.2f} s", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=240, help="training clips (val 10%, test 25%)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="full,freeze,lora")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = WORK / "data"
    if not (data / "test.csv").is_file():
        assert bigmodel(["dataset", "speech", "--out", str(data), "--examples", str(args.examples),
                         "--source", str(ROOT.parent / "shared" / "data" / "sst2" / "train.tsv")]) == 0
    results = {"before": {"espeak_test": wer("whisper-tiny.en", data / "test.csv", "before-espeak"),
                          "real_speech": wer("whisper-tiny.en", SPEECH, "before-real")}}
    print(f"before: {results['before']}", flush=True)
    for method in args.methods.split(","):
        out = WORK / method
        started = time.perf_counter()
        assert bigmodel(["finetune", "--task", "asr", "--init", "whisper-tiny.en", "--method", method,
                         "--train", str(data / "train.csv"), "--val", str(data / "val.csv"), "--out", str(out)]) == 0
        minutes = (time.perf_counter() - started) / 60
        results[method] = {"espeak_test": wer(out / "best", data / "test.csv", f"{method}-espeak"),
                           "real_speech": wer(out / "best", SPEECH, f"{method}-real"), "minutes": round(minutes, 1)}
        print(f"{method}: {results[method]}", flush=True)
    speed = step_seconds(args.threads)
    names = list(results)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for k, (key, label) in enumerate((("espeak_test", "espeak-ng voice (held out)"), ("real_speech", "real speech"))):
        ax.bar([i + 0.4 * k for i in range(len(names))], [results[n][key] for n in names], 0.4, label=label)
    ax.set_xticks([i + 0.2 for i in range(len(names))], names)
    ax.set_ylabel("WER % (Whisper's normaliser)")
    ax.set_title(f"Whisper tiny.en fine-tuned on {args.examples} espeak-ng clips")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "whisper_finetune.png", dpi=120)
    ratio = speed["transformers"] / speed["bigmodel"]
    table = {"columns": ["model", "WER % espeak-ng test", "WER % real speech", "minutes"],
             "rows": [[n, round(results[n]["espeak_test"], 2), round(results[n]["real_speech"], 2),
                       results[n].get("minutes", "")] for n in names]}
    path = save("whisper_finetune", {"examples": args.examples, "threads": args.threads, "results": results,
                                     "step_seconds_batch_8": speed, "table": table, "ratio": ratio})
    print(f"figures: {path}, {RESULTS / 'whisper_finetune.png'}")
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
