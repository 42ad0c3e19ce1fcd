"""The peer of shakespeare_time_to_quality.py: nanoGPT's CPU recipe for character-level
Shakespeare, re-implemented here in plain PyTorch (nanoGPT itself cannot be fetched at run time).

What it reproduces, from nanoGPT's README command and `config/train_shakespeare_char.py`:
a character vocabulary over the whole file, the first 90% for training and the last 10% for
validation; a GPT of 4 layers, 4 heads, 128 wide, context 64, no biases, no dropout, learned
positions, pre-LayerNorm blocks, exact GELU, tied input/output embeddings, N(0, 0.02) init with
the residual projections scaled by 1/sqrt(2·layers); AdamW (lr 1e-3, betas 0.9/0.99, weight decay
0.1 on matrices only, not fused on the CPU), 100 warm-up iterations then cosine decay to 1e-4 at
iteration 2,000; gradient clipping at 1.0; batch 12; 2,000 iterations in fp32 without compile;
every 250 iterations a 20-batch estimate of train/val loss, and a checkpoint when val improves.

`train` does that and saves the weights; `evaluate` scores every token of the val split in
consecutive 64-token windows, as `bigmodel evaluate` does.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_model, save_model

LAYERS, HEADS, WIDTH, CONTEXT, BATCH = 4, 4, 128, 64, 12
LR, MIN_LR, WARMUP, ITERS, EVAL_EVERY, EVAL_BATCHES = 1e-3, 1e-4, 100, 2000, 250, 20


def splits(text: str) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    chars = sorted(set(text))
    index = {ch: i for i, ch in enumerate(chars)}
    ids = np.array([index[ch] for ch in text], dtype=np.uint16)
    cut = int(0.9 * len(ids))
    return index, ids[:cut], ids[cut:]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(WIDTH, bias=False)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
        self.out = nn.Linear(WIDTH, WIDTH, bias=False)
        self.ln2 = nn.LayerNorm(WIDTH, bias=False)
        self.up = nn.Linear(WIDTH, 4 * WIDTH, bias=False)
        self.down = nn.Linear(4 * WIDTH, WIDTH, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, HEADS, C // HEADS).transpose(1, 2) for t in self.qkv(self.ln1(x)).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.out(y)
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, WIDTH)
        self.positions = nn.Embedding(CONTEXT, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(WIDTH, bias=False)
        self.head = nn.Linear(WIDTH, vocab, bias=False)
        self.head.weight = self.tokens.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * LAYERS) if name.endswith(("out.weight", "down.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.tokens(idx) + self.positions(torch.arange(idx.size(1)))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def batch(data: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(len(data) - CONTEXT, (BATCH,)).numpy()
    window = torch.from_numpy(np.stack([data[s:s + CONTEXT + 1] for s in starts]).astype(np.int64))
    return window[:, :-1], window[:, 1:]


def lr_at(it: int) -> float:
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    return MIN_LR + 0.5 * (1 + math.cos(math.pi * (it - WARMUP) / (ITERS - WARMUP))) * (LR - MIN_LR)


@torch.no_grad()
def estimate(model: GPT, data: dict[str, np.ndarray]) -> dict[str, float]:
    model.eval()
    losses = {name: sum(model(*batch(d)).item() for _ in range(EVAL_BATCHES)) / EVAL_BATCHES
              for name, d in data.items()}
    model.train()
    return losses


def train(corpus: Path, out: Path) -> None:
    torch.manual_seed(1337)
    index, train_ids, val_ids = splits(corpus.read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(index))
    model = GPT(len(index))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                  lr=LR, betas=(0.9, 0.99))
    best = math.inf
    for it in range(ITERS + 1):
        if it % EVAL_EVERY == 0:
            losses = estimate(model, {"train": train_ids, "val": val_ids})
            print(f"iter {it}: train {losses['train']:.4f}, val {losses['val']:.4f}", flush=True)
            if it and losses["val"] < best:
                best = losses["val"]
                save_model(model, str(out / "model.safetensors"))
        if it == ITERS:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it)
        loss = model(*batch(train_ids))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def evaluate(corpus: Path, out: Path) -> float:
    """Mean loss over every token of the val split, in consecutive non-overlapping windows."""
    index, _, val_ids = splits(corpus.read_text(encoding="utf-8"))
    model = GPT(len(index))
    load_model(model, str(out / "model.safetensors"))
    model.eval()
    ids = torch.from_numpy(val_ids.astype(np.int64))
    total, counted = 0.0, 0
    for start in range(0, len(ids) - 1, CONTEXT):
        x, y = ids[start:start + CONTEXT], ids[start + 1:start + CONTEXT + 1]
        x = x[:len(y)]
        total += model(x[None], y[None]).item() * len(y)
        counted += len(y)
    return total / counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("train", "evaluate"))
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    if args.command == "train":
        started = time.perf_counter()
        train(args.input, args.out)
        print(f"trained in {time.perf_counter() - started:.1f} s")
    else:
        print(json.dumps({"val_loss": evaluate(args.input, args.out)}))


if __name__ == "__main__":
    main()
