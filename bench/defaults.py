"""Fine-tuning's defaults beside the best of a small learning-rate sweep, per (task, method), at the same steps.

For each pair, the default run (no --lr: the value `bigmodel finetune --help` lists for it) and runs at a
third and three times that learning rate train on the same data for the same epochs, and each is scored on
held-out data the runs never trained or selected on:

  classify full / lora   MiniLM on 512 SST-2 sentences, accuracy on 300 held-out dev sentences
  chat lora              SmolLM2-135M-Instruct on `bigmodel dataset rule`, exact match on its test prompts
  dpo lora               the default chat run, then DPO on the rule's near-miss pairs: exact match on test
  seq2seq lora           SmolLM2 on the rule as source/target rows, chrF on test
  qa full                MiniLM on 600 questions of `bigmodel dataset qa`, F1 on its test split

Prints the table and the machine, writes bench/results/defaults.json, and ends with `ratio: X.XX`: the
smallest, over the pairs, of the default's figure over the sweep's best (1.00: the default is the best
there is; the goal is 0.90 or more).

    python bench/defaults.py                    # every pair (about an hour on 2 cores)
    python bench/defaults.py --pairs classify-full,classify-lora
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _common import RESULTS, ROOT, save

from bigmodel.config import TUNINGS
from bigmodel.device import machine

SHARED = ROOT.parent / "shared" / "data"
AROUND = (1 / 3, 3)  # the sweep: the default learning rate, and a half-decade below and above it


def cli(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "bigmodel.cli", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"bigmodel {' '.join(args)} failed:\n{done.stderr[-2000:]}")


def scored(folder: Path, name: str, key: str) -> float:
    return float(json.loads((folder / name / "metrics.json").read_text())[key])


@dataclass
class Pair:
    task: str
    method: str
    data: Callable[[Path], dict[str, str]]  # the work folder -> train, val (and what scoring reads)
    score: Callable[[Path, dict[str, str], Path], float]  # run folder, data, work folder -> held-out figure
    figure: str
    init: str = "minilm"
    extra: tuple[str, ...] = ()


def sst2(work: Path) -> dict[str, str]:
    def rows(name: str) -> list[dict]:
        return list(csv.DictReader((SHARED / "sst2" / name).open(encoding="utf-8"), delimiter="\t"))

    train, dev = rows("train.tsv"), rows("dev.tsv")
    random.Random(0).shuffle(train)
    files = {}
    for name, chosen in (("train", train[:512]), ("val", dev[:200]), ("test", dev[200:500])):
        files[name] = str(work / f"sst2_{name}.csv")
        with open(files[name], "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([("text", "label"), *((r["sentence"], r["label"]) for r in chosen)])
    return files


def rule(suffix: str) -> Callable[[Path], dict[str, str]]:
    def build(work: Path) -> dict[str, str]:
        if not (work / "rule").is_dir():
            cli("dataset", "rule", "--out", str(work / "rule"))
        return {split: str(work / "rule" / f"{split}{suffix}") for split in ("train", "val", "test")}
    return build


def qa(work: Path) -> dict[str, str]:
    if not (work / "qa").is_dir():
        cli("dataset", "qa", "--out", str(work / "qa"))
    return {split: str(work / "qa" / f"{split}.json") for split in ("train", "val", "test")}


def evaluated(task: str, key: str, *extra: str) -> Callable[[Path, dict[str, str], Path], float]:
    def score(run: Path, data: dict[str, str], work: Path) -> float:
        test = data["test"].replace("_pairs.jsonl", ".jsonl")  # DPO's runs answer the rule's conversations
        cli("evaluate", "--task", task, "--ckpt", str(run), "--data", test, "--out", str(run / "test"), *extra)
        return scored(run, "test", key)
    return score


PAIRS = {
    "classify-full": Pair("classify", "full", sst2, evaluated("classify", "accuracy"), "accuracy"),
    "classify-lora": Pair("classify", "lora", sst2, evaluated("classify", "accuracy"), "accuracy"),
    "chat-lora": Pair("chat", "lora", rule(".jsonl"), evaluated("chat", "exact_match", "--max-new-tokens", "8"),
                      "exact match %", init="smollm2"),
    "dpo-lora": Pair("dpo", "lora", rule("_pairs.jsonl"), evaluated("chat", "exact_match", "--max-new-tokens", "8"),
                     "exact match %", init="chat-lora"),
    "seq2seq-lora": Pair("seq2seq", "lora", rule(".csv"), evaluated("seq2seq", "chrf", "--max-new-tokens", "8"),
                         "chrF", init="smollm2"),  # exact match stays 0 at every rate tried: chrF tells them apart
    "qa-full": Pair("qa", "full", qa, evaluated("qa", "f1"), "F1", extra=("--max-train", "600")),
}


def run_pair(name: str, pair: Pair, work: Path, defaults: dict[str, Path]) -> dict:
    """The default run and the grid's runs of one pair: each learning rate's held-out figure and seconds."""
    data = pair.data(work)
    init = str(defaults[pair.init]) if pair.init in defaults else pair.init  # DPO starts from the default SFT run
    default_lr = TUNINGS[pair.task, pair.method].lr
    rows = {}
    for lr in (None, *(default_lr * factor for factor in AROUND)):
        out = work / f"{name}_{lr or 'default'}"
        started = time.perf_counter()
        cli("finetune", "--init", init, "--task", pair.task, "--method", pair.method, "--train", data["train"],
            "--val", data["val"], "--out", str(out), *pair.extra, *(("--lr", f"{lr:.3g}") if lr else ()))
        figure = pair.score(out, data, work)
        rows[f"{lr or default_lr:.3g}" + (" (default)" if lr is None else "")] = {
            "figure": figure, "seconds": round(time.perf_counter() - started, 1)}
        print(f"{name:<14} lr {lr or default_lr:<8.3g}{' default' if lr is None else '':<9}{pair.figure} {figure:.2f}",
              flush=True)
        if lr is None:
            defaults[name] = out
    default = next(v["figure"] for k, v in rows.items() if k.endswith("(default)"))
    best = max(v["figure"] for v in rows.values())
    return {"figure": pair.figure, "runs": rows, "default": default, "best": best,
            "ratio": round(default / best, 3) if best else 1.0, "measured": time.strftime("%Y-%m-%d", time.gmtime())}


def runs(result: dict, default: bool) -> str:
    """`lr: figure` of the default run, or of the sweep's other runs, for the docs' table."""
    return ", ".join(f"{lr.split()[0]}: {v['figure']:.2f}" for lr, v in result["runs"].items()
                     if lr.endswith("(default)") == default)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default=",".join(PAIRS), help=f"comma-separated, of {', '.join(PAIRS)}")
    parser.add_argument("--work", default="", help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    names = [n.strip() for n in args.pairs.split(",") if n.strip()]
    unknown = [n for n in names if n not in PAIRS]
    if unknown:
        raise SystemExit(f"--pairs: no pair {', '.join(unknown)} (there are {', '.join(PAIRS)})")
    if "dpo-lora" in names and "chat-lora" not in names:
        names.insert(names.index("dpo-lora"), "chat-lora")  # DPO starts from the default SFT run
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        defaults: dict[str, Path] = {}
        results = {name: run_pair(name, PAIRS[name], work, defaults) for name in names}
    print(f"\n{'pair':<14}{'figure':<16}{'default':>9}{'best':>9}{'ratio':>7}   runs (lr: figure)")
    for name, r in results.items():
        sweep = ", ".join(f"{lr}: {v['figure']:.2f}" for lr, v in r["runs"].items())
        print(f"{name:<14}{r['figure']:<16}{r['default']:>9.2f}{r['best']:>9.2f}{r['ratio']:>7.2f}   {sweep}")
    earlier = RESULTS / "defaults.json"  # a run of some pairs updates those, and keeps the others' last figures
    last = json.loads(earlier.read_text()) if earlier.is_file() else {}
    if last and last["machine"]["cpu"] == machine()["cpu"]:
        results = {**{name: {"measured": last["date"], **r} for name, r in last["pairs"].items()}, **results}
    ratio = min(r["ratio"] for r in results.values())
    table = {"columns": ["pair", "held-out figure", "default lr: figure", "sweep (lr: figure)", "ratio", "measured"],
             "rows": [[name, r["figure"], runs(r, default=True), runs(r, default=False), r["ratio"], r["measured"]]
                      for name, r in results.items()]}
    save("defaults", {"pairs": results, "around_the_default": AROUND, "table": table, "ratio": ratio})
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
