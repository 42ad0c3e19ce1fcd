"""Batch-1 greedy decoding on the 124M GPT-2 shape: bigmodel vs `transformers` generate.

Both models get the same random weights (ours are exported into GPT2LMHeadModel), a 16-token
prompt and 128 new tokens, with their KV caches, in fp32. Rows for our model compressed as
`bigmodel quantize` writes it (dynamic int8 linear layers; bf16 weights) are printed beside,
each against transformers fp32. Last line `ratio: X.XX`: ours over transformers, both fp32.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
from _common import save
from transformers import GPT2LMHeadModel

from bigmodel.config import GenerateConfig, ModelConfig, preset
from bigmodel.infer.generate import generate_ids
from bigmodel.model.hf import gpt2_to_hf
from bigmodel.model.quantize import to_int8
from bigmodel.model.transformer import Transformer


def to_transformers(ours: Transformer) -> GPT2LMHeadModel:
    """The same network as GPT2LMHeadModel, through bigmodel's Hugging Face export."""
    with tempfile.TemporaryDirectory() as folder:
        gpt2_to_hf(ours, folder)
        return GPT2LMHeadModel.from_pretrained(folder).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    ours = Transformer(ModelConfig(vocab_size=50257, **preset("gpt2"))).eval()
    hf = to_transformers(ours)
    prompt = torch.randint(50257, (1, args.prompt_tokens))
    cfg = GenerateConfig(temperature=0.0, max_new_tokens=args.new_tokens)

    variants = {"bigmodel": ours, "bigmodel int8": to_int8(copy.deepcopy(ours)),
                "bigmodel bf16 weights": copy.deepcopy(ours).to(torch.bfloat16)}

    def run(model: Transformer) -> torch.Tensor:
        return torch.stack(list(generate_ids(model, prompt[0].tolist(), cfg)), dim=1)

    def run_hf() -> torch.Tensor:
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                          min_new_tokens=args.new_tokens, do_sample=False, use_cache=True, pad_token_id=0)
        return out[:, args.prompt_tokens:]

    with torch.inference_mode():
        reference = run_hf()  # also the warm-up
        same = {name: torch.equal(run(model), reference) for name, model in variants.items()}
        runs = [*((name, lambda m=model: run(m)) for name, model in variants.items()), ("transformers", run_hf)]
        times: dict[str, list[float]] = {name: [] for name, _ in runs}
        for _ in range(args.repeats):  # interleaved, so drift on a noisy machine hits both
            for name, fn in runs:
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    rates = {k: args.new_tokens / statistics.median(v) for k, v in times.items()}
    ratio = rates["bigmodel"] / rates["transformers"]
    path = save("generate_speed", {"shape": "gpt2 124M", "dtype": "fp32", "batch": 1,
                                   "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                                   "same_greedy_tokens_as_transformers": same, "tokens_per_s": rates,
                                   "ratios": {k: v / rates["transformers"] for k, v in rates.items()},
                                   "seconds": times, "ratio": ratio})
    print(f"same greedy tokens as transformers: {same}")
    for name, rate in rates.items():
        print(f"{name:>21}: {rate:6.1f} tokens/s (median of {args.repeats}), "
              f"{rate / rates['transformers']:.2f}x transformers fp32")
    print(f"figures: {path}")
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
