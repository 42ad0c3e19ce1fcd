"""Structured output on a model never trained for it: 100 chat requests to SmolLM2-135M-Instruct with a
JSON schema (`response_format: json_schema`), each answer parsed and validated (jsonschema), and the
cost of the grammar's mask: decoding tokens/s with the schema against the same requests without it.

`bigmodel serve --dtype fp32`, 4 clients at a time, temperature 0.8 with a seed per request. Last line
`ratio: X.XX`: tokens/s with the mask over without it (1.00 would be a free mask).
"""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import jsonschema
from _common import save, serving, smollm2_checkpoint
from tqdm import tqdm

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "city": {"type": "string", "maxLength": 24},
    "likes": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3}},
    "required": ["name", "age", "city", "likes"], "additionalProperties": False}
PEOPLE = ["a retired sailor", "a young chemist", "a baker from Lyon", "a chess champion", "a shy poet",
          "a beekeeper", "a pilot", "a museum guard", "a violin maker", "a marathon runner"]


def ask(base: str, i: int, structured: bool) -> tuple[str, int, float]:
    body = {"messages": [{"role": "user", "content": f"Invent {PEOPLE[i % len(PEOPLE)]}: name, age, city and "
                                                     "three things they like."}],
            "max_tokens": 120, "temperature": 0.8, "seed": i}
    if structured:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    request = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        out = json.loads(response.read())
    return out["choices"][0]["message"]["content"], out["usage"]["completion_tokens"], time.perf_counter() - start


def batch(base: str, n: int, structured: bool) -> tuple[list[str], float]:
    """The answers, and decoding tokens/s over the whole batch (tokens over wall time)."""
    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        results = list(tqdm(pool.map(lambda i: ask(base, i, structured), range(n)), total=n,
                            desc="with the schema" if structured else "free text"))
    return [r[0] for r in results], sum(r[1] for r in results) / (time.perf_counter() - start)


def main() -> None:
    with serving(smollm2_checkpoint(), "--dtype", "fp32") as base:
        ask(base, 0, True)  # compiles the schema once; the vocabulary's tables are built here too
        answers, masked = batch(base, 100, True)
        free_answers, free = batch(base, 100, False)
    valid = 0
    for text in answers:
        try:
            jsonschema.validate(json.loads(text), SCHEMA)
            valid += 1
        except (json.JSONDecodeError, jsonschema.ValidationError) as e:
            print(f"invalid: {text!r}: {str(e).splitlines()[0]}")
    parse_free = sum(1 for t in free_answers if is_json(t))
    print(f"with the schema: {valid}/100 answers parse and validate; without it {parse_free}/100 are JSON at all")
    print(f"examples: {answers[0]}\n          {answers[1]}")
    print(f"decoding, 4 clients: {masked:.1f} tokens/s with the mask, {free:.1f} without")
    save("structured_output", {"valid": valid, "free_json": parse_free, "masked_tokens_per_s": masked,
                               "free_tokens_per_s": free, "examples": answers[:3]})
    print(f"ratio: {masked / free:.2f}")


def is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError:
        return False


if __name__ == "__main__":
    main()
