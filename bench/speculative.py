"""Speculative decoding: SmolLM2-135M-Instruct served with `--speculate 0`, `--speculate 4` (prompt lookup)
and `--speculate 4 --draft-model` (a draft model), greedy, one request at a time, on an input-grounded task
(correct the spelling of a given paragraph: the answer quotes its input) and on free generation (a story
from a one-line prompt).

No smaller model shares SmolLM2-135M's tokenizer on this machine (it is the smallest of its family), so the
draft is SmolLM2's own first 6 of 30 layers with its final norm and output layer, untrained as such (a
self-speculative draft as in LayerSkip, without LayerSkip's training): what a user without a trained draft
could try. Decoding tokens/s is the completion tokens over the request's wall time (prefill included, the
same in every run); the texts are checked to be identical; acceptance rates come from `/metrics`.

The peer, in the same run: llama.cpp's server (llama-cpp-python's) on SmolLM2's own Q4_1 GGUF file, without
and with its prompt-lookup drafting (`--draft_model prompt-lookup-decoding`, 4 tokens). Last line
`ratio: X.XX`: the grounded task's tokens/s of our prompt lookup over llama.cpp's (without llama-cpp-python:
over our own plain decoding).
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from pathlib import Path

from _common import ROOT, llama_cpp_serving, save, serving, smollm2_checkpoint
from tqdm import tqdm

PARAGRAPHS = [
    "The quick brown fox jumpd over the lazy dog, and then it ran into the forrest to find its freinds.",
    "Our team will meet on Tuesday to disscuss the new budjet and the schedule for the next quater.",
    "Python is a programing language that lets you work quickly and integrate systems more efectively.",
    "The museum opens at nine in the morning and closes at five, exept on holidays when it is closd.",
]
STORIES = ["Write a short story about a dragon.", "Write a short story about a lighthouse keeper.",
           "Write a short story about a lost key.", "Write a short story about a robot who learns to paint."]
TASKS = {"grounded": [f"Correct the spelling mistakes in this text and write it out again in full:\n\n{p}"
                      for p in PARAGRAPHS], "free": STORIES}


def ask(base: str, content: str) -> tuple[str, float]:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 120, "temperature": 0}
    request = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        out = json.loads(response.read())
    return out["choices"][0]["message"]["content"], out["usage"]["completion_tokens"] / (time.perf_counter() - start)


def layer_draft(layers: int = 6) -> Path:
    """SmolLM2 cut to its first `layers` blocks (the final norm and output layer kept): a draft checkpoint."""
    import dataclasses

    from bigmodel.model.checkpoint import load_checkpoint, save_checkpoint
    from bigmodel.model.formats import tokenizer_files

    out = ROOT / "runs" / f"smollm2_first{layers}"
    if not out.is_dir():
        model, tok, folder = load_checkpoint(smollm2_checkpoint())
        model.blocks = model.blocks[:layers]
        model.config = dataclasses.replace(model.config, n_layer=layers)
        save_checkpoint(out, model, tok, {"model": model.config}, plain=tokenizer_files(folder))
    return out


def tasks(base: str, label: str) -> tuple[dict, dict]:
    ask(base, "Hello!")
    texts, speeds = {}, {}
    for task, prompts in TASKS.items():
        results = [ask(base, p) for p in tqdm(prompts, desc=f"{task}, {label}")]
        texts[task], speeds[task] = [r[0] for r in results], statistics.median(r[1] for r in results)
    return texts, speeds


def run(*flags: str) -> tuple[dict, dict, str]:
    with serving(smollm2_checkpoint(), "--dtype", "fp32", "--prefix-cache-mb", "0", *flags) as base:
        texts, speeds = tasks(base, " ".join(flags) or "plain")
        return texts, speeds, urllib.request.urlopen(f"{base}/metrics").read().decode()


def counter(metrics: str, kind: str) -> float:
    prefix = f'bigmodel_speculative_tokens_total{{kind="{kind}"'
    return next((float(x.split()[-1]) for x in metrics.splitlines() if x.startswith(prefix)), 0.0)


def main() -> None:
    plain_texts, plain, _ = run()
    runs = {"lookup": run("--speculate", "4"),
            "draft model": run("--speculate", "4", "--draft-model", str(layer_draft()))}
    figures: dict = {"plain": plain}
    for name, (texts, speeds, metrics) in runs.items():
        accepted, drafted = counter(metrics, "accepted"), counter(metrics, "drafted")
        same = texts == plain_texts
        for task in TASKS:
            print(f"{name:11s} {task:9s} tokens/s (median of {len(TASKS[task])}): plain {plain[task]:.1f}, "
                  f"speculative {speeds[task]:.1f} ({speeds[task] / plain[task]:.2f}x)")
        print(f"{name:11s} texts identical: {same}; drafts accepted {accepted:.0f} of {drafted:.0f} "
              f"({accepted / max(drafted, 1):.1%})")
        figures[name] = {**speeds, "identical": same, "accepted": accepted, "drafted": drafted}
    with llama_cpp_serving() as peer_base:
        peer = tasks(peer_base, "llama.cpp")[1] if peer_base else None
    lookup = ("--draft_model", "prompt-lookup-decoding", "--draft_model_num_pred_tokens", "4")
    with llama_cpp_serving(*lookup) as peer_base:
        peer_lookup = tasks(peer_base, "llama.cpp, prompt lookup")[1] if peer_base else None
    if peer:
        figures |= {"llama_cpp": peer, "llama_cpp_lookup": peer_lookup}
        for task in TASKS:
            print(f"llama.cpp   {task:9s} tokens/s: plain {peer[task]:.1f}, prompt lookup {peer_lookup[task]:.1f} "
                  f"({peer_lookup[task] / peer[task]:.2f}x)")
    save("speculative", figures)
    ours = figures["lookup"]["grounded"]
    print(f"ratio: {ours / (peer_lookup['grounded'] if peer else plain['grounded']):.2f}")


if __name__ == "__main__":
    main()
