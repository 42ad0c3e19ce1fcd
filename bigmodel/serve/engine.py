"""Continuous batching: requests join and leave one running batch of decode steps.

The engine is the served model's `Owner` (`owner.py`): its thread runs the calls other routes queue,
then a step of decoding, and nothing else touches the model. Each step it admits waiting sequences into free rows of a
shared `KVCache` (running each prompt once), then runs a single forward pass that gives
every active row its next token at that row's own position, and samples each row with
its own settings. A finished or abandoned sequence leaves at once: the last active row
moves into its place, so the active rows stay 0..n-1 and a step computes only those.

A sequence that asks for log-probabilities gets each token's, and its `logprobs` likeliest
alternatives', from the model's own distribution (before penalties, temperature and truncation, as
evaluation harnesses need them); with `echo` its prompt is scored too, from the same prefill.
With a `PrefixCache`, a prompt that starts as an earlier one did runs only from where they differ.

A sequence may run with a LoRA adapter (`model/lora.py`): rows with different adapters, or none,
share a step; cached prefixes are kept per adapter.

With `speculate` > 0, greedy rows draft up to that many tokens (by prompt lookup, or from a small
draft model: `drafts.py`) and one forward pass checks every draft at once; a row keeps the drafted
tokens the model would have chosen itself, then the model's own next one, so its text is the same
as without.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from bigmodel.config import GenerateConfig
from bigmodel.infer.decoder import Decoder, Penalties, sample_next
from bigmodel.model.lora import Adapter
from bigmodel.model.transformer import Transformer
from bigmodel.serve.drafts import DraftModel, PromptLookup
from bigmodel.serve.grammar import DeadEnd, Matcher
from bigmodel.serve.metrics import Metrics
from bigmodel.serve.owner import Owner, ShuttingDown
from bigmodel.serve.prefix import PrefixCache

log = logging.getLogger("bigmodel.serve")


class QueueFull(Exception):
    """More sequences than the batch and the queue hold together."""


class TooLarge(Exception):
    """More sequences in one request than the batch and the queue could ever hold."""


class Token(NamedTuple):
    """A token, and when asked its log-probability and the likeliest alternatives (id, log-probability)."""

    id: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


def scored(logits: torch.Tensor, ids: torch.Tensor, alternatives: int) -> list[Token]:
    """`ids` (T,) scored by the logits (T, V) that predicted them, with `alternatives` likeliest others."""
    logprobs = logits.float().log_softmax(dim=-1)
    chosen = logprobs.gather(-1, ids[:, None])[:, 0].tolist()
    best = logprobs.topk(alternatives, dim=-1) if alternatives else None
    return [Token(int(i), lp, tuple(zip(best.indices[t].tolist(), best.values[t].tolist(), strict=True))
                  if best is not None else ()) for t, (i, lp) in enumerate(zip(ids.tolist(), chosen, strict=True))]


@dataclass(eq=False)
class Sequence:
    """One continuation being generated; `emit` gets each `Token`, then None when it ends.

    `logprobs` (None: not asked) scores every token produced with that many alternatives; `echo`
    scores the prompt too (`prompt_scores`, the first token's log-probability None), set before the
    first token is emitted."""

    prompt: list[int]
    cfg: GenerateConfig
    emit: Callable[[Token | None], None]
    penalties: Penalties = Penalties()
    grammar: object | None = None  # an xgrammar CompiledGrammar the text must follow (`grammar.py`)
    logprobs: int | None = None
    echo: bool = False
    adapter: Adapter | None = None  # the LoRA adapter it runs with (None: the base model)
    prompt_scores: list[Token] = field(default_factory=list)
    error: str | None = None
    dead_end: bool = False  # the error is the request's grammar, which the vocabulary cannot follow
    done: bool = False  # finished, or given up by its consumer
    ended: bool = False  # its end (None) has been emitted: it happens once
    history: list[int] = field(init=False)  # the prompt, then every token produced

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.cfg.seed)
        self.history = list(self.prompt)
        self.matcher: Matcher | None = None  # made when it joins, on the engine's thread

    @property
    def produced(self) -> int:
        return len(self.history) - len(self.prompt)

    def cancel(self) -> None:
        """Give up the row (the client left, or a stop string was met); safe from any thread."""
        self.done = True

    def end(self, error: str | None = None) -> None:
        """Tell the consumer it is over (with why, when it failed), once whatever happens after."""
        if self.ended:
            return
        self.ended, self.done = True, True
        if error is not None and self.error is None:
            self.error = error
        self.emit(None)


class Engine(Owner):
    def __init__(self, model: Transformer, max_batch: int, max_queue: int, stop_ids: frozenset[int],
                 prefix_cache_mb: float = 0, metrics: Metrics | None = None, speculate: int = 0,
                 draft: Transformer | None = None) -> None:
        """`draft`: a small model with the same vocabulary that drafts for `speculate` (else prompt lookup)."""
        self.model, self.max_batch, self.max_queue, self.stop_ids = model, max_batch, max_queue, stop_ids
        self.speculate = speculate
        self.decoder = Decoder(model, max_batch)
        self.drafter = (DraftModel(draft, max_batch) if draft is not None else PromptLookup()) if speculate else None
        self.prefixes = PrefixCache(int(prefix_cache_mb * 2**20)) if prefix_cache_mb > 0 else None
        self.metrics = metrics or Metrics()
        self.active: list[Sequence] = []  # row i of the cache belongs to active[i]
        self.waiting: collections.deque[Sequence] = collections.deque()
        super().__init__("bigmodel-engine")

    @property
    def depth(self) -> int:
        """Sequences generating or waiting for a row."""
        return len(self.active) + len(self.waiting)

    @property
    def capacity(self) -> int:
        """Sequences the engine holds at most: generating and waiting together."""
        return self.max_batch + self.max_queue

    def submit(self, sequences: list[Sequence]) -> None:
        """Queue all of a request's sequences, or none of them."""
        if len(sequences) > self.capacity:
            raise TooLarge
        with self.wake:
            if self.closing:
                raise ShuttingDown
            if self.depth + len(sequences) > self.capacity:
                raise QueueFull
            self.waiting.extend(sequences)
            self.wake.notify()

    def _has_work(self) -> bool:
        return bool(self.calls or self.active or self.waiting)

    def _take(self) -> list[Sequence]:
        return [self.waiting.popleft() for _ in range(min(len(self.waiting), self.max_batch - len(self.active)))]

    def _turn(self, joining: list[Sequence]) -> None:
        with torch.inference_mode():
            for seq in joining:
                self._admit(seq)
            try:
                self._step()
            except Exception as e:  # a broken step fails the sequences in it, never the server
                log.exception("generation step failed")
                for seq in self.active:
                    seq.end(f"generation failed: {e}")
                self.active.clear()

    def _admit(self, seq: Sequence) -> None:
        """Join one sequence; if its prompt cannot run, it fails alone and its row is given back."""
        if seq.done:  # its client left while it waited
            seq.end()
            return
        row = len(self.active)
        try:
            self._join(seq, row)
        except Exception as e:
            log.exception("a prompt failed to join")
            self.active.pop(row)
            seq.end(f"generation failed: {e}")

    def _join(self, seq: Sequence, row: int) -> None:
        """Run the prompt into a fresh row and emit the first token."""
        self.active.append(seq)
        if seq.grammar is not None:
            seq.matcher = Matcher(seq.grammar, self.model.config.vocab_size)
        scoring = seq.echo and seq.logprobs is not None  # every prompt token's logits: none may come from cache
        start, salt = 0, seq.adapter.key if seq.adapter else ""
        if self.prefixes is not None and not scoring:
            self.decoder.reserve(len(seq.prompt))
            start = self.prefixes.load(seq.prompt, self.decoder.cache, row, salt)
            self.metrics.prefix.labels("looked_up").inc(len(seq.prompt))
            self.metrics.prefix.labels("hit").inc(start)
        logits = self.decoder.prefill([seq.prompt], row, every=scoring, start=start, adapters=[seq.adapter])[0].cpu()
        if self.prefixes is not None:
            self.prefixes.store(seq.prompt, self.decoder.cache, row, salt)
        if self.drafter is not None:
            self.drafter.join(row, seq.prompt)
        if scoring:
            seq.prompt_scores = [Token(seq.prompt[0]), *scored(logits[:-1], torch.tensor(seq.prompt[1:]),
                                                               seq.logprobs)]
        self._accept(row, logits[-1] if scoring else logits)

    def _step(self) -> None:
        """One token for every active row (more where drafts are accepted), in one forward pass."""
        self._leave_finished()
        if not self.active:
            return
        drafts = self._drafts()
        width = 1 + max(map(len, drafts))
        n = len(self.active)
        if width > 1:
            self._check_drafts(drafts, width)
        else:
            tokens = torch.tensor([seq.history[-1] for seq in self.active], device=self.decoder.device)
            logits = self.decoder.step(tokens, [seq.history for seq in self.active],
                                       [seq.adapter for seq in self.active]).cpu()  # one transfer a step
            for row in range(n):
                self._accept(row, logits[row])
        self._leave_finished()

    def _drafts(self) -> list[list[int]]:
        """Tokens to check for each row: greedy rows only (a sampled row's next token is not the argmax), only
        where nothing but the logits decides it (no penalties, grammar or scores), within the context."""
        if self.drafter is None:
            return [[] for _ in self.active]
        room = self.decoder.capacity - int(self.decoder.cache.lengths[:len(self.active)].max()) - 1
        wants = [0 if seq.cfg.temperature >= 1e-4 or seq.penalties or seq.matcher or seq.logprobs is not None
                 else max(0, min(self.speculate, seq.cfg.max_new_tokens - seq.produced - 1, room))
                 for seq in self.active]
        return self.drafter.propose([seq.history for seq in self.active], wants) if any(wants) else [[]] * len(wants)

    def _check_drafts(self, drafts: list[list[int]], width: int) -> None:
        """Run each row's last token and its draft (padded to `width`) at once; keep what greedy would pick."""
        rows = [[seq.history[-1], *draft, *[seq.history[-1]] * (width - 1 - len(draft))]
                for seq, draft in zip(self.active, drafts, strict=True)]
        logits = self.decoder.extend(torch.tensor(rows, device=self.decoder.device),
                                     [seq.adapter for seq in self.active]).cpu()
        for row, (seq, draft) in enumerate(zip(self.active, drafts, strict=True)):
            start = int(self.decoder.cache.lengths[row]) - width  # where the row's last token went
            kept = 0
            while kept < len(draft) and not seq.done and int(logits[row, kept].argmax()) == draft[kept]:
                self._accept(row, logits[row, kept])
                kept += 1
            self._accept(row, logits[row, kept])  # the model's own token after what it kept
            self.decoder.cache.lengths[row] = start + 1 + kept
            self.drafter.accepted(row, kept)
            self.metrics.drafted.labels("drafted").inc(len(draft))
            self.metrics.drafted.labels("accepted").inc(kept)

    def _accept(self, row: int, logits: torch.Tensor) -> None:
        """Choose row `row`'s next token from its logits (on the host); a row whose choice fails ends alone."""
        seq = self.active[row]
        if seq.done:
            return
        try:
            self._choose(seq, logits)
        except Exception as e:
            log.exception("choosing a token failed")
            seq.error, seq.done = f"generation failed: {e}", True

    def _choose(self, seq: Sequence, logits: torch.Tensor) -> None:
        steered = seq.penalties.apply(logits, seq.history, len(seq.prompt)) if seq.penalties else logits
        if seq.matcher is not None:
            try:
                steered = seq.matcher.mask(steered)
            except DeadEnd as e:
                seq.error, seq.dead_end, seq.done = str(e), True, True
                return
        token = int(sample_next(steered[None], seq.cfg, seq.generator)[0])  # each sequence's own generator
        seq.history.append(token)
        seq.emit(Token(token) if seq.logprobs is None else scored(logits[None], torch.tensor([token]), seq.logprobs)[0])
        complete = seq.matcher is not None and seq.matcher.accept(token)
        if complete or token in self.stop_ids or seq.produced >= seq.cfg.max_new_tokens:
            seq.done = True  # its row is free at the next look

    def _leave_finished(self) -> None:
        row = 0
        while row < len(self.active):
            seq = self.active[row]
            if not seq.done:
                row += 1
                continue
            seq.end()
            last = len(self.active) - 1
            if row != last:
                self.decoder.cache.move_row(last, row)
                if self.drafter is not None:
                    self.drafter.move(last, row)
                self.active[row] = self.active[last]
            self.active.pop()
