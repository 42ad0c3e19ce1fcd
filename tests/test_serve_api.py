"""What evaluation harnesses and real clients ask of the server beyond text: log-probabilities and echo,
token-id prompts, the tokenizer routes, and the sampling fields OpenAI and vLLM clients send."""

import json
import re

import openai
import pytest
import torch

from bigmodel.model.checkpoint import load_checkpoint

from .conftest import run_cli
from .test_adapters import greedy
from .test_serve import http, start_server


@pytest.fixture(scope="module")
def served(trained_run):
    """The trained test model behind a server (fp32, so its scores can be checked against a forward pass)."""
    proc, base = start_server(trained_run, "--dtype", "fp32", "--max-logprobs", "5", "--chat-template", "plain")
    model, tok, _ = load_checkpoint(trained_run)
    yield base, model, tok
    proc.terminate()
    proc.wait(timeout=30)


def post(base, route, body):
    status, text = http(f"{base}{route}", body)
    return status, json.loads(text)


def test_echoed_prompt_and_generated_tokens_carry_the_models_own_log_probabilities(served):
    base, model, tok = served
    ids = tok.encode("ROMEO: What say", add_special_tokens=False).ids
    status, out = post(base, "/v1/completions", {"prompt": ids, "max_tokens": 3, "temperature": 0, "logprobs": 2,
                                                 "echo": True})
    assert status == 200, out
    choice = out["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids) + 3 and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    prompt_text = tok.decode(ids)
    assert choice["text"].startswith(prompt_text) and "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
    every = ids + [tok.token_to_id(t) for t in lp["tokens"][len(ids):]]
    with torch.no_grad():
        expected = model(torch.tensor([every]))[0][0].log_softmax(-1)
    for t in range(1, len(every)):
        assert lp["token_logprobs"][t] == pytest.approx(expected[t - 1, every[t]].item(), abs=1e-4), t
        top = lp["top_logprobs"][t]
        assert len(top) == 2 and max(top.values()) == pytest.approx(expected[t - 1].max().item(), abs=1e-4)
    for t in range(len(ids), len(every)):  # greedy: each generated token is its step's likeliest
        assert lp["token_logprobs"][t] == pytest.approx(max(lp["top_logprobs"][t].values()), abs=1e-6)


def test_string_and_token_prompts_stream_and_chat_give_the_same_scores(served):
    base, _, tok = served
    c = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
    text = "KING: Now"
    whole = c.completions.create(model="m", prompt=[text, tok.encode(text, add_special_tokens=False).ids],
                                 max_tokens=6, temperature=0, logprobs=1)
    a, b = whole.choices
    assert a.text == b.text and a.logprobs.token_logprobs == pytest.approx(b.logprobs.token_logprobs, abs=1e-6)
    chunks = list(c.completions.create(model="m", prompt=text, max_tokens=6, temperature=0, logprobs=1, echo=True,
                                       stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == text + a.text
    streamed = [v for ch in chunks if ch.choices[0].logprobs for v in ch.choices[0].logprobs.token_logprobs]
    assert streamed[0] is None and streamed[-6:] == pytest.approx(a.logprobs.token_logprobs, abs=1e-6)
    chat = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "Speak."}], max_tokens=4,
                                     temperature=0, logprobs=True, top_logprobs=3)
    content = chat.choices[0].logprobs.content
    assert "".join(e.token for e in content) == chat.choices[0].message.content and len(content) == 4
    assert all(len(e.top_logprobs) == 3 and e.logprob == pytest.approx(e.top_logprobs[0].logprob) for e in content)
    assert bytes(content[0].bytes).decode() == content[0].token


def test_the_tokenizer_routes_answer_as_lm_evals_remote_tokenizer_asks(served):
    base, _, tok = served
    status, out = post(base, "/tokenize", {"prompt": "ROMEO: hi", "add_special_tokens": False})
    assert status == 200 and out["tokens"] == tok.encode("ROMEO: hi", add_special_tokens=False).ids
    assert out["count"] == len(out["tokens"]) and out["max_model_len"] > 0
    assert post(base, "/detokenize", {"tokens": out["tokens"]}) == (200, {"prompt": "ROMEO: hi"})
    status, info = 200, json.loads(http(f"{base}/tokenizer_info")[1])
    assert status == 200 and info["eos_token"] == "<|endoftext|>" and info["model_max_length"] == out["max_model_len"]
    status, chat = post(base, "/tokenize", {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and chat["count"] > 2


def test_bias_penalties_and_truncation_steer_sampling(served):
    base, _, tok = served
    body = {"prompt": "ROMEO:", "max_tokens": 8, "temperature": 0}
    plain = post(base, "/v1/completions", body)[1]["choices"][0]["text"]
    z = tok.token_to_id("z")
    forced = post(base, "/v1/completions", {**body, "logit_bias": {str(z): 100}})[1]["choices"][0]["text"]
    assert forced == "z" * 8
    banned = post(base, "/v1/completions", {**body, "logit_bias": {str(tok.token_to_id(plain[0])): -100}})[1]
    assert banned["choices"][0]["text"][0] != plain[0]
    repeated = post(base, "/v1/completions", {**body, "max_tokens": 40})[1]["choices"][0]["text"]
    penalised = post(base, "/v1/completions", {**body, "max_tokens": 40, "frequency_penalty": 2.0,
                                               "presence_penalty": 2.0})[1]["choices"][0]["text"]
    assert len(set(penalised)) > len(set(repeated)), (repeated, penalised)
    status, rp = post(base, "/v1/completions", {**body, "max_tokens": 40, "repetition_penalty": 3.0})
    assert status == 200 and rp["choices"][0]["text"] != repeated
    sampled = {post(base, "/v1/completions", {**body, "temperature": 1.5, "top_k": 1, "seed": s})[1]["choices"][0][
        "text"] for s in range(3)}
    assert sampled == {plain}  # top_k 1 is greedy, whatever the temperature and seed
    narrowed = {post(base, "/v1/completions", {**body, "temperature": 1.5, "min_p": 1.0, "seed": s})[1]["choices"][0][
        "text"] for s in range(3)}
    assert narrowed == {plain}  # min_p 1 keeps only the likeliest token


@pytest.mark.parametrize("body, param, fragment", [
    ({"prompt": "a", "logprobs": 6}, "logprobs", "at most 5"),
    ({"prompt": [1, 10**6]}, "prompt", "token id 1000000 is outside the vocabulary"),
    ({"prompt": "a", "logit_bias": {"x": 1}}, "logit_bias", "'x' is no token id"),
    ({"prompt": "a", "top_k": -2}, "top_k", "greater than or equal to -1"),
])
def test_bad_scoring_and_sampling_fields_are_400s_naming_the_field(served, body, param, fragment):
    status, out = post(served[0], "/v1/completions", body)
    assert status == 400 and out["error"]["param"] == param and fragment in out["error"]["message"], out
    status, out = post(served[0], "/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}],
                                                           "logprobs": True, "top_logprobs": 6})
    assert status == 400 and out["error"]["param"] == "top_logprobs"


def test_regex_and_choice_hold_whatever_the_model_would_say(served):
    base = served[0]
    body = {"prompt": "ROMEO:", "max_tokens": 30, "temperature": 1.0}
    pattern = "[A-Z][a-z]{2,5} (is|was) [a-z]{1,8}\\."
    for seed in range(3):
        status, out = post(base, "/v1/completions", {**body, "seed": seed, "regex": pattern})
        text = out["choices"][0]["text"]
        assert status == 200 and re.fullmatch(pattern, text), text
        assert out["choices"][0]["finish_reason"] == "stop"
        status, out = post(base, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Pick."}],
                                                          "choice": ["Montague", "Capulet"], "seed": seed})
        assert status == 200 and out["choices"][0]["message"]["content"] in ("Montague", "Capulet"), out


@pytest.mark.parametrize("extra, param, fragment", [
    ({"regex": "a(b"}, "regex", "parenthesis is not closed"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}},
     "response_format", 'Unsupported type "bogus"'),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", "needs"),
    ({"regex": "a", "choice": ["b"]}, "choice", "one of response_format, regex and choice"),
])
def test_invalid_grammars_are_400s_naming_the_field(served, extra, param, fragment):
    status, out = post(served[0], "/v1/completions", {"prompt": "a", **extra})
    assert status == 400 and out["error"]["param"] == param and fragment in out["error"]["message"], out


def test_a_grammar_the_vocabulary_cannot_write_is_a_400_not_a_server_error(served):
    """The Shakespeare model's characters hold no digits and no braces."""
    for extra, param in (({"choice": ["0"]}, "choice"), ({"regex": "ab0"}, "regex")):
        status, out = post(served[0], "/v1/completions", {"prompt": "a", "max_tokens": 5, **extra})
        assert status == 400 and out["error"]["param"] == param and "vocabulary" in out["error"]["message"], out


def test_a_draft_model_drafts_for_greedy_requests_without_changing_their_text(trained_run, tmp_path):
    """The model as its own draft: every drafted token is accepted, and the text is plain greedy decoding's."""
    proc, base = start_server(trained_run, "--dtype", "fp32", "--speculate", "3", "--draft-model", str(trained_run))
    try:
        answers = {p: post(base, "/v1/completions", {"prompt": p, "max_tokens": 20, "temperature": 0})[1]
                   for p in ("ROMEO:", "KING: Now")}
        metrics = http(f"{base}/metrics")[1]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    model, tok, _ = load_checkpoint(trained_run)
    for prompt, out in answers.items():
        assert out["choices"][0]["text"] == greedy(model, tok, prompt, 20)[0]
    counts = {kind: float(v) for kind, v in re.findall(r'speculative_tokens_total\{kind="(\w+)"\} (\S+)', metrics)}
    assert counts["accepted"] == counts["drafted"] > 20, metrics
    refused = run_cli("serve", "--ckpt", str(trained_run), "--speculate", "2", "--draft-model", "minilm",
                      "--port", "0")
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 1 and "--draft-model minilm: a draft must be a causal language model with the " \
        "same tokenizer" in last, refused.stderr
