"""A real `bigmodel serve` process on loopback, spoken to by the real `openai` client."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path

import numpy as np
import openai
import pytest
import torch

from .conftest import free_port
from .test_finetune import synthetic, write_rows


def http(url, body=None, key=None):
    """(status, text) of a plain request, errors included."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def start_server(ckpt, *flags):
    """`bigmodel serve` in its own process; (process, base URL) once /health says it is ready."""
    port = free_port()
    env = {**os.environ, "BIGMODEL_TEST_KEY": "s3cret"}
    proc = subprocess.Popen([sys.executable, "-m", "bigmodel.cli", "serve", "--ckpt", str(ckpt), "--port", str(port),
                             *flags], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if http(f"{base}/health")[0] == 200:
                return proc, base
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    pytest.fail(proc.stderr.read().decode()[-2000:])


@pytest.fixture(scope="module")
def server(trained_run):
    proc, base = start_server(trained_run, "--api-key-env", "BIGMODEL_TEST_KEY", "--max-new-tokens-limit", "64",
                               "--chat-template", "plain")
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def client(base, key="s3cret"):
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)


def test_completions_chat_stream_and_models(server):
    c = client(server)
    [model] = c.models.list().data
    done = c.completions.create(model=model.id, prompt="ROMEO:", max_tokens=12, temperature=0)
    again = c.completions.create(model=model.id, prompt="ROMEO:", max_tokens=12, temperature=0)
    assert done.choices[0].text == again.choices[0].text and done.choices[0].text
    assert done.usage.completion_tokens == 12 and done.choices[0].finish_reason == "length"
    chat = c.chat.completions.create(model=model.id, messages=[{"role": "user", "content": "Speak."}], max_tokens=8,
                                     n=2, seed=1)
    assert len(chat.choices) == 2 and chat.choices[0].message.role == "assistant"
    pieces = [ch.choices[0].text for ch in c.completions.create(model=model.id, prompt="KING:", max_tokens=10,
                                                                   temperature=0, stream=True)]
    streamed = "".join(pieces)
    whole = c.completions.create(model=model.id, prompt="KING:", max_tokens=10, temperature=0).choices[0].text
    assert streamed == whole and len(pieces) > 2
    chunks = list(c.chat.completions.create(model=model.id, messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-2].choices[0].finish_reason in ("length", "stop")
    whole = c.chat.completions.create(model=model.id, messages=[{"role": "user", "content": "Hi"}], max_tokens=6,
                                      temperature=0)
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks[:-1])
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert whole.usage.completion_tokens == (6 if whole.choices[0].finish_reason == "length" else len(streamed) + 1)
    assert {ch.id for ch in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert whole.id.startswith("chatcmpl-") and done.id.startswith("cmpl-")


def test_keys_limits_and_bad_fields_get_openai_errors(server):
    with pytest.raises(openai.AuthenticationError):
        client(server, "wrong").models.list()
    with pytest.raises(openai.APIStatusError) as too_long:
        client(server).completions.create(model="x", prompt="x" * 200, max_tokens=4)
    assert too_long.value.status_code == 413
    with pytest.raises(openai.BadRequestError):
        client(server).completions.create(model="x", prompt="hi", max_tokens=1000)
    huge_seed = http(f"{server}/v1/completions", {"prompt": "x", "seed": 10**30}, key="s3cret")  # schemathesis found
    assert huge_seed[0] == 400 and json.loads(huge_seed[1])["error"]["param"] == "seed"
    status, text = http(f"{server}/v1/completions", {"prompt": 5, "temperature": "hot"}, key="s3cret")
    assert status == 400 and json.loads(text)["error"]["type"] == "invalid_request_error"
    assert http(f"{server}/v1/completions", {"prompt": "x", "max_tokens": 2}, key="s3cret")[0] == 200
    assert http(f"{server}/v1/no-such-route-7f3a", key="s3cret")[0] == 404
    assert http(f"{server}/wp-admin.php")[0] == 404
    metrics = http(f"{server}/metrics")[1]
    assert 'bigmodel_requests_total{route="/v1/completions",status="200"}' in metrics
    assert 'route="unmatched",status="404"' in metrics and "7f3a" not in metrics and "wp-admin" not in metrics
    assert "bigmodel_request_seconds_bucket" in metrics


def test_concurrent_requests_share_batches_and_match_their_solo_results(server):
    """Greedy continuations come out the same whether a request runs alone or in a batch of others."""
    c = client(server)
    prompts = ["ROMEO:", "JULIET:\nO", "First Citizen:\nWe are", "KING", "A", "Now is the winter"]
    solo = [c.completions.create(model="m", prompt=p, max_tokens=20, temperature=0).choices[0].text for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: c.completions.create(model="m", prompt=p, max_tokens=20, temperature=0)
                                 .choices[0].text, prompts))
    assert together == solo
    many = c.completions.create(model="m", prompt=prompts[:3], n=4, max_tokens=8, seed=3)
    assert len(many.choices) == 12 and many.usage.completion_tokens == 96


def test_schemathesis_finds_no_server_error_and_the_server_survives_malformed_requests(server, tmp_path):
    """Fuzz the server's own OpenAPI schema, then send 1,000 malformed requests; it must still answer."""
    # `positive_data_acceptance` is left out on purpose: a schema-valid prompt may still be longer than the
    # context (413), and a decoder checkpoint refuses /v1/classify (400); both are documented answers.
    result = subprocess.run(["schemathesis", "run", f"{server}/openapi.json", "--checks", "all", "--exclude-checks",
                             "positive_data_acceptance", "--max-examples", "40", "--seed", "1", "--request-timeout",
                             "60", "-H", "Authorization: Bearer s3cret", "--no-color"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:]
    bodies = [b"{", b"[]", b'{"prompt": null}', b'{"prompt": "x", "max_tokens": -1}', b"\xff\xfe", b'{"n": 1e309}',
              b'{"messages": [{"role": "robot", "content": "x"}]}', b'{"input": []}', b'{"prompt": ["x", 5]}']
    paths = ["/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/classify"]
    refusals = []
    for i in range(1000):
        request = urllib.request.Request(f"{server}{paths[i % 4]}", bodies[i % len(bodies)],
                                         {"Content-Type": "application/json", "Authorization": "Bearer s3cret"})
        try:
            with urllib.request.urlopen(request, timeout=30) as accepted:
                refusals.append((accepted.status, ""))
        except urllib.error.HTTPError as e:
            refusals.append((e.code, json.loads(e.read())["error"]["type"]))  # OpenAI's error JSON
    assert refusals == [(400, "invalid_request_error")] * 1000
    done = client(server).completions.create(model="m", prompt="ROMEO:", max_tokens=5, temperature=0)
    assert done.usage.completion_tokens == 5


def test_a_server_whose_model_has_not_loaded_answers_503(trained_run):
    """Until the checkpoint has loaded (the app has not started here), routes refuse with 503, not 500."""
    from fastapi.testclient import TestClient

    from bigmodel.config import ServeConfig
    from bigmodel.serve.app import create_app

    client_ = TestClient(create_app(ServeConfig(ckpt=str(trained_run))))  # not entered: the loading thread never starts
    assert client_.get("/health").status_code == 503
    refused = client_.post("/v1/completions", json={"prompt": "x"})
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "service_unavailable"


@pytest.fixture(scope="module")
def minilm_server(tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm")
    from .conftest import run_cli

    converted = run_cli("convert", "--from-hf", "minilm", "--out", str(out))
    assert converted.returncode == 0, converted.stderr
    proc, base = start_server(out, "--dtype", "fp32")  # parity with fp32 sentence-transformers (bf16: cosine ~0.998)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


@torch.no_grad()
def test_embeddings_from_minilm_match_sentence_transformers_pooling(minilm_server):
    import transformers

    from bigmodel.model.formats import find_pretrained

    texts = ["A man is playing a guitar.", "今天天气很好。", "ok"]
    got = client(minilm_server).embeddings.create(model="minilm", input=texts)  # the client asks for base64
    assert [d.index for d in got.data] == [0, 1, 2] and got.usage.prompt_tokens > 6
    folder = find_pretrained("minilm")
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    bert = transformers.BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
    for text, item in zip(texts, got.data, strict=True):
        hidden = bert(**tok(text, return_tensors="pt")).last_hidden_state[0]
        reference = torch.nn.functional.normalize(hidden.mean(0), dim=0).numpy()
        assert float(np.asarray(item.embedding) @ reference) >= 0.9999
    status, body = http(f"{minilm_server}/v1/embeddings", {"input": "ok", "encoding_format": "float"})
    floats = json.loads(body)["data"][0]["embedding"]
    assert status == 200 and len(floats) == 384 and abs(np.linalg.norm(floats) - 1) < 1e-5
    status, body = http(f"{minilm_server}/v1/completions", {"prompt": "hi"})
    assert status == 400 and "encoder" in json.loads(body)["error"]["message"]
    status, body = http(f"{minilm_server}/v1/embeddings", {"input": "word " * 600})
    assert status == 413


def test_classify_returns_labels_and_probabilities(trained_run, tmp_path):
    from bigmodel.config import FinetuneConfig
    from bigmodel.train.finetune import finetune

    train = write_rows(tmp_path / "train.csv", synthetic(160, 0))
    finetune(FinetuneConfig(init=str(trained_run), train=str(train), val=str(train), out=str(tmp_path / "ft"),
                            epochs=8, lr=3e-3, batch_size=16, patience=8))
    proc, base = start_server(tmp_path / "ft")
    try:
        status, body = http(f"{base}/v1/classify", {"input": ["xx good zz", "yevil y"]})
        rows = json.loads(body)["data"]
        assert status == 200 and [r["label"] for r in rows] == ["good", "evil"]
        assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        writes = http(f"{base}/v1/completions", {"prompt": "KING:", "max_tokens": 4})
        assert writes[0] == 200  # its decoder still writes
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def one_slot(trained_run):
    """A server with room for one sequence and no queue, allowed very long generations."""
    proc, base = start_server(trained_run, "--max-batch", "1", "--max-queue", "0", "--max-new-tokens-limit", "100000")
    yield proc, base
    if proc.poll() is None:
        proc.kill()


def stream_request(base, max_tokens):
    """An open HTTP connection streaming a greedy completion (this model never ends it early), and its response."""
    conn = HTTPConnection(base.removeprefix("http://"), timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": "ROMEO:", "max_tokens": max_tokens,
                                                        "temperature": 0, "stream": True}),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    return conn, response


def test_a_full_server_says_429_and_a_client_that_leaves_frees_its_slot(one_slot):
    _, base = one_slot
    conn, response = stream_request(base, 100000)  # minutes of work if nobody stopped it
    assert response.readline().startswith(b"data: ")
    busy, body = http(f"{base}/v1/completions", {"prompt": "KING:", "max_tokens": 3})
    assert busy == 429 and json.loads(body)["error"]["type"] == "rate_limit_error"
    never, body = http(f"{base}/v1/completions", {"prompt": "KING:", "max_tokens": 3, "n": 2})
    assert never == 400 and json.loads(body)["error"]["param"] == "n"  # more rows than exist: retrying can't help
    conn.close()  # the client goes away mid-stream
    deadline = time.time() + 10
    while time.time() < deadline:
        status, _ = http(f"{base}/v1/completions", {"prompt": "KING:", "max_tokens": 3})
        if status == 200:
            break
        time.sleep(0.05)
    assert status == 200
    # a finished sequence leaves the engine at its next step, just after its client got the last token
    while "bigmodel_queue_depth 0" not in (metrics := http(f"{base}/metrics")[1]) and time.time() < deadline:
        time.sleep(0.05)
    assert "bigmodel_queue_depth 0" in metrics


def test_sigterm_finishes_the_request_in_flight_then_exits(one_slot):
    proc, base = one_slot
    conn, response = stream_request(base, 3000)
    assert response.readline().startswith(b"data: ")
    proc.send_signal(signal.SIGTERM)
    text, reason, lines = "", None, [line for line in response.read().decode().splitlines() if line]
    for line in lines:
        if line.startswith("data: {"):
            chunk = json.loads(line[6:])["choices"][0]
            text, reason = text + chunk["text"], chunk["finish_reason"] or reason
    assert lines[-1] == "data: [DONE]" and reason == "length" and len(text) > 2000
    assert proc.wait(timeout=60) == 0
    with pytest.raises(OSError):
        http(f"{base}/health")


def test_chat_uses_the_checkpoints_own_template_and_refuses_without_one(trained_run, tmp_path):
    import shutil

    from fastapi.testclient import TestClient

    from bigmodel.config import ServeConfig
    from bigmodel.model.checkpoint import resolve_checkpoint
    from bigmodel.serve.app import create_app

    ckpt = tmp_path / "ckpt"
    shutil.copytree(resolve_checkpoint(trained_run), ckpt)

    def ask(folder: Path) -> dict:
        with TestClient(create_app(ServeConfig(ckpt=str(folder)))) as c:  # entered: the model loads in the background
            for _ in range(200):
                if c.get("/health").status_code == 200:
                    break
                time.sleep(0.05)
            body = {"messages": [{"role": "user", "content": "Speak"}], "max_tokens": 2}
            r = c.post("/v1/chat/completions", json=body)
            return {"status": r.status_code, **r.json()}

    refused = ask(ckpt)  # no template of its own, none given: no chat, said in one line
    assert refused["status"] == 400 and refused["error"]["message"].startswith("ckpt: has no chat template")
    (ckpt / "chat_template.jinja").write_text(
        "{% for m in messages %}THE {{ m.role | upper }} SAYS {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}ANSWER:{% endif %}")
    answer = ask(ckpt)
    assert answer["status"] == 200
    usage = answer["usage"]
    assert usage["prompt_tokens"] == len("THE USER SAYS Speak\nANSWER:")  # one token per character here


def test_a_checkpoint_that_fails_to_load_ends_the_server_with_one_line(trained_run, tmp_path):
    import shutil

    from bigmodel.model.checkpoint import resolve_checkpoint

    from .conftest import run_cli

    broken = tmp_path / "broken"
    shutil.copytree(resolve_checkpoint(trained_run), broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    result = run_cli("serve", "--ckpt", str(broken), "--port", str(free_port()), fresh=True, timeout=60)
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert result.returncode == 1 and len(errors) == 1 and str(broken) in errors[0]


def test_stop_text_holds_back_what_may_begin_a_stop_string():
    from bigmodel.data.tokenizer import StopText

    text = StopText(["\n\n", "END"])
    assert [text.push(p) for p in ["Hel", "lo\n", "E", "N", "x", "\n", "\nWor"]] == [
        ("Hel", False), ("lo", False), ("\n", False), ("", False), ("ENx", False), ("", False), ("", True)]
    tail = StopText(["\n\n"])
    assert tail.push("ab\n") == ("ab", False) and tail.flush() == "\n"


def test_a_stop_string_spanning_tokens_never_leaks_into_the_text(server):
    c = client(server)
    [model] = c.models.list().data
    full = c.completions.create(model=model.id, prompt="ROMEO:", max_tokens=40, temperature=0).choices[0].text
    stop = full[12:15]  # three characters: three tokens of this character-level model
    expected = full[:full.index(stop)]
    done = c.completions.create(model=model.id, prompt="ROMEO:", max_tokens=40, temperature=0, stop=[stop])
    assert (done.choices[0].text, done.choices[0].finish_reason) == (expected, "stop")
    pieces = [ch.choices[0].text for ch in c.completions.create(model=model.id, prompt="ROMEO:", max_tokens=40,
                                                                   temperature=0, stop=[stop], stream=True)]
    assert "".join(pieces) == expected


def test_an_internal_error_answers_in_openai_shape_and_logs_its_traceback(trained_run, caplog):
    from fastapi.testclient import TestClient

    from bigmodel.config import ServeConfig
    from bigmodel.serve.app import create_app

    app = create_app(ServeConfig(ckpt=str(trained_run)))

    def broken() -> dict:
        raise ZeroDivisionError("a bug")

    app.add_api_route("/broken", broken)
    with TestClient(app, raise_server_exceptions=False) as c, caplog.at_level("ERROR", "bigmodel.serve"):
        response = c.get("/broken")
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    logged = [r for r in caplog.records if r.name == "bigmodel.serve" and r.exc_info]
    assert logged and logged[0].exc_info[0] is ZeroDivisionError and "/broken" in logged[0].getMessage()
