"""The continuous-batching engine on its own: its thread, a real model, no HTTP."""

import threading
import time

import pytest
import torch

from bigmodel.config import GenerateConfig, ModelConfig
from bigmodel.infer.generate import generate_ids
from bigmodel.model.transformer import Transformer
from bigmodel.serve.engine import Engine, QueueFull, Sequence, Token


def collect(prompt: list[int], max_new_tokens: int) -> tuple[Sequence, list[int], threading.Event]:
    tokens, finished = [], threading.Event()

    def emit(token: Token | None) -> None:
        if token is None:
            finished.set()
        else:
            tokens.append(token.id)

    return Sequence(prompt, GenerateConfig(temperature=0.0, max_new_tokens=max_new_tokens), emit), tokens, finished


def test_sequences_joining_at_different_times_decode_as_they_would_alone():
    """Greedy continuations past the context (16 tokens, so rows refill) equal batch-1 generation."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=32, block_size=16)).eval()
    prompts = [[1, 2, 3], [7] * 9, [4, 5], [9, 8, 7, 6]]
    engine = Engine(model, max_batch=3, max_queue=4, stop_ids=frozenset())  # the fourth waits for a row
    runs = [collect(p, 40 - 5 * i) for i, p in enumerate(prompts)]
    engine.submit([runs[0][0]])
    engine.submit([r[0] for r in runs[1:]])
    for _, _, finished in runs:
        assert finished.wait(60)
    engine.close()
    for prompt, (seq, tokens, _) in zip(prompts, runs, strict=True):
        alone = [int(t[0]) for t in generate_ids(model, prompt, seq.cfg)]
        assert tokens == alone and len(tokens) == seq.cfg.max_new_tokens
    assert not engine.thread.is_alive()


def test_a_full_engine_refuses_and_a_cancelled_sequence_leaves():
    model = Transformer(ModelConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, block_size=8)).eval()
    engine = Engine(model, max_batch=1, max_queue=0, stop_ids=frozenset())
    long, tokens, finished = collect([1], 10**9)
    engine.submit([long])
    with pytest.raises(QueueFull):
        engine.submit([collect([2], 3)[0]])
    while not tokens:  # it is generating
        time.sleep(0.001)
    long.cancel()
    assert finished.wait(10) and 0 < len(tokens) < 10**9
    short, tokens, finished = collect([2], 3)
    engine.submit([short])
    assert finished.wait(10) and len(tokens) == 3
    engine.close()


def test_a_prompt_that_cannot_run_fails_alone_and_every_sequence_ends_exactly_once():
    """One prompt the model cannot run (an id past its vocabulary) fails its own sequence; the two joining
    beside it finish as they would alone. Each gets exactly one end."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, block_size=8)).eval()
    prompts = ([1, 2], [99], [3])
    cfg = GenerateConfig(temperature=0.0, max_new_tokens=5)
    alone = [[int(t[0]) for t in generate_ids(model, list(prompts[i]), cfg)] for i in (0, 2)]
    engine = Engine(model, max_batch=3, max_queue=0, stop_ids=frozenset())
    ends: list[list[None]] = [[], [], []]
    tokens: list[list[int]] = [[], [], []]
    sequences = []
    for i, prompt in enumerate(prompts):
        def emit(token, i=i):
            (ends[i].append(None) if token is None else tokens[i].append(token.id))
        sequences.append(Sequence(list(prompt), cfg, emit))
    engine.submit(sequences)
    deadline = time.time() + 10
    while time.time() < deadline and not all(ends):
        time.sleep(0.01)
    time.sleep(0.2)  # a second end would arrive now
    engine.close()
    assert ends == [[None], [None], [None]]
    assert "generation failed" in sequences[1].error and not tokens[1]
    assert sequences[0].error is None and sequences[2].error is None
    assert [tokens[0], tokens[2]] == alone


def test_prompts_sharing_a_prefix_reuse_its_blocks_and_decode_exactly_as_without():
    from bigmodel.serve.prefix import BLOCK

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=128,
                                    positions="rope", norm="rmsnorm", mlp="swiglu")).eval()
    system = [int(t) for t in torch.randint(0, 50, (3 * BLOCK + 5,))]
    prompts = [system + [i, i + 1, i + 2] for i in range(5)] + [system[:BLOCK - 1]]
    outputs = {}
    for cached in (0, 1):
        engine = Engine(model, max_batch=2, max_queue=8, stop_ids=frozenset(), prefix_cache_mb=cached)
        runs = [collect(p, 12) for p in prompts]
        for seq, _, finished in runs:  # one after another: each finds what the ones before left
            engine.submit([seq])
            assert finished.wait(60)
        engine.close()
        outputs[cached] = [tokens for _, tokens, _ in runs]
        looked_up = engine.metrics.prefix.labels("looked_up")._value.get()
        hits = engine.metrics.prefix.labels("hit")._value.get()
    assert outputs[1] == outputs[0]
    assert looked_up == sum(len(p) for p in prompts) and hits == 4 * 3 * BLOCK  # the first and the short one miss


def test_the_prefix_cache_keeps_prefixes_within_its_budget():
    from bigmodel.model.cache import KVCache
    from bigmodel.serve.prefix import BLOCK, PrefixCache

    config = ModelConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=16, block_size=256)
    cache = KVCache.allocate(config, 1, 256, torch.float32, "cpu")
    for store in (*cache.keys, *cache.values):
        store.normal_()
    block_bytes = 2 * config.n_layer * config.n_kv_head * BLOCK * config.head_dim * 4
    prefixes = PrefixCache(3 * block_bytes)
    prompt = list(range(5 * BLOCK))
    prefixes.store(prompt, cache, 0)
    assert prefixes.used == 3 * block_bytes and len(prefixes.blocks) == 3
    other = KVCache.allocate(config, 2, 256, torch.float32, "cpu")
    assert prefixes.load(prompt, other, 1) == 3 * BLOCK  # the first three blocks stayed: a prefix, not a tail
    assert torch.equal(other.keys[1][1, :, :3 * BLOCK], cache.keys[1][0, :, :3 * BLOCK])
    assert prefixes.load([7, *prompt], other, 0) == 0  # same tokens at other positions are no prefix


@pytest.mark.parametrize("drafter", ["lookup", "itself", "another"])
def test_speculative_rows_decode_token_for_token_as_plain_greedy_ones(drafter):
    """Drafts checked in one pass (by prompt lookup, or from a draft model: the model itself, which must
    then be right every time, or a different one): greedy texts equal plain decoding, and a sampled row in
    the same batch still gets its tokens."""
    torch.manual_seed(0)
    shape = dict(vocab_size=40, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, positions="rope", norm="rmsnorm",
                 mlp="swiglu")
    model = Transformer(ModelConfig(**shape, block_size=64)).eval()
    draft = {"lookup": None, "itself": model,
             "another": Transformer(ModelConfig(**{**shape, "n_layer": 1}, block_size=48)).eval()}[drafter]
    prompts = [[1, 2, 3, 4, 5] * 4, [7, 8, 9] * 5 + [1], [3, 1, 4, 1, 5, 9, 2, 6]]
    outputs = {}
    for speculate in (0, 4):
        engine = Engine(model, max_batch=4, max_queue=4, stop_ids=frozenset(), speculate=speculate, draft=draft)
        runs = [collect(p, 70 - 5 * i) for i, p in enumerate(prompts)]  # past the context: rows refill
        sampled, sampled_tokens, sampled_done = collect([2, 4, 6], 20)
        sampled.cfg.temperature = 0.9
        engine.submit([r[0] for r in runs] + [sampled])
        for _, _, finished in [*runs, (None, None, sampled_done)]:
            assert finished.wait(60)
        engine.close()
        outputs[speculate] = [tokens for _, tokens, _ in runs]
        assert len(sampled_tokens) == 20
    assert outputs[4] == outputs[0]
    drafted, accepted = (engine.metrics.drafted.labels(k)._value.get() for k in ("drafted", "accepted"))
    assert accepted > 0
    if drafter == "itself":
        assert accepted == drafted > 100  # its drafts follow the rows exactly, past context refills too
