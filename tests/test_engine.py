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


def test_a_failing_step_ends_every_sequence_exactly_once():
    """One prompt the model cannot run (an id past its vocabulary) fails the step: the sequence that had
    already joined and the ones still joining each get one end, with the error."""
    model = Transformer(ModelConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, block_size=8)).eval()
    engine = Engine(model, max_batch=3, max_queue=0, stop_ids=frozenset())
    ends: list[list[None]] = [[], [], []]
    sequences = []
    for i, prompt in enumerate(([1, 2], [99], [3])):
        def emit(token, i=i):
            if token is None:
                ends[i].append(None)
        sequences.append(Sequence(prompt, GenerateConfig(temperature=0.0, max_new_tokens=5), emit))
    engine.submit(sequences)
    deadline = time.time() + 10
    while time.time() < deadline and not all(ends):
        time.sleep(0.01)
    time.sleep(0.2)  # a second end would arrive now
    engine.close()
    assert ends == [[None], [None], [None]]
    assert all(s.error and "generation failed" in s.error for s in sequences)
