"""Prefix caching: time to first token for 16 questions that share one ~500-token system prompt.

SmolLM2-135M-Instruct (converted from its GGUF file) behind `bigmodel serve --dtype fp32`, once with
`--prefix-cache-mb 0` (every prompt runs whole) and once with the default cache; the questions go one
after another through the chat route, streamed, and the time to the first streamed token is taken on
the client. The first question of the cached run fills the cache (a miss) and is reported apart. The
hit rate is read from `/metrics`.

The peer, in the same run: llama.cpp's server (llama-cpp-python's) on SmolLM2's own Q4_1 GGUF file, which
keeps the last prompt's keys and values and runs only what differs: the same 16 questions in the same way.
It computes in the file's 4-bit blocks, we in fp32: its prompt runs are faster whatever the cache does,
so the comparison is of the whole server, not of the caching alone. Last line `ratio: X.XX`: llama.cpp's
median time to first token over ours with the cache (without llama-cpp-python installed: our own time
without the cache over with it, the issue's bar being 5).
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from pathlib import Path

from _common import llama_cpp_serving, save, serving, smollm2_checkpoint
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
QUESTIONS = ["Who speaks first?", "What does Menenius tell the citizens?", "Why are the citizens angry?",
             "Name one character.", "Is anyone hungry?", "What is the mood of the crowd?", "Who is Caius Marcius?",
             "Summarise the scene in one line.", "What do the citizens want?", "Which city is this?",
             "Is there a fable in it?", "Who is called the belly?", "What happens next?",
             "Quote one line.", "Who is the chief enemy to the people?", "What is corn?"]


def system_prompt(tokens: int = 500) -> str:
    words = TEXT.read_text(encoding="utf-8").split(" ")
    return "You answer questions about this scene:\n" + " ".join(words[:int(tokens * 0.62)])


def ask(base: str, system: str, question: str) -> float:
    """Seconds from sending the request to the first streamed token."""
    body = json.dumps({"messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
                       "max_tokens": 2, "temperature": 0, "stream": True}).encode()
    request = urllib.request.Request(f"{base}/v1/chat/completions", body,
                                     {"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        for line in response:
            if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
                response.read()
                return first
    raise RuntimeError("no token came")


def questions(base: str, system: str, desc: str) -> list[float]:
    ask(base, "warm-up", "Hello?")  # first-call costs (thread pools, allocations) out of the figures
    return [ask(base, system, q) for q in tqdm(QUESTIONS, desc=desc)]


def run(cache_mb: int, system: str) -> tuple[list[float], str]:
    with serving(smollm2_checkpoint(), "--dtype", "fp32", "--prefix-cache-mb", str(cache_mb)) as base:
        times = questions(base, system, f"cache {cache_mb} MB")
        return times, urllib.request.urlopen(f"{base}/metrics").read().decode()


def counter(metrics: str, kind: str) -> float:
    line = next(x for x in metrics.splitlines() if x.startswith(f'bigmodel_prefix_cache_tokens_total{{kind="{kind}"'))
    return float(line.split()[-1])


def main() -> None:
    system = system_prompt()
    off, _ = run(0, system)
    on, metrics = run(256, system)
    with llama_cpp_serving() as peer_base:
        peer = questions(peer_base, system, "llama.cpp") if peer_base else None
    hits, looked_up = counter(metrics, "hit"), counter(metrics, "looked_up")
    figures = {"ttft_off_median_s": statistics.median(off), "ttft_on_first_s": on[0],
               "ttft_on_median_s": statistics.median(on[1:]), "hit_rate": hits / looked_up,
               "off": off, "on": on}
    print(f"time to first token, {len(QUESTIONS)} questions: no cache {figures['ttft_off_median_s']:.3f} s (median); "
          f"cached {figures['ttft_on_median_s']:.3f} s (median of the 15 after the first, which took {on[0]:.3f} s): "
          f"{figures['ttft_off_median_s'] / figures['ttft_on_median_s']:.2f}x lower")
    print(f"prefix cache hit rate (/metrics, prompt tokens): {figures['hit_rate']:.1%}")
    if peer:
        figures |= {"llama_cpp_first_s": peer[0], "llama_cpp_median_s": statistics.median(peer[1:]), "llama_cpp": peer}
        print(f"llama.cpp: {figures['llama_cpp_median_s']:.3f} s (median of the 15 after the first, {peer[0]:.3f} s)")
    save("prefix_cache", figures)
    reference = figures["llama_cpp_median_s"] if peer else figures["ttft_off_median_s"]
    print(f"ratio: {reference / figures['ttft_on_median_s']:.2f}")


if __name__ == "__main__":
    main()
