import re
import time

from safetensors.torch import load_file

from .conftest import run_cli


def _perplexity_change(stdout: str) -> float:
    return float(re.search(r"\(([+-][0-9.]+)%\)", stdout).group(1))


def _serves_a_completion(ckpt, **options) -> dict:
    """The server app on `ckpt`, started in-process; the usage of one completion it gives."""
    from fastapi import testclient

    from bigmodel.config import ServeConfig
    from bigmodel.serve.app import create_app

    with testclient.TestClient(create_app(ServeConfig(ckpt=str(ckpt), **options))) as client:
        for _ in range(200):
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.05)
        answer = client.post("/v1/completions", json={"prompt": "KING:", "max_tokens": 5, "temperature": 0})
    assert answer.status_code == 200, answer.text
    return answer.json()["usage"]


def test_bf16_weights_halve_the_size_and_keep_perplexity(trained_run, shakespeare_char, tmp_path):
    result = run_cli("quantize", "--ckpt", str(trained_run), "--out", str(tmp_path / "q"), "--method", "bf16",
                     "--text", str(shakespeare_char))
    assert result.returncode == 0, result.stderr
    assert abs(_perplexity_change(result.stdout)) <= 2.0
    weights = load_file(tmp_path / "q" / "model.safetensors")
    assert all(str(t.dtype) == "torch.bfloat16" for t in weights.values())
    gen = run_cli("generate", "--ckpt", str(tmp_path / "q"), "--prompt", "KING:", "--max-new-tokens", "10")
    assert gen.returncode == 0 and gen.stdout.startswith("KING:"), gen.stderr


def test_pruning_zeroes_half_of_each_block_matrix_and_still_generates(trained_run, shakespeare_char, tmp_path):
    result = run_cli("prune", "--ckpt", str(trained_run), "--out", str(tmp_path / "p"), "--sparsity", "0.5",
                     "--text", str(shakespeare_char))
    assert result.returncode == 0, result.stderr
    assert "50% magnitude pruning" in result.stdout and _perplexity_change(result.stdout) > 0
    weights = load_file(tmp_path / "p" / "model.safetensors")
    matrices = [t for k, t in weights.items() if k.startswith("blocks.") and t.dim() == 2]
    assert matrices and all(abs((t == 0).float().mean().item() - 0.5) < 0.01 for t in matrices)
    gen = run_cli("generate", "--ckpt", str(tmp_path / "p"), "--prompt", "KING:", "--max-new-tokens", "10")
    assert gen.returncode == 0 and gen.stdout.startswith("KING:"), gen.stderr
    assert _serves_a_completion(tmp_path / "p")["completion_tokens"] == 5


def test_int8_stores_int8_matrices_keeps_perplexity_and_generates(trained_run, shakespeare_char, tmp_path):
    result = run_cli("quantize", "--ckpt", str(trained_run), "--out", str(tmp_path / "q"), "--method", "int8",
                     "--text", str(shakespeare_char))
    assert result.returncode == 0, result.stderr
    assert "dynamic int8" in result.stdout and abs(_perplexity_change(result.stdout)) <= 2.0
    weights = load_file(tmp_path / "q" / "model.safetensors")
    int8 = [k for k, t in weights.items() if str(t.dtype) == "torch.int8"]
    assert "blocks.0.attn.qkv.weight.int8" in int8 and "lm_head.weight.int8" in int8
    assert not any(k.endswith("qkv.weight") for k in weights)  # no fp32 copy of a quantized matrix
    gen = run_cli("generate", "--ckpt", str(tmp_path / "q"), "--prompt", "KING:", "--max-new-tokens", "10")
    assert gen.returncode == 0 and gen.stdout.startswith("KING:"), gen.stderr
    assert _serves_a_completion(tmp_path / "q")["completion_tokens"] == 5
    assert _serves_a_completion(trained_run, quantize="int8")["completion_tokens"] == 5  # serve --quantize int8
    refused = run_cli("export", "--ckpt", str(tmp_path / "q"), "--to-hf", str(tmp_path / "hf"))
    assert refused.returncode == 1 and "int8" in refused.stderr
