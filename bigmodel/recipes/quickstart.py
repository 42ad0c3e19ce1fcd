"""`bigmodel quickstart`: the whole life cycle on data every machine has.

The running Python's own standard library (about 13 MB of code and docstrings, tests left
out) is prepared with a byte-level BPE tokenizer, a small Transformer is pretrained on it for a
fixed time budget, evaluated on the held-out tail, and asked to complete a Python prompt.
"""

from __future__ import annotations

import random
import statistics
import sysconfig
import time
from pathlib import Path

import torch

from bigmodel.config import DataConfig, GenerateConfig, ModelConfig, TrainConfig
from bigmodel.data.batches import load_meta
from bigmodel.data.prepare import prepare
from bigmodel.device import autocast, pick_device
from bigmodel.evaluate.lm import evaluate_lm
from bigmodel.infer.generate import stream_text
from bigmodel.model.checkpoint import load_checkpoint
from bigmodel.model.transformer import Transformer
from bigmodel.train.optim import make_optimizer, optimizer_step, run_precision
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


def seconds_per_step(model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device,
                     scaler: torch.amp.GradScaler) -> float:
    """Time a few optimizer steps on random tokens, on the device and in the number format the
    run will really use, to turn a time budget into iterations."""
    model = Transformer(model_cfg).to(device)
    optimizer = make_optimizer(model, train_cfg, device)
    x = torch.randint(model_cfg.vocab_size, (train_cfg.batch_size, model_cfg.block_size), device=device)
    times = []
    for _ in range(14):  # oneDNN builds its kernels over the first several steps
        start = time.perf_counter()
        with autocast(train_cfg.dtype, device):
            _, loss = model(x, x)
        scaler.scale(loss).backward()
        optimizer_step(optimizer, train_cfg.lr, train_cfg.grad_clip, scaler)
        loss.item()  # waits for the device
        times.append(time.perf_counter() - start)
    return statistics.median(times[-6:])


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def quickstart(out: Path, minutes: float = 3.0, device_name: str = "auto", files: int = 0) -> dict[str, float]:
    """Prepare, pretrain for about `minutes`, evaluate and generate; the figures a person checks
    (`files`: only the first so many standard-library files, for a quicker run)."""
    data_dir = out / "data"
    if (data_dir / "meta.json").is_file():
        _banner(f"1/4 data: reusing {data_dir}")
    else:
        sources = stdlib_sources()[:files or None]
        size = sum(p.stat().st_size for p in sources) / 1e6
        _banner(f"1/4 prepare: {len(sources)} files, {size:.1f} MB of Python's standard library")
        prepare(DataConfig(input=[str(p) for p in sources], out=str(data_dir), tokenizer="bpe", vocab_size=4096))
    meta = load_meta(data_dir)
    print(f"{meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, vocabulary {meta['vocab_size']}")

    device = pick_device(device_name)
    model_cfg = ModelConfig(vocab_size=meta["vocab_size"], n_layer=4, n_head=4, n_embd=256, block_size=128,
                            positions="rope", mlp="swiglu", norm="rmsnorm", bias=False)
    train_cfg, scaler = run_precision(
        TrainConfig(data=str(data_dir), out=str(out / "run"), batch_size=16, lr=2e-3, min_lr=2e-4, warmup_iters=30,
                    weight_decay=0.1, eval_iters=10, device=device_name),
        device, model_cfg, 16, model_cfg.block_size)
    step = seconds_per_step(model_cfg, train_cfg, device, scaler)
    budget = minutes * 60 * 0.92  # evaluation and checkpoints take the rest
    train_cfg.eval_interval = max(10, int(budget / step) // 8)
    train_cfg.max_iters = 8 * train_cfg.eval_interval
    _banner(f"2/4 pretrain: {Transformer(model_cfg).num_params() / 1e6:.1f}M parameters, {train_cfg.max_iters} "
            f"iterations (~{minutes:g} min at {step * 1000:.0f} ms each, {train_cfg.dtype} on {device})")
    result = pretrain(model_cfg, train_cfg, {"model": model_cfg, "train": train_cfg})
    rows = read_metrics(Path(train_cfg.out) / "metrics.csv")
    tokens_per_iter = train_cfg.batch_size * model_cfg.block_size
    real = statistics.median(tokens_per_iter / r["tokens_per_s"] for r in rows[1:] if r["tokens_per_s"] > 0)
    print(f"val loss fell from {rows[0]['val_loss']:.3f} to {result['val_loss']:.3f} "
          f"(plot: {Path(train_cfg.out) / 'loss.png'}); {real * 1000:.0f} ms per step against "
          f"{step * 1000:.0f} planned")

    _banner("3/4 evaluate on the held-out tail of the corpus")
    model, tok, _ = load_checkpoint(train_cfg.out, device)
    report = evaluate_lm(model, tok, str(data_dir))
    print(f"loss {report.loss:.3f} | perplexity {report.perplexity:.2f} | bits/byte {report.bits_per_byte:.3f}")

    _banner(f"4/4 generate: completing {PROMPT!r}")
    cfg = GenerateConfig(max_new_tokens=120, temperature=0.7, top_k=40, seed=0)
    print(PROMPT, end="", flush=True)
    for piece in stream_text(model, tok, PROMPT, cfg):
        print(piece, end="", flush=True)
    print(f"\n\nEverything is under {out}. Next: `bigmodel generate --ckpt {train_cfg.out} --prompt ...`")
    return {"planned_step_s": step, "real_step_s": real, "val_loss": result["val_loss"],
            "eval_loss": report.loss, "iterations": train_cfg.max_iters}
