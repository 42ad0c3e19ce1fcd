"""Shared fixtures: small real corpora, prepared once per session, and a tiny trained model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bigmodel.config import DataConfig, ModelConfig, TrainConfig
from bigmodel.data.prepare import prepare
from bigmodel.train.trainer import pretrain

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"
TANGPOEMS = SHARED / "tangpoems" / "input.txt"


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `bigmodel ARGS` as a user would, in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "bigmodel.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def shared_file(path: Path) -> Path:
    """A file of ../shared/data the suite needs; its absence fails the test (CI must not skip silently)."""
    if not path.is_file():
        pytest.fail(f"{path} is missing: the tests read ../shared/data beside the checkout (see its SOURCE.md)")
    return path


@pytest.fixture(scope="session")
def shakespeare_char(tmp_path_factory) -> Path:
    shared_file(SHAKESPEARE)
    out = tmp_path_factory.mktemp("shakespeare_char")
    prepare(DataConfig(input=[str(SHAKESPEARE)], out=str(out), tokenizer="char", dedup=False))
    return out


def tiny_model(vocab_size: int, **overrides) -> ModelConfig:
    values = dict(vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=32)
    values.update(overrides)
    return ModelConfig(**values)


@pytest.fixture(scope="session")
def trained_run(shakespeare_char, tmp_path_factory) -> Path:
    """A char-level model trained for a few seconds: enough to beat the uniform guess."""
    from bigmodel.data.batches import load_meta

    out = tmp_path_factory.mktemp("run")
    model = tiny_model(load_meta(shakespeare_char)["vocab_size"])
    train = TrainConfig(data=str(shakespeare_char), out=str(out), max_iters=150, batch_size=16, lr=3e-3,
                        warmup_iters=10, eval_interval=50, eval_iters=5)
    pretrain(model, train, {"model": model, "train": train})
    return out
