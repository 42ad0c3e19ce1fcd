"""Many LoRA adapters over one served base: chosen per request, mixed in one batch, each answering as
its merged checkpoint does; loaded and unloaded while the server runs."""

import json
import random
import threading

import pytest
import torch
from safetensors.torch import load_file

from bigmodel.config import FinetuneConfig
from bigmodel.model.checkpoint import load_checkpoint
from bigmodel.train.finetune import finetune

from .test_finetune import write_rows
from .test_serve import http, start_server

# prompt: tokens to generate, within the 32-token context; the last one fills a whole prefix-cache block
PROMPTS = {"ROMEO:": 16, "KING: Now": 16, "First Citizen:": 16, "First Citizen: Before we pro": 4}


@pytest.fixture(scope="module")
def tuned(trained_run, tmp_path_factory):
    """Two LoRA fine-tunes of the test model on different tasks: name → run folder."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6))) for _ in range(240)]
    runs = {}
    for name, task in (("shout", str.upper), ("mirror", lambda w: w[::-1])):
        folder = tmp_path_factory.mktemp(name)
        write_rows(folder / "train.csv", [(w, task(w)) for w in words], header=("source", "target"))
        finetune(FinetuneConfig(init=str(trained_run), task="seq2seq", train=str(folder / "train.csv"),
                                val=str(folder / "train.csv"), out=str(folder / "run"), method="lora", lora_r=4,
                                epochs=2, lr=2e-2, batch_size=16, label_smoothing=0.0, dtype="fp32"))
        runs[name] = folder / "run"
    return runs


def greedy(model, tok, prompt, tokens):
    """Greedy continuation by recomputing the whole text at each step (no cache, no server): its text and
    each token's log-probability."""
    ids = tok.encode(prompt, add_special_tokens=False).ids
    start, logprobs = len(ids), []
    with torch.no_grad():
        for _ in range(tokens):
            scores = model(torch.tensor([ids]))[0][0, -1].log_softmax(-1)
            ids.append(int(scores.argmax()))
            logprobs.append(scores.max().item())
    return tok.decode(ids[start:]), logprobs


def complete(base, model, prompt):
    status, text = http(f"{base}/v1/completions", {"model": model, "prompt": prompt, "max_tokens": PROMPTS[prompt],
                                                   "temperature": 0, "logprobs": 1})
    assert status == 200, text
    return json.loads(text)


def test_the_adapter_file_holds_the_low_rank_factors_of_the_merged_weights(trained_run, tuned):
    base = load_checkpoint(trained_run)[0].state_dict()
    merged = load_checkpoint(tuned["shout"])[0].state_dict()
    factors = load_file(tuned["shout"] / "best" / "adapter.safetensors")
    a, b = factors["blocks.0.attn.qkv.lora_A"], factors["blocks.0.attn.qkv.lora_B"]
    assert a.shape[0] == b.shape[1] == 4
    delta = merged["blocks.0.attn.qkv.weight"] - base["blocks.0.attn.qkv.weight"]
    assert delta.abs().max() > 1e-3  # the fine-tune moved it
    torch.testing.assert_close(delta, 2.0 * b @ a, atol=1e-5, rtol=1e-4)  # scaling alpha / r = 2


def test_a_mixed_batch_answers_each_request_as_its_merged_checkpoint_does(trained_run, tuned):
    proc, base = start_server(trained_run, "--dtype", "fp32", "--lora-modules", *(f"{n}={p}" for n, p in tuned.items()))
    try:
        models = json.loads(http(f"{base}/v1/models")[1])["data"]
        base_id = models[0]["id"]
        assert [m["id"] for m in models] == [base_id, f"{base_id}:shout", f"{base_id}:mirror"]
        asked = [(name, prompt) for prompt in PROMPTS for name in (None, "shout", "mirror")] * 2
        answers: dict[int, dict] = {}

        def ask(i, name, prompt):  # every request at once: the engine batches base and both adapters together
            answers[i] = complete(base, f"{base_id}:{name}" if name else base_id, prompt)

        threads = [threading.Thread(target=ask, args=(i, *a)) for i, a in enumerate(asked)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        status, text = http(f"{base}/v1/completions", {"adapter": "mirror", "prompt": "ROMEO:", "max_tokens": 16,
                                                       "temperature": 0})
        by_field = json.loads(text)
        for bad in ({"model": f"{base_id}:nope"}, {"adapter": "nope"}, {"model": "nope"}):
            status, text = http(f"{base}/v1/completions", {**bad, "prompt": "ROMEO:", "max_tokens": 2})
            assert status == 400 and "no adapter 'nope'" in json.loads(text)["error"]["message"], text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    references = {None: load_checkpoint(trained_run)}
    references |= {name: load_checkpoint(run) for name, run in tuned.items()}
    expected = {(name, p): greedy(*references[name][:2], p, n) for name in references for p, n in PROMPTS.items()}
    assert len({expected[n, "ROMEO:"][0] for n in references}) == 3  # the adapters change what the model says
    for i, (name, prompt) in enumerate(asked):
        choice = answers[i]["choices"][0]
        assert choice["text"] == expected[name, prompt][0], (name, prompt)
        assert choice["logprobs"]["token_logprobs"] == pytest.approx(expected[name, prompt][1], abs=1e-4)
        assert answers[i]["model"] == (f"{base_id}:{name}" if name else base_id)
    assert by_field["choices"][0]["text"] == expected["mirror", "ROMEO:"][0] and by_field["model"].endswith(":mirror")


def test_adapters_load_and_unload_at_run_time_only_when_allowed(trained_run, tuned, tmp_path):
    proc, base = start_server(trained_run, "--dtype", "fp32", "--runtime-lora", "--api-key-env", "BIGMODEL_TEST_KEY")
    try:
        route = f"{base}/v1/load_lora_adapter"
        assert http(route, {"lora_name": "shout", "lora_path": str(tuned["shout"])})[0] == 401  # the key guards it
        status, text = http(route, {"lora_name": "shout", "lora_path": str(tuned["shout"])}, key="s3cret")
        assert status == 200, text
        body = {"model": "shout", "prompt": "KING: Now", "max_tokens": 16, "temperature": 0}
        status, text = http(f"{base}/v1/completions", body, key="s3cret")
        loaded = json.loads(text)["choices"][0]["text"]
        status, text = http(route, {"lora_name": "base", "lora_path": str(trained_run)}, key="s3cret")
        assert status == 400 and "no adapter.safetensors" in text, text  # a plain checkpoint is no adapter
        status, text = http(route, {"lora_name": "x", "lora_path": str(tmp_path / "missing")}, key="s3cret")
        assert status == 400 and "no such checkpoint folder" in text, text
        assert http(f"{base}/v1/unload_lora_adapter", {"lora_name": "shout"}, key="s3cret")[0] == 200
        status, text = http(f"{base}/v1/completions", body, key="s3cret")
        assert status == 400 and "no adapter 'shout'" in text, text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    model, tok, _ = load_checkpoint(tuned["shout"])
    assert loaded == greedy(model, tok, "KING: Now", 16)[0]
    proc, base = start_server(trained_run)
    try:
        status, text = http(f"{base}/v1/load_lora_adapter", {"lora_name": "shout", "lora_path": str(tuned["shout"])})
        assert status == 400 and "--runtime-lora" in text, text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
