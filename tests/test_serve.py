"""A real `bigmodel serve` process on loopback, spoken to by the real `openai` client."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from .test_train import _free_port

openai = pytest.importorskip("openai")


def http(url, body=None, key=None):
    """(status, text) of a plain request, errors included."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def server(trained_run):
    port = _free_port()
    env = {**os.environ, "BIGMODEL_TEST_KEY": "s3cret"}
    proc = subprocess.Popen([sys.executable, "-m", "bigmodel.cli", "serve", "--ckpt", str(trained_run), "--port",
                             str(port), "--api-key-env", "BIGMODEL_TEST_KEY", "--max-new-tokens-limit", "64"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if http(f"{base}/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(proc.stderr.read().decode()[-2000:])
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
                                            max_tokens=6, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_keys_limits_and_bad_fields_get_openai_errors(server):
    with pytest.raises(openai.AuthenticationError):
        client(server, "wrong").models.list()
    with pytest.raises(openai.APIStatusError) as too_long:
        client(server).completions.create(model="x", prompt="x" * 200, max_tokens=4)
    assert too_long.value.status_code == 413
    with pytest.raises(openai.BadRequestError):
        client(server).completions.create(model="x", prompt="hi", max_tokens=1000)
    status, text = http(f"{server}/v1/completions", {"prompt": 5, "temperature": "hot"}, key="s3cret")
    assert status == 400 and json.loads(text)["error"]["type"] == "invalid_request_error"
    metrics = http(f"{server}/metrics")[1]
    assert 'bigmodel_requests_total{route="/v1/completions",status="200"}' in metrics
    assert "bigmodel_request_seconds_bucket" in metrics
