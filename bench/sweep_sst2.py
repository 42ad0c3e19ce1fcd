"""Does a 12-trial Optuna sweep beat the fine-tuning guide's SST-2 recipe on the same budget?

    python bench/sweep_sst2.py [--trials 12] [--work DIR]

Budget: configs/sst2_small.yaml (MiniLM, the first 1,000 SST-2 training sentences, one epoch).
The dev set is cut in two: the sweep (and the recipe's keep-best) choose on the first half, and both
the recipe's checkpoint and the best trial's are scored on the second half, which nothing chose on.
Writes bench/results/sweep_sst2.json; the last line is `ratio: X.XX`, the best trial's held-out
accuracy over the recipe's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _common import save

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"
PARAMS = ["lr=loguniform:1e-5:3e-4", "batch_size=choice:8,16,32", "warmup=uniform:0:0.3"]


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "bigmodel.cli", *args], check=True, cwd=ROOT)


def held_out_accuracy(ckpt: Path, data: Path, out: Path) -> float:
    cli("evaluate", "--task", "classify", "--ckpt", str(ckpt), "--data", str(data), "--text-column", "sentence",
        "--out", str(out))
    return json.loads((out / "metrics.json").read_text())["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--work", default="")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="sweep_sst2_"))
    work.mkdir(parents=True, exist_ok=True)
    header, *rows = DEV.read_text(encoding="utf-8").splitlines(keepends=True)
    choose, report = work / "dev_choose.tsv", work / "dev_report.tsv"
    choose.write_text(header + "".join(rows[:len(rows) // 2]), encoding="utf-8")
    report.write_text(header + "".join(rows[len(rows) // 2:]), encoding="utf-8")
    recipe = yaml.safe_load((ROOT / "configs" / "sst2_small.yaml").read_text())
    recipe["finetune"].update(train=str(DEV.with_name("train.tsv")), val=str(choose))
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe))

    start = time.perf_counter()
    cli("finetune", "--config", str(work / "recipe.yaml"), "--out", str(work / "recipe"))
    recipe_seconds = time.perf_counter() - start
    start = time.perf_counter()
    cli("sweep", "--config", str(work / "recipe.yaml"), "--trials", str(args.trials), "--out", str(work / "sweep"),
        *[a for p in PARAMS for a in ("--param", p)])
    sweep_seconds = time.perf_counter() - start

    import optuna

    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{work / 'sweep' / 'study.db'}")
    recipe_choose = yaml.safe_load((work / "recipe" / "best" / "config.yaml").read_text())["val"]["accuracy"]
    ours = held_out_accuracy(work / "sweep" / f"trial-{study.best_trial.number:03d}", report, work / "eval_sweep")
    theirs = held_out_accuracy(work / "recipe", report, work / "eval_recipe")
    states = [t.state.name for t in study.trials]
    figures = {"budget": "configs/sst2_small.yaml (1,000 sentences, 1 epoch)", "trials": args.trials,
               "states": {s: states.count(s) for s in set(states)},
               "recipe": {"lr": recipe["finetune"]["lr"], "batch_size": recipe["finetune"]["batch_size"],
                          "choose_accuracy": recipe_choose, "held_out_accuracy": theirs,
                          "seconds": round(recipe_seconds, 1)},
               "sweep": {"best_params": study.best_params, "best_choose_accuracy": study.best_value,
                         "held_out_accuracy": ours, "seconds": round(sweep_seconds, 1)},
               "held_out_sentences": len(rows) - len(rows) // 2}
    path = save("sweep_sst2", figures)
    print(f"recipe: held-out accuracy {theirs:.4f}; best of {args.trials} trials {study.best_params}: {ours:.4f}")
    print(f"results {path}")
    print(f"ratio: {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
