"""One owner per served model: under mixed traffic every answer is the answer the same request gets alone.

A tiny random Llama (RoPE, RMSNorm, SwiGLU, grouped-query attention) is served with two LoRA adapters,
and 32 clients at once mix greedy completions on the base and on each adapter, streams whose clients
leave half-way, echoed prompts scored with log-probabilities, embeddings and a request with an invalid
schema. A classifier on the same kind of causal backbone answers `/v1/explain` and `/v1/classify` while
completions stream from it. Each request is first sent alone; nothing sent in the crowd may differ.
"""

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from urllib.parse import urlparse

import pytest
import torch

from bigmodel.config import ModelConfig
from bigmodel.model.checkpoint import load_checkpoint, save_checkpoint
from bigmodel.model.heads import HeadConfig, SequenceModel
from bigmodel.model.lora import ADAPTER, TARGETS, adapter_file
from bigmodel.model.transformer import Transformer

from .test_serve import http, start_server

PROMPTS = ["ROMEO: my", "KING: Now", "First Citizen:"]
CLIENTS = 32


def llama(vocab_size: int) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=vocab_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=96,
                         positions="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    return Transformer(config).eval()


def write_adapter(folder, model: Transformer, tok, seed: int) -> None:
    """A LoRA adapter with random factors on every adaptable layer (large enough to change the answers),
    beside its merged checkpoint, as `finetune --method lora` leaves them."""
    generator = torch.Generator().manual_seed(seed)
    layers = {name: m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in TARGETS}
    factors = {name: (torch.randn(4, m.in_features, generator=generator) * 0.3,
                      torch.randn(m.out_features, 4, generator=generator) * 0.3) for name, m in layers.items()}
    save_checkpoint(folder, model, tok, {}, files={ADAPTER: adapter_file(factors, 2.0, "random-llama")})


@pytest.fixture(scope="module")
def checkpoints(trained_run, tmp_path_factory):
    """The base Llama, two adapters of it, and a classifier on a causal backbone (its tokenizer: the test run's)."""
    tok = load_checkpoint(trained_run)[1]
    root = tmp_path_factory.mktemp("one_owner")
    model = llama(tok.get_vocab_size())
    save_checkpoint(root / "base", model, tok, {})
    for seed, name in enumerate(("upper", "lower"), start=1):
        write_adapter(root / name, model, tok, seed)
    torch.manual_seed(1)
    classifier = SequenceModel(llama(tok.get_vocab_size()), HeadConfig(labels=["calm", "storm"], pooling="last"))
    save_checkpoint(root / "classifier", classifier.eval(), tok, {})
    return root


def post(base: str, route: str, body: dict) -> tuple[int, dict]:
    status, text = http(f"{base}{route}", body)
    return status, json.loads(text)


def leave_half_way(base: str, body: dict) -> int:
    """A streamed completion whose client reads a few events and hangs up; the status it got."""
    url = urlparse(base)
    connection = HTTPConnection(url.hostname, url.port, timeout=30)
    connection.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read1(64)
    connection.close()
    return response.status


def streamed_text(base: str, body: dict) -> tuple[int, str]:
    """A streamed completion read to its end: the status and the text its events carried."""
    url = urlparse(base)
    connection = HTTPConnection(url.hostname, url.port, timeout=60)
    connection.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    events = response.read().decode()
    connection.close()
    text = "".join(json.loads(e)["choices"][0]["text"] for e in re.findall(r"^data: (\{.*)$", events, re.M)
                   if json.loads(e).get("choices"))
    return response.status, text


def all_at_once(calls: list) -> list:
    """Every call started together from its own thread; their results in order."""
    gate = threading.Barrier(len(calls))

    def run(call):
        gate.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def assert_close(alone, crowded, path="answer"):
    """Equal structures, numbers within 1e-5 (log-probabilities and vectors), everything else identical."""
    if isinstance(alone, float) or isinstance(crowded, float):
        assert crowded == pytest.approx(alone, abs=1e-5), path
    elif isinstance(alone, dict):
        assert alone.keys() == crowded.keys(), path
        for key in alone:
            if key not in ("id", "created"):
                assert_close(alone[key], crowded[key], f"{path}.{key}")
    elif isinstance(alone, list):
        assert len(alone) == len(crowded), path
        for i, (a, c) in enumerate(zip(alone, crowded, strict=True)):
            assert_close(a, c, f"{path}[{i}]")
    else:
        assert alone == crowded, path


def queue_depth(base: str) -> float:
    text = http(f"{base}/metrics")[1]
    return float(re.search(r"^bigmodel_queue_depth (\S+)$", text, re.M).group(1))


def wait_for_empty_queue(base: str) -> float:
    deadline = time.time() + 20
    while (depth := queue_depth(base)) and time.time() < deadline:
        time.sleep(0.1)
    return depth


def test_mixed_traffic_on_a_llama_with_two_adapters_answers_as_each_request_alone(checkpoints):
    proc, base = start_server(checkpoints / "base", "--dtype", "fp32", "--max-batch", "8",
                              "--lora-modules", f"upper={checkpoints / 'upper'}", f"lower={checkpoints / 'lower'}")
    try:
        model_id = json.loads(http(f"{base}/v1/models")[1])["data"][0]["id"]
        requests = []  # (route, body): each answered alone first, then in the crowd
        for name in (model_id, f"{model_id}:upper", f"{model_id}:lower"):
            for prompt in PROMPTS:
                requests.append(("/v1/completions", {"model": name, "prompt": prompt, "max_tokens": 12,
                                                     "temperature": 0, "logprobs": 2}))
            requests.append(("/v1/completions", {"model": name, "prompt": PROMPTS[0], "max_tokens": 1, "echo": True,
                                                 "logprobs": 1, "temperature": 0}))
        requests += [("/v1/embeddings", {"input": ["ROMEO: my lord", "KING"]}), ("/v1/embeddings", {"input": "Now"})]
        invalid = ("/v1/completions", {"prompt": "x", "max_tokens": 4, "response_format": {
            "type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "no-such-type"}}}})
        alone = [post(base, route, body) for route, body in requests]
        assert all(status == 200 for status, _ in alone), alone
        assert len({json.dumps(a[1]["choices"][0]["text"]) for a in alone[:3]} |
                   {json.dumps(a[1]["choices"][0]["text"]) for a in alone[4:7]}) > 3  # the adapters change answers
        assert post(base, *invalid)[0] == 400

        crowd = [*requests, *requests[:CLIENTS - len(requests) - 5]]
        leaving = {"model": f"{model_id}:upper", "prompt": PROMPTS[1], "max_tokens": 80, "temperature": 0}
        calls = [*(lambda r=r: post(base, *r) for r in crowd), lambda: post(base, *invalid),
                 *(lambda: (leave_half_way(base, leaving), None) for _ in range(4))]
        assert len(calls) == CLIENTS
        answers = all_at_once(calls)

        expected = {json.dumps(r): a for r, a in zip(requests, alone, strict=True)}
        for request, (status, body) in zip(crowd, answers, strict=False):
            assert status == 200, body
            assert_close(expected[json.dumps(request)][1], body, request[0])
        assert answers[len(crowd)][0] == 400  # the invalid schema fails alone
        assert all(status == 200 for status, _ in answers[len(crowd) + 1:])
        assert wait_for_empty_queue(base) == 0
        assert post(base, *requests[0])[1]["choices"] == alone[0][1]["choices"]  # and it still answers alike
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_classifier_explains_and_classifies_while_its_backbone_streams(checkpoints):
    proc, base = start_server(checkpoints / "classifier", "--dtype", "fp32", "--max-batch", "4")
    try:
        texts = ["ROMEO: my lord", "KING: Now the storm", "First Citizen: calm"]
        requests = [("/v1/classify", {"input": texts}), ("/v1/classify", {"input": texts[1]}),
                    ("/v1/explain", {"input": texts[0], "steps": 16}),
                    ("/v1/explain", {"input": texts[2], "target": "storm", "steps": 16})]
        streams = [{"prompt": p, "max_tokens": 40, "temperature": 0} for p in PROMPTS]
        alone = [post(base, route, body) for route, body in requests]
        assert all(status == 200 for status, _ in alone), alone
        streamed_alone = [streamed_text(base, body) for body in streams]
        assert all(status == 200 and text for status, text in streamed_alone)

        calls = [*(lambda r=r: post(base, *r) for r in requests * 3),
                 *(lambda b=b: streamed_text(base, b) for b in streams * 2)]
        answers = all_at_once(calls)
        for (status, body), expected in zip(answers, alone * 3, strict=False):
            assert status == 200, body
            assert_close(expected[1], body)
        assert answers[len(requests) * 3:] == streamed_alone * 2
        assert wait_for_empty_queue(base) == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
