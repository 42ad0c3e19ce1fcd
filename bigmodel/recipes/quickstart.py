"""`bigmodel quickstart`: the whole life cycle on data every machine has.

The running Python's own standard library (about 13 MB of code and docstrings, tests left
out) is prepared with a byte-level BPE tokenizer, a small Transformer is pretrained on it for a
fixed time budget, evaluated on the held-out tail, and asked to complete a Python prompt.
"""

from __future__ import annotations

import random
import sysconfig
import time
from pathlib import Path

import torch

from bigmodel.config import DataConfig, GenerateConfig, ModelConfig, TrainConfig
from bigmodel.data.batches import load_meta
from bigmodel.data.prepare import prepare
from bigmodel.evaluate.lm import evaluate_lm
from bigmodel.infer.generate import stream_text
from bigmodel.model.checkpoint import load_checkpoint
from bigmodel.model.transformer import Transformer
from bigmodel.train.optim import autocast, make_optimizer, optimizer_step
from bigmodel.train.track import read_metrics
from bigmodel.train.trainer import pretrain

SKIP_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
PROMPT = "def is_prime(n):"  # no newline: let the model choose how to tokenize the indent


def stdlib_sources() -> list[Path]:
    """Every .py file of the standard library, without tests and installed packages.

    Shuffled with a fixed seed: the validation split is the tail of the token stream, and
    a random tail of files is a fairer test than the alphabetical last packages.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not SKIP_PARTS & set(p.relative_to(root).parts[:-1]))
    random.Random(0).shuffle(files)
    return files


def seconds_per_step(model_cfg: ModelConfig, train_cfg: TrainConfig) -> float:
    """Time a few optimizer steps on random tokens, to turn a time budget into iterations."""
    model = Transformer(model_cfg)
    optimizer = make_optimizer(model, train_cfg, torch.device("cpu"))
    x = torch.randint(model_cfg.vocab_size, (train_cfg.batch_size, model_cfg.block_size))
    times = []
    for _ in range(4):
        start = time.perf_counter()
        with autocast(train_cfg.dtype, torch.device("cpu")):
            _, loss = model(x, x)
        loss.backward()
        optimizer_step(optimizer, train_cfg.lr, train_cfg.grad_clip)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def quickstart(out: Path, minutes: float = 3.0) -> None:
    data_dir = out / "data"
    if (data_dir / "meta.json").is_file():
        _banner(f"1/4 data: reusing {data_dir}")
    else:
        sources = stdlib_sources()
        size = sum(p.stat().st_size for p in sources) / 1e6
        _banner(f"1/4 prepare: {len(sources)} files, {size:.1f} MB of Python's standard library")
        prepare(DataConfig(input=[str(p) for p in sources], out=str(data_dir), tokenizer="bpe", vocab_size=4096))
    meta = load_meta(data_dir)
    print(f"{meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, vocabulary {meta['vocab_size']}")

    model_cfg = ModelConfig(vocab_size=meta["vocab_size"], n_layer=4, n_head=4, n_embd=256, block_size=128,
                            positions="rope", mlp="swiglu", norm="rmsnorm", bias=False)
    train_cfg = TrainConfig(data=str(data_dir), out=str(out / "run"), batch_size=16, lr=2e-3, min_lr=2e-4,
                            warmup_iters=30, weight_decay=0.1, eval_iters=10, dtype="bf16")
    step = seconds_per_step(model_cfg, train_cfg)
    budget = minutes * 60 * 0.92  # evaluation and checkpoints take the rest
    train_cfg.eval_interval = max(10, int(budget / step) // 8)
    train_cfg.max_iters = 8 * train_cfg.eval_interval
    _banner(f"2/4 pretrain: {Transformer(model_cfg).num_params() / 1e6:.1f}M parameters, {train_cfg.max_iters} "
            f"iterations (~{minutes:g} min at {step * 1000:.0f} ms each)")
    result = pretrain(model_cfg, train_cfg, {"model": model_cfg, "train": train_cfg})
    rows = read_metrics(Path(train_cfg.out) / "metrics.csv")
    print(f"val loss fell from {rows[0]['val_loss']:.3f} to {result['val_loss']:.3f} "
          f"(plot: {Path(train_cfg.out) / 'loss.png'})")

    _banner("3/4 evaluate on the held-out tail of the corpus")
    model, tok, _ = load_checkpoint(train_cfg.out)
    report = evaluate_lm(model, tok, str(data_dir))
    print(f"loss {report.loss:.3f} | perplexity {report.perplexity:.2f} | bits/byte {report.bits_per_byte:.3f}")

    _banner(f"4/4 generate: completing {PROMPT!r}")
    cfg = GenerateConfig(max_new_tokens=120, temperature=0.7, top_k=40, seed=0)
    print(PROMPT, end="", flush=True)
    for piece in stream_text(model, tok, PROMPT, cfg):
        print(piece, end="", flush=True)
    print(f"\n\nEverything is under {out}. Next: `bigmodel generate --ckpt {train_cfg.out} --prompt ...`")
