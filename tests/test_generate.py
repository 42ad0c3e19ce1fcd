import pytest
import torch

from bigmodel.config import DataConfig, GenerateConfig, TrainConfig
from bigmodel.data.prepare import prepare
from bigmodel.errors import BigModelError
from bigmodel.infer.decoder import sample_next
from bigmodel.infer.generate import generate_ids, generate_texts, stream_text
from bigmodel.model.checkpoint import load_checkpoint
from bigmodel.train.trainer import pretrain

from .conftest import TANGPOEMS, shared_file, tiny_model


def test_greedy_is_deterministic_and_matches_top_k_1_and_tiny_top_p(trained_run):
    model, tok, _ = load_checkpoint(trained_run)

    def complete(**sampling) -> str:
        return "".join(stream_text(model, tok, "ROMEO:\n", GenerateConfig(max_new_tokens=40, **sampling)))

    greedy = complete(temperature=0)
    assert greedy == complete(temperature=0)
    assert greedy == complete(temperature=1, top_k=1)
    assert greedy == complete(temperature=1, top_p=1e-6)
    assert greedy == complete(temperature=1e-300)  # no overflow to inf / NaN probabilities
    assert len(greedy) == 40


def test_sampling_follows_the_seed_and_batches_samples(trained_run):
    model, tok, _ = load_checkpoint(trained_run)
    cfg = GenerateConfig(temperature=1.0, max_new_tokens=30, num_samples=3, seed=3)
    first, again = generate_texts(model, tok, "The ", cfg), generate_texts(model, tok, "The ", cfg)
    assert first == again and len(set(first)) == 3


def test_top_k_and_top_p_only_sample_allowed_tokens():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]]).repeat(500, 1)
    gen = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, GenerateConfig(temperature=1, top_k=2), gen).tolist()) == {0, 1}
    # p(0)=0.70, p(1)=0.26: top-p 0.8 keeps exactly these two
    assert set(sample_next(logits, GenerateConfig(temperature=1, top_p=0.8), gen).tolist()) == {0, 1}


@torch.no_grad()
def test_context_overflow_rebuilds_the_cache_and_prompt_limits_are_checked(trained_run):
    """Past the context, each token is the greedy choice given the latest tokens the cache was rebuilt from."""
    model, tok, _ = load_checkpoint(trained_run)
    block = model.config.block_size
    steps = [int(t[0]) for t in generate_ids(model, [1, 2, 3], GenerateConfig(temperature=0, max_new_tokens=3 * block))]
    assert len(steps) == 3 * block
    history, start, cached = [1, 2, 3], 0, 3  # the window the cache holds: history[start:], `cached` tokens of it
    for token in steps:
        logits, _ = model(torch.tensor([history[start:]]))  # no cache: the whole window at once
        assert token == int(logits[0, -1].argmax())
        history.append(token)
        if cached == block:  # full: rebuilt from the latest half window, new token included
            start, cached = len(history) - block // 2, block // 2
        else:
            cached += 1
    assert start > 0  # the context did overflow
    with pytest.raises(BigModelError, match="the context holds"):
        next(generate_ids(model, list(range(block)), GenerateConfig()))


@torch.no_grad()
def test_a_small_cache_grows_as_rows_lengthen_and_keeps_what_they_hold(trained_run):
    """A decoder started with room for 4 positions per row doubles it as ragged rows outgrow it (the server
    reserves no whole context per row); every step still matches a forward pass without a cache."""
    from bigmodel.infer.decoder import Decoder

    model, _, _ = load_checkpoint(trained_run)
    decoder = Decoder(model, rows=2, max_len=4)
    rows = [[5, 6, 7], [8, 9, 10, 11, 12]]
    decoder.prefill([rows[0]], 0)
    decoder.prefill([rows[1]], 1)
    for step in range(20):
        tokens = torch.tensor([(step + r) % 30 for r in range(2)])
        logits = decoder.step(tokens, rows)
        for r in range(2):
            rows[r].append(int(tokens[r]))
            alone, _ = model(torch.tensor([rows[r]]))
            assert torch.allclose(logits[r], alone[0, -1], atol=1e-4)
    assert decoder.cache.max_len == 32 and list(decoder.cache.lengths) == [23, 25]


def test_chinese_bpe_pipeline_generates_valid_chinese(tmp_path):
    corpus = tmp_path / "poems.txt"
    corpus.write_text(shared_file(TANGPOEMS).read_text(encoding="utf-8")[:300_000], encoding="utf-8")
    meta = prepare(DataConfig(input=[str(corpus)], out=str(tmp_path / "data"), tokenizer="bpe", vocab_size=3000))
    model = tiny_model(meta["vocab_size"], n_embd=64, block_size=64, positions="rope")
    train = TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "run"), max_iters=300, batch_size=16,
                        lr=3e-3, warmup_iters=10, eval_interval=150, eval_iters=2)
    result = pretrain(model, train, {"model": model, "train": train})
    assert result["val_loss"] < 6.0
    net, tok, _ = load_checkpoint(tmp_path / "run")
    pieces = list(stream_text(net, tok, "春風", GenerateConfig(max_new_tokens=60, temperature=0.8, top_k=50, seed=1)))
    text = "".join(pieces)
    assert not any("\ufffd" in p for p in pieces)
    assert sum("\u4e00" <= ch <= "\u9fff" for ch in text) >= 10
