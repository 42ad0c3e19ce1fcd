"""SmolLM2-135M-Instruct from its packaged Q4_1 GGUF file: bigmodel beside transformers, same file, same run.

- load: wall time and peak resident memory of a fresh process that imports the file (ours: `load_checkpoint`;
  transformers: `from_pretrained(gguf_file=...)`), both dequantizing to fp32;
- decode: batch-1 greedy tokens/s on a chat prompt, `--new-tokens` tokens (the end of turn ignored), ours in
  fp32 and int8 (`bigmodel quantize --method int8`) against transformers `generate` in fp32;
- time to first token for a `--long-prompt`-token prompt (prefill and the first token);
- perplexity on held-out English (the last `--ppl-chars` characters of tinyshakespeare) in 1,024-token
  windows, scored by `evaluate_lm` (what `bigmodel evaluate` runs) and by transformers on the same tokens
  (`text_tokens`: the file's paragraphs as `prepare` joins them).
With `llama-cpp-python` installed (built from its source distribution: `pip install llama-cpp-python`,
which compiles llama.cpp), llama.cpp on the same file is a third column: it computes with the file's
4-bit blocks as they are, where bigmodel and transformers dequantize them to fp32, so it does less work
per token. Last line `ratio: X.XX`: our int8 decoding over transformers fp32 (the issue's goal is 2).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import save
from transformers import AutoModelForCausalLM

from bigmodel.config import GenerateConfig
from bigmodel.evaluate.lm import evaluate_lm, text_tokens
from bigmodel.infer.generate import generate_ids
from bigmodel.model.checkpoint import load_checkpoint
from bigmodel.model.formats import find_pretrained
from bigmodel.model.quantize import to_int8

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
LOADERS = {  # run in a fresh interpreter each: (seconds to load, peak RSS in MB) on stdout
    "bigmodel": "from bigmodel.model.checkpoint import load_checkpoint\nload_checkpoint({path!r})",
    "transformers": "import torch\nfrom transformers import AutoModelForCausalLM\n"
                    "AutoModelForCausalLM.from_pretrained({folder!r}, gguf_file={name!r}, dtype=torch.float32)",
}
HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
if HAVE_LLAMA_CPP:
    LOADERS["llama.cpp"] = "from llama_cpp import Llama\nLlama({path!r}, n_ctx=2048, n_threads=2, verbose=False)"
TIMED = """import resource, time
import torch, transformers, bigmodel.model.checkpoint  # imports are not loading
start = time.perf_counter()
{code}
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"""


def load_figures(path: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Median load time and peak RSS of each loader, alternating, each in its own process."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in LOADERS}
    for _ in range(repeats):
        for name, code in LOADERS.items():
            script = TIMED.format(code=code.format(path=str(path), folder=str(path.parent), name=path.name))
            out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
            seconds, rss = map(float, out.stdout.split()[-2:])
            runs[name].append((seconds, rss))
    return {name: {"seconds": statistics.median(s for s, _ in r), "peak_rss_mb": statistics.median(m for _, m in r)}
            for name, r in runs.items()}


def hf_perplexity(model, ids: list[int], window: int) -> float:
    """Perplexity of `ids` in the same non-overlapping windows `evaluate_lm` scores."""
    nll, scored = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[start:start + window + 1]])
            logits = model(chunk[:, :-1]).logits
            nll += torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum").item()
            scored += chunk.size(1) - 1
    return math.exp(nll / scored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--long-prompt", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ppl-chars", type=int, default=30_000)
    args = parser.parse_args()
    path = find_pretrained("smollm2")
    loads = load_figures(path, args.repeats)
    ours, tok, _ = load_checkpoint(path)
    theirs = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    variants = {"bigmodel fp32": ours, "bigmodel int8": to_int8(copy.deepcopy(ours))}
    prompt = tok.encode("<|im_start|>user\nWrite a short story about a lighthouse keeper.<|im_end|>\n"
                        "<|im_start|>assistant\n").ids
    cfg = GenerateConfig(temperature=0.0, max_new_tokens=args.new_tokens)
    text = TEXT.read_text(encoding="utf-8")
    long_prompt = tok.encode(text[:20_000]).ids[:args.long_prompt]

    def decode(model) -> list[int]:
        return [int(t[0]) for t in generate_ids(model, prompt, cfg)]

    def decode_hf() -> list[int]:
        x = torch.tensor([prompt])
        out = theirs.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.new_tokens,
                              min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
        return out[0, len(prompt):].tolist()

    def first_token(model) -> None:
        next(generate_ids(model, long_prompt, GenerateConfig(temperature=0.0, max_new_tokens=1)))

    def first_token_hf() -> None:
        x = torch.tensor([long_prompt])
        theirs.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=1, do_sample=False, pad_token_id=0)

    if HAVE_LLAMA_CPP:
        from llama_cpp import Llama

        llm = Llama(str(path), n_ctx=2048, n_threads=2, verbose=False)

        def decode_llama_cpp() -> list[int]:
            llm.reset()
            out = []
            for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
                out.append(token)
                if len(out) == args.new_tokens:
                    return out
            return out

        def first_token_llama_cpp() -> None:
            llm.reset()
            next(llm.generate(long_prompt, temp=0.0, top_k=1, reset=True))

        runs_extra = [("llama.cpp", decode_llama_cpp)]
        firsts_extra = [("llama.cpp", first_token_llama_cpp)]
    else:
        print("llama.cpp column left out: llama-cpp-python is not installed here")
        runs_extra, firsts_extra = [], []

    with torch.inference_mode():
        reference = decode_hf()  # also the warm-up
        same = {name: decode(model) == reference for name, model in variants.items()}
        runs = [*((name, lambda m=model: decode(m)) for name, model in variants.items()), ("transformers", decode_hf),
                *runs_extra]
        firsts = [*((name, lambda m=model: first_token(m)) for name, model in variants.items()),
                  ("transformers", first_token_hf), *firsts_extra]
        times: dict[str, list[float]] = {name: [] for name, _ in runs}
        ttft: dict[str, list[float]] = {name: [] for name, _ in firsts}
        for _ in range(args.repeats):  # interleaved, so drift on a noisy machine hits every row
            for (name, fn), (_, first) in zip(runs, firsts, strict=True):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
                start = time.perf_counter()
                first()
                ttft[name].append(time.perf_counter() - start)
    rates = {k: args.new_tokens / statistics.median(v) for k, v in times.items()}
    first_ms = {k: 1000 * statistics.median(v) for k, v in ttft.items()}

    with tempfile.TemporaryDirectory() as tmp:
        held_out = Path(tmp) / "held_out.txt"
        held_out.write_text(text[-args.ppl_chars:], encoding="utf-8")
        perplexity = {name: evaluate_lm(model, tok, str(held_out), window=1024).perplexity
                      for name, model in variants.items()}
        ids = text_tokens(tok, str(held_out)).ids.tolist()
    perplexity["transformers"] = hf_perplexity(theirs, ids, 1024)

    ratio = rates["bigmodel int8"] / rates["transformers"]
    result = save("smollm2", {"model": "SmolLM2-135M-Instruct Q4_1 GGUF, dequantized to fp32", "batch": 1,
                              "prompt_tokens": len(prompt), "new_tokens": args.new_tokens, "load": loads,
                              "same_greedy_tokens_as_transformers": same, "tokens_per_s": rates,
                              "time_to_first_token_ms": {"prompt_tokens": len(long_prompt), **first_ms},
                              "perplexity": {"text": f"last {args.ppl_chars} characters of {TEXT.name}",
                                             "tokens": len(ids), "window": 1024, **perplexity},
                              "seconds": times, "ratio": ratio})
    print(json.dumps({"load": loads}, indent=1))
    print(f"same greedy tokens as transformers: {same}")
    for name, rate in rates.items():
        ppl = f"perplexity {perplexity[name]:.3f}" if name in perplexity else "perplexity not measured"
        print(f"{name:>14}: {rate:6.1f} tokens/s, first token of {len(long_prompt)} in {first_ms[name]:6.0f} ms, "
              f"{ppl}; {rate / rates['transformers']:.2f}x transformers fp32 decoding")
    print(f"figures: {result}")
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
