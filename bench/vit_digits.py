"""Digits (scikit-learn's 8x8 images, the fixed split of `bigmodel dataset digits`): our ViT from
scratch against scikit-learn's logistic regression and RBF SVC, in one run, on the same files.

    python bench/vit_digits.py [--seeds 1337 2 3] [--work DIR]

Trains configs/vit_digits.yaml once per seed through the CLI, evaluates each on the test folder,
fits the two peers on the same PNG pixels, and writes bench/results/vit_digits.json.
The last line is `ratio: X.XX`, our median test accuracy over the SVC's (the stronger peer).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import save

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "bigmodel.cli", *args], check=True, cwd=ROOT)


def pixels(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The PNG files of a split as rows of pixels in [0, 1], and their labels: what the peers see."""
    from PIL import Image

    files = sorted(folder.glob("*/*.png"))
    x = np.stack([np.asarray(Image.open(f), dtype=np.float32).ravel() / 255 for f in files])
    return x, np.array([int(f.parent.name) for f in files])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 2, 3])
    parser.add_argument("--work", default="")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="vit_digits_"))
    data = work / "digits"
    cli("dataset", "digits", "--out", str(data))

    ours = []
    for seed in args.seeds:
        run = work / f"vit_{seed}"
        start = time.perf_counter()
        cli("finetune", "--config", "configs/vit_digits.yaml", "--train", str(data / "train"), "--val",
            str(data / "val"), "--out", str(run), "--seed", str(seed))
        seconds = time.perf_counter() - start
        cli("evaluate", "--task", "classify", "--ckpt", str(run), "--data", str(data / "test"), "--out",
            str(run / "test"))
        figures = json.loads((run / "test" / "metrics.json").read_text())
        ours.append({"seed": seed, "test_accuracy": figures["accuracy"], "macro_f1": figures["macro_f1"],
                     "train_seconds": round(seconds, 1)})
        print(f"ViT seed {seed}: test accuracy {figures['accuracy']:.4f} ({seconds:.0f} s)", flush=True)

    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    (x_train, y_train), (x_test, y_test) = pixels(data / "train"), pixels(data / "test")
    peers = {}
    for name, model in (("logistic_regression", LogisticRegression(max_iter=5000)), ("svc_rbf", SVC())):
        model.fit(x_train, y_train)
        peers[name] = float((model.predict(x_test) == y_test).mean())
        print(f"{name}: test accuracy {peers[name]:.4f}")
    median = statistics.median(r["test_accuracy"] for r in ours)
    path = save("vit_digits", {"split": {"train": len(y_train), "test": len(y_test)}, "vit": ours,
                               "vit_median_test_accuracy": median, "peers": peers})
    print(f"ViT median {median:.4f} over {len(ours)} seeds; results {path}")
    print(f"ratio: {median / peers['svc_rbf']:.2f}")


if __name__ == "__main__":
    main()
