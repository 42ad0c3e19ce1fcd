import pytest
import torch
import torch.nn.functional as F

from bigmodel.config import ModelConfig, preset
from bigmodel.errors import BigModelError
from bigmodel.model.cache import KVCache
from bigmodel.model.transformer import Transformer

VARIANTS = [
    {},
    {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False},
    {"n_kv_head": 1, "positions": "rope"},
    {"tie_embeddings": False},
]


@pytest.mark.parametrize("batch", [1, 2])  # batch 1 decodes through the one-row OpenBLAS path
@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_kv_cache_decoding_matches_a_full_forward(variant, batch):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, n_layer=2, n_head=4, n_embd=32, block_size=24, **variant)
    model = Transformer(cfg).eval()
    idx = torch.randint(50, (batch, 20))
    full, _ = model(idx)
    cache = KVCache.allocate(cfg, batch, cfg.block_size, torch.float32, "cpu")
    pieces = [model(idx[:, :7], cache=cache)[0]]  # prefill, then one token at a time, then a chunk
    for t in range(7, 12):
        pieces.append(model(idx[:, t:t + 1], cache=cache)[0])
    pieces.append(model(idx[:, 12:], cache=cache)[0])
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_rows_of_different_lengths_decode_together_as_they_would_alone(variant):
    """The serving batch: sequences joined at different times share one step, each at its own position."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, n_layer=2, n_head=4, n_embd=32, block_size=24, **variant)
    model = Transformer(cfg).eval()
    prompts = [torch.randint(50, (1, n)) for n in (9, 2, 5)]
    cache = KVCache.allocate(cfg, 4, cfg.block_size, torch.float32, "cpu")
    for row, prompt in enumerate(prompts):  # each prompt fills its own row
        model(prompt, cache=cache.rows(row, row + 1))
    cache.move_row(2, 1)  # the row-1 sequence leaves; the last one moves into its place
    prompts = [prompts[0], prompts[2]]
    for _ in range(3):
        new = torch.randint(50, (2, 1))
        together, _ = model(new, cache=cache.rows(0, 2))
        prompts = [torch.cat([p, new[i:i + 1]], dim=1) for i, p in enumerate(prompts)]
        for row, sequence in enumerate(prompts):
            alone, _ = model(sequence)
            torch.testing.assert_close(together[row, -1], alone[0, -1], atol=1e-5, rtol=1e-4)
    assert cache.lengths[:2].tolist() == [12, 8]


def test_loss_ignores_minus_one_and_tied_weights_are_shared():
    cfg = ModelConfig(vocab_size=30, n_layer=1, n_head=2, n_embd=16, block_size=8)
    model = Transformer(cfg)
    assert model.lm_head.weight is model.tok_emb.weight
    x = torch.randint(30, (2, 8))
    y = x.clone()
    y[:, 4:] = -1
    logits, loss = model(x, y)
    expected = torch.nn.functional.cross_entropy(logits[:, :4].reshape(-1, 30), x[:, :4].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_presets_have_the_documented_shapes():
    gpt2 = Transformer(ModelConfig(vocab_size=50257, **preset("gpt2")))
    assert 123e6 < gpt2.num_params() < 125e6  # GPT-2 small: 124M
    assert preset("baby") == dict(n_layer=4, n_head=4, n_embd=128, block_size=64)
    with pytest.raises(BigModelError, match="unknown preset"):
        preset("huge")


def test_too_long_input_and_bad_config_are_clear_errors():
    model = Transformer(ModelConfig(vocab_size=10, n_layer=1, n_head=2, n_embd=8, block_size=4))
    with pytest.raises(BigModelError, match="longer than the context"):
        model(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(BigModelError, match="divisible"):
        ModelConfig(n_embd=10, n_head=3)


def test_the_linear_layers_fast_paths_give_f_linear_s_result():
    """One row (OpenBLAS), a few (W @ x.T), a small product (torch's own) and a large one (oneDNN) give what
    `F.linear` gives; autograd takes torch's own path."""
    from bigmodel.model.decoding import SMALL_PRODUCT, Linear

    layer = Linear(256, 512)
    for rows in (1, 3, 50, SMALL_PRODUCT // layer.weight.numel()):
        x = torch.randn(rows, 256)
        with torch.no_grad():
            fast = layer(x)
        assert torch.allclose(fast, F.linear(x, layer.weight, layer.bias), atol=1e-4), rows
        assert layer(x).requires_grad


@torch.no_grad()
def test_only_a_single_row_decoding_step_runs_on_one_torch_thread():
    """Prefill, evaluation and batched decoding keep every core; a one-row decoding step hands them to
    OpenBLAS, and the model's own forward never changes the process's threads."""
    from bigmodel.config import GenerateConfig
    from bigmodel.infer.generate import generate_ids

    model = Transformer(ModelConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, block_size=32)).eval()
    seen = []
    model.blocks[0].register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = GenerateConfig(max_new_tokens=3, temperature=0.0)
        list(generate_ids(model, list(range(20)), cfg))  # prefill, then 2 decoding steps of one row
        list(generate_ids(model, list(range(20)), cfg, batch_size=2))  # prefill, then 2 steps of two rows
        model(torch.randint(50, (1, 1)), cache=KVCache.allocate(model.config, 1, 32, torch.float32, "cpu"))
    finally:
        torch.set_num_threads(threads)
    assert seen == [2, 1, 1, 2, 2, 2, 2]


@torch.no_grad()
def test_a_cache_refuses_a_step_past_the_context():
    model = Transformer(ModelConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, block_size=8)).eval()
    cache = KVCache.allocate(model.config, 2, 8, torch.float32, "cpu")
    model(torch.randint(50, (2, 6)), cache=cache)
    with pytest.raises(BigModelError, match="sequence of 9 tokens is longer than the context"):
        model(torch.randint(50, (2, 3)), cache=cache)
    assert cache.lengths.tolist() == [6, 6]  # nothing was written
