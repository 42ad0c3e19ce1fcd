"""Training throughput: bigmodel's GPT vs `transformers`' GPT2LMHeadModel on the same shapes.

For the `baby` and `small` presets (character vocabulary of 65, dropout 0) each side runs
forward, backward, gradient clipping and a fused AdamW step on the same batches; both in
fp32, then both under bf16 autocast where this CPU runs bf16 faster (`--dtype auto`'s probe).
Prints the machine, tokens/s, our model-FLOPs utilisation against
this machine's measured fp32 matmul peak, and last `ratio: X.XX` (the smaller of the two
fp32 ratios, ours over transformers; higher is better for us).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from _common import formats_here, matmul_peak_flops, save
from transformers import GPT2Config, GPT2LMHeadModel

from bigmodel.config import ModelConfig, TrainConfig, preset
from bigmodel.model.transformer import Transformer
from bigmodel.train.optim import make_optimizer

VOCAB = 65
BATCH = {"baby": 12, "small": 8}  # nanoGPT's CPU batch for baby; small at a CPU-sized batch


def hf_model(cfg: ModelConfig) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                                      n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0, bos_token_id=None, eos_token_id=None))


def step_fn(model: torch.nn.Module, loss_of, dtype: str):
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()

    def step(window: torch.Tensor) -> None:
        with amp:
            loss = loss_of(model, window)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(name: str, dtype: str, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, **preset(name))
    batch = BATCH[name]
    ours = Transformer(cfg)
    theirs = hf_model(cfg)
    runners = {
        "bigmodel": step_fn(ours, lambda m, w: m(w[:, :-1], w[:, 1:])[1], dtype),
        # transformers shifts the labels itself
        "transformers": step_fn(theirs, lambda m, w: m(input_ids=w[:, :-1], labels=w[:, :-1]).loss, dtype),
    }
    data = torch.randint(VOCAB, (steps + 3, batch, cfg.block_size + 1))
    times: dict[str, list[float]] = {k: [] for k in runners}
    for i, window in enumerate(data):
        for key, step in runners.items():  # interleaved, so drift on a noisy machine hits both
            start = time.perf_counter()
            step(window)
            if i >= 3:
                times[key].append(time.perf_counter() - start)
    tokens = batch * cfg.block_size
    rates = {k: tokens / statistics.median(v) for k, v in times.items()}
    return {"batch": batch, "block_size": cfg.block_size, "tokens_per_s": rates,
            "ratio": rates["bigmodel"] / rates["transformers"],
            "flops_per_token": Transformer(cfg).flops_per_token()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    peak = matmul_peak_flops()
    results: dict[str, dict] = {}
    for name in ("baby", "small"):
        shape = ModelConfig(vocab_size=VOCAB, **preset(name))
        for dtype in formats_here(shape, BATCH[name], shape.block_size):
            r = measure(name, dtype, args.steps if name == "baby" else max(5, args.steps // 2))
            r["mfu"] = r["tokens_per_s"]["bigmodel"] * r["flops_per_token"] / peak
            results[f"{name}/{dtype}"] = r
            print(f"{name:>5} {dtype}: bigmodel {r['tokens_per_s']['bigmodel']:8.0f} tok/s | transformers "
                  f"{r['tokens_per_s']['transformers']:8.0f} tok/s | ratio {r['ratio']:.2f} | "
                  f"our MFU {r['mfu'] * 100:4.1f}% of {peak / 1e9:.0f} GFLOP/s fp32 peak", flush=True)
    ratio = min(results["baby/fp32"]["ratio"], results["small/fp32"]["ratio"])
    path = save("train_speed", {"fp32_matmul_peak_flops": peak, "results": results, "ratio": ratio})
    print(f"figures: {path}")
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
