"""Speculative decoding by prompt lookup: SmolLM2-135M-Instruct served with `--speculate 0` and
`--speculate 4`, greedy, one request at a time, on an input-grounded task (correct the spelling of a
given paragraph: the answer quotes its input) and on free generation (a story from a one-line prompt).

Decoding tokens/s is the completion tokens over the request's wall time (prefill included, the same
in both runs); the texts are checked to be identical; the acceptance rate comes from `/metrics`.
Last line `ratio: X.XX`: the grounded task's tokens/s with speculation over without.
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request

from _common import save, serving, smollm2_checkpoint
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


def run(speculate: int) -> tuple[dict, dict, str]:
    with serving(smollm2_checkpoint(), "--dtype", "fp32", "--speculate", str(speculate), "--prefix-cache-mb",
                 "0") as base:
        ask(base, "Hello!")
        texts, speeds = {}, {}
        for task, prompts in TASKS.items():
            results = [ask(base, p) for p in tqdm(prompts, desc=f"{task}, --speculate {speculate}")]
            texts[task], speeds[task] = [r[0] for r in results], statistics.median(r[1] for r in results)
        return texts, speeds, urllib.request.urlopen(f"{base}/metrics").read().decode()


def counter(metrics: str, kind: str) -> float:
    prefix = f'bigmodel_speculative_tokens_total{{kind="{kind}"'
    return next((float(x.split()[-1]) for x in metrics.splitlines() if x.startswith(prefix)), 0.0)


def main() -> None:
    plain_texts, plain, _ = run(0)
    spec_texts, spec, metrics = run(4)
    same = plain_texts == spec_texts
    accepted, drafted = counter(metrics, "accepted"), counter(metrics, "drafted")
    for task in TASKS:
        print(f"{task:9s} tokens/s (median of {len(TASKS[task])}): plain {plain[task]:.1f}, speculative "
              f"{spec[task]:.1f} ({spec[task] / plain[task]:.2f}x)")
    print(f"texts identical: {same}; drafts accepted {accepted:.0f} of {drafted:.0f} "
          f"({accepted / max(drafted, 1):.1%})")
    save("speculative", {"plain": plain, "speculative": spec, "identical": same, "accepted": accepted,
                         "drafted": drafted})
    print(f"ratio: {spec['grounded'] / plain['grounded']:.2f}")


if __name__ == "__main__":
    main()
