"""The smallest case of every verb on cuda:0. Deselected where there is no CUDA device (the header says so);
on a GPU machine: `python -m pytest -m cuda`. They guard the code paths that move tensors between the host
and the device: a CPU index into CUDA activations, a CPU identity added to a CUDA map, logits gathered by a
CPU index, dropout's RNG on resume."""

import json

import pytest

from .conftest import metric_rows, run_cli
from .test_finetune import synthetic, write_rows
from .test_one_owner import checkpoints  # noqa: F401 (a fixture: the Llama, its two adapters, a classifier)
from .test_serve import http, start_server

pytestmark = pytest.mark.cuda
CUDA = ("--device", "cuda:0")


def ok(*args):
    done = run_cli(*args, *CUDA)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def labelled(tmp_path):
    return write_rows(tmp_path / "train.csv", synthetic(96, 0)), write_rows(tmp_path / "val.csv", synthetic(32, 1))


def test_pretrain_resumes_on_cuda(shakespeare_char, tmp_path):
    common = ("pretrain", "--data", str(shakespeare_char), "--out", str(tmp_path / "run"), "--n-layer", "2",
              "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8", "--eval-interval", "10",
              "--eval-iters", "2", "--dropout", "0.1")
    ok(*common, "--max-iters", "10")
    ok(*common, "--max-iters", "20", "--resume")  # the CUDA RNG comes back with the host's
    assert [int(r["iter"]) for r in metric_rows(tmp_path / "run")][-1] == 20


@pytest.mark.parametrize("method", [("--method", "full"), ("--method", "lora"), ("--dp-epsilon", "8")])
def test_finetune_full_lora_and_private_on_cuda(trained_run, tmp_path, method):
    train, val = labelled(tmp_path)
    ok("finetune", "--init", str(trained_run), "--train", str(train), "--val", str(val), "--out", str(tmp_path / "ft"),
       "--epochs", "1", "--batch-size", "16", *method)
    ok("evaluate", "--task", "classify", "--ckpt", str(tmp_path / "ft"), "--data", str(val))
    ok("explain", "--ckpt", str(tmp_path / "ft"), "--text", "xx good zz", "--out", str(tmp_path / "why"),
       "--steps", "4")


def test_generate_quantize_and_evaluate_on_cuda(trained_run, shakespeare_char, tmp_path):
    ok("generate", "--ckpt", str(trained_run), "--prompt", "ROMEO:", "--max-new-tokens", "8")
    ok("evaluate", "--ckpt", str(trained_run), "--data", str(shakespeare_char))
    ok("quantize", "--ckpt", str(trained_run), "--method", "bf16", "--out", str(tmp_path / "q"),
       "--text", str(shakespeare_char))


def test_serve_with_adapters_and_echo_on_cuda(checkpoints):  # noqa: F811
    proc, base = start_server(checkpoints / "base", *CUDA, "--lora-modules", f"upper={checkpoints / 'upper'}")
    try:
        for model in ("base", "base:upper"):
            status, body = http(f"{base}/v1/completions", {"model": model, "prompt": "KING:", "max_tokens": 4,
                                                           "echo": True, "logprobs": 2, "temperature": 0})
            assert status == 200, body
            assert json.loads(body)["choices"][0]["logprobs"]["token_logprobs"][0] is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    proc, base = start_server(checkpoints / "classifier", *CUDA)
    try:
        status, body = http(f"{base}/v1/explain", {"input": "KING: Now", "steps": 4})
        assert status == 200, body
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_federated_on_cuda(trained_run, tmp_path):
    train, val = labelled(tmp_path)
    ok("federated", "--init", str(trained_run), "--train", str(train), "--val", str(val), "--out", str(tmp_path / "f"),
       "--clients", "2", "--rounds", "1", "--epochs", "1", "--batch-size", "16")
