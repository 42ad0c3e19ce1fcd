"""lm-evaluation-harness through `bigmodel serve` against lm-eval's own in-process `hf` model.

The same checkpoint both ways: SmolLM2-135M-Instruct converted from its GGUF file (`convert --from-hf
smollm2`), served by `bigmodel serve --dtype fp32` and scored by lm-eval's `local-completions` model
(log-probabilities with `echo`, tokenizer through `/tokenize`), and exported with `export --to-hf` for
lm-eval's `hf` model. Tasks (`configs/lm_eval/`): held-out Shakespeare perplexity (rolling
log-likelihood) and a four-way multiple choice (which line ends a speech); their data is written here,
from the last tenth of tinyshakespeare. The issue's bar: every metric within 0.5% (relative).
Last line `ratio: X.XX`: lm-eval's `hf` wall time over the server's (higher: the server is faster).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, save, serving, smollm2_checkpoint

TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
DATA = ROOT / "runs" / "lm_eval"
TASKS = "shakespeare_ppl,shakespeare_next_line"


def write_tasks_data(docs: int, questions: int) -> None:
    """Held-out paragraphs for perplexity; speeches whose last line is to be told from three others."""
    text = TEXT.read_text(encoding="utf-8")
    speeches = [s.strip() for s in text[int(0.9 * len(text)):].split("\n\n")[1:] if s.strip()]
    DATA.mkdir(parents=True, exist_ok=True)
    paragraphs = [s for s in speeches if 300 <= len(s) <= 1500][:docs]
    (DATA / "shakespeare_ppl.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs))
    rng = random.Random(0)
    long = [s.splitlines() for s in speeches if len(s.splitlines()) >= 4]
    rows = []
    for i, lines in enumerate(long[:questions]):
        others = rng.sample([s[-1] for j, s in enumerate(long) if j != i], 3)
        choices = [lines[-1], *others]
        rng.shuffle(choices)
        rows.append({"context": "\n".join(lines[:-1]), "choices": choices, "answer": choices.index(lines[-1])})
    (DATA / "shakespeare_next_line.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"tasks: {len(paragraphs)} perplexity documents, {len(rows)} multiple-choice questions", flush=True)


def run(*args: str) -> None:
    """Run a command in the repository, its progress bars on this terminal; one line if it fails."""
    if subprocess.run(args, cwd=ROOT, stdout=subprocess.DEVNULL).returncode:
        sys.exit(f"{' '.join(args[:4])}... failed (its messages are above)")


def lm_eval(model: str, model_args: str, out: Path) -> tuple[dict, float]:
    """lm-eval's results for our tasks, and its wall time."""
    start = time.perf_counter()
    run("lm_eval", "run", "--model", model, "--model_args", model_args, "--tasks", TASKS, "--include_path",
        "configs/lm_eval", "--batch_size", "1", "--output_path", str(out))
    seconds = time.perf_counter() - start
    result = json.loads(next(out.rglob("results*.json")).read_text())["results"]
    return {task: {k.split(",")[0]: v for k, v in metrics.items() if k.endswith(",none")}
            for task, metrics in result.items()}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--questions", type=int, default=100)
    args = parser.parse_args()
    write_tasks_data(args.docs, args.questions)
    ckpt, hf = smollm2_checkpoint(), DATA / "smollm2-hf"
    if not hf.is_dir():
        run(sys.executable, "-m", "bigmodel.cli", "export", "--ckpt", str(ckpt), "--to-hf", str(hf))
    with serving(ckpt, "--dtype", "fp32") as base:
        ours, our_time = lm_eval("local-completions", f"model=smollm2,base_url={base}/v1/completions,"
                                 "tokenizer_backend=remote,tokenized_requests=True,num_concurrent=1,max_retries=1",
                                 DATA / "out-served")
    theirs, their_time = lm_eval("hf", f"pretrained={hf},dtype=float32", DATA / "out-hf")
    worst = 0.0
    for task, metrics in theirs.items():
        for name, value in metrics.items():
            if name.endswith("_stderr") or not isinstance(value, float):
                continue
            gap = abs(ours[task][name] - value) / max(abs(value), 1e-12)
            worst = max(worst, gap)
            print(f"{task:24s} {name:16s} served {ours[task][name]:10.4f}   hf {value:10.4f}   gap {100 * gap:.3f}%")
    print(f"wall time: served {our_time:.0f} s, hf {their_time:.0f} s; largest gap {100 * worst:.3f}% (bar 0.5%)")
    save("lm_eval_parity", {"served": ours, "hf": theirs, "served_seconds": our_time, "hf_seconds": their_time,
                            "largest_relative_gap": worst})
    print(f"ratio: {their_time / our_time:.2f}")


if __name__ == "__main__":
    main()
