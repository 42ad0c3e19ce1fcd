"""Structured output on a model never trained for it: 100 chat requests to SmolLM2-135M-Instruct with a
JSON schema (`response_format: json_schema`), each answer parsed and validated (jsonschema), and the
cost of the grammar's mask: decoding tokens/s with the schema against the same requests without it.

`bigmodel serve --dtype fp32`, 4 clients at a time, temperature 0.8 with a seed per request.

The peer, in the same run: llama.cpp's server (llama-cpp-python's) on SmolLM2's own Q4_1 GGUF file, the
same schema as its `response_format: {"type": "json_object", "schema": ...}` (a GBNF grammar), the first
25 of the requests each way (it answers one request at a time). Last line `ratio: X.XX`: our tokens/s
with the mask over llama.cpp's with its grammar (without llama-cpp-python: ours with the mask over
without it, 1.00 being a free mask).
"""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import jsonschema
from _common import llama_cpp_serving, save, serving, smollm2_checkpoint
from tqdm import tqdm

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "city": {"type": "string", "maxLength": 24},
    "likes": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3}},
    "required": ["name", "age", "city", "likes"], "additionalProperties": False}
PEOPLE = ["a retired sailor", "a young chemist", "a baker from Lyon", "a chess champion", "a shy poet",
          "a beekeeper", "a pilot", "a museum guard", "a violin maker", "a marathon runner"]


def ask(base: str, i: int, structured: bool, peer: bool = False) -> tuple[str, int, float]:
    body = {"messages": [{"role": "user", "content": f"Invent {PEOPLE[i % len(PEOPLE)]}: name, age, city and "
                                                     "three things they like."}],
            "max_tokens": 120, "temperature": 0.8, "seed": i}
    if structured:
        body["response_format"] = {"type": "json_object", "schema": SCHEMA} if peer else {
            "type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    request = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        out = json.loads(response.read())
    return out["choices"][0]["message"]["content"], out["usage"]["completion_tokens"], time.perf_counter() - start


def batch(base: str, n: int, structured: bool, peer: bool = False) -> tuple[list[str], float]:
    """The answers, and decoding tokens/s over the whole batch (tokens over wall time)."""
    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        results = list(tqdm(pool.map(lambda i: ask(base, i, structured, peer), range(n)), total=n,
                            desc=("llama.cpp, " if peer else "") + ("with the schema" if structured else "free text")))
    return [r[0] for r in results], sum(r[1] for r in results) / (time.perf_counter() - start)


def main() -> None:
    with serving(smollm2_checkpoint(), "--dtype", "fp32") as base:
        ask(base, 0, True)  # compiles the schema once; the vocabulary's tables are built here too
        answers, masked = batch(base, 100, True)
        free_answers, free = batch(base, 100, False)
    with llama_cpp_serving() as peer_base:
        if peer_base:
            peer_answers, peer_masked = batch(peer_base, 25, True, peer=True)
            _, peer_free = batch(peer_base, 25, False, peer=True)
    valid = sum(validates(t) for t in answers)
    parse_free = sum(1 for t in free_answers if is_json(t))
    print(f"with the schema: {valid}/100 answers parse and validate; without it {parse_free}/100 are JSON at all")
    print(f"examples: {answers[0]}\n          {answers[1]}")
    print(f"decoding, 4 clients: {masked:.1f} tokens/s with the mask, {free:.1f} without ({masked / free:.2f}x)")
    figures = {"valid": valid, "free_json": parse_free, "masked_tokens_per_s": masked, "free_tokens_per_s": free,
               "examples": answers[:3]}
    if peer_base:
        figures |= {"llama_cpp_valid_of_25": sum(validates(t) for t in peer_answers),
                    "llama_cpp_masked_tokens_per_s": peer_masked, "llama_cpp_free_tokens_per_s": peer_free}
        print(f"llama.cpp (GBNF from the schema): {figures['llama_cpp_valid_of_25']}/25 validate; {peer_masked:.1f} "
              f"tokens/s with the grammar, {peer_free:.1f} without ({peer_masked / peer_free:.2f}x)")
    save("structured_output", figures)
    print(f"ratio: {masked / (peer_masked if peer_base else free):.2f}")


def validates(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), SCHEMA)
        return True
    except (json.JSONDecodeError, jsonschema.ValidationError) as e:
        print(f"invalid: {text!r}: {str(e).splitlines()[0]}")
        return False


def is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError:
        return False


if __name__ == "__main__":
    main()
