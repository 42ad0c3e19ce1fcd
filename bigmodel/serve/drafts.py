"""Where speculative decoding's drafts come from: tokens the engine checks in one forward pass.

`PromptLookup` copies what followed the latest earlier occurrence of a row's last few tokens (free,
and right where the answer quotes its input: summaries, edits, code). `DraftModel` asks a smaller
model that shares the tokenizer to continue greedily, a few cheap steps per big one; it keeps its own
cache rows in step with the engine's (a row joins, moves, and keeps only the drafted tokens the big
model accepted).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bigmodel.infer.decoder import Decoder
from bigmodel.model.transformer import Transformer


def lookup_draft(history: list[int], tokens: int, longest: int = 3, shortest: int = 2) -> list[int]:
    """Up to `tokens` tokens that followed the latest earlier occurrence of the history's last n tokens
    (n from `longest` down to `shortest`: one token in common says too little, and a wrong draft costs
    a wider step); none when its tail was never seen before."""
    for n in range(min(longest, len(history) - 1), shortest - 1, -1):
        tail = history[-n:]
        for start in range(len(history) - n - 1, -1, -1):
            if history[start:start + n] == tail:
                return history[start + n:start + n + tokens]
    return []


class PromptLookup:
    """Drafts from each row's own history; nothing to keep in step."""

    def join(self, row: int, prompt: list[int]) -> None:
        pass

    def move(self, source: int, target: int) -> None:
        pass

    def propose(self, histories: Sequence[list[int]], wants: list[int]) -> list[list[int]]:
        return [lookup_draft(h, w) if w else [] for h, w in zip(histories, wants, strict=True)]

    def accepted(self, row: int, kept: int) -> None:
        pass


class DraftModel:
    """A small model's greedy continuation of each row, from its own KV cache.

    `known[row]` counts the row's history tokens the draft has read; its cache holds them (or, once its
    context filled, the latest half of them) and, after `propose`, the drafts but the last."""

    def __init__(self, model: Transformer, rows: int) -> None:
        self.decoder = Decoder(model, rows)
        self.known = [0] * rows
        self.width = 0  # tokens the last `propose` drafted per row

    def join(self, row: int, prompt: list[int]) -> None:
        keep = prompt[-(self.decoder.capacity // 2):]  # a prompt longer than the draft's context: its end
        self.decoder.prefill([keep], row)
        self.known[row] = len(prompt)

    def move(self, source: int, target: int) -> None:
        self.decoder.cache.move_row(source, target)
        self.known[target] = self.known[source]

    def propose(self, histories: Sequence[list[int]], wants: list[int]) -> list[list[int]]:
        """Up to `wants[i]` tokens for row i: one wide step reads what each row gained since its last draft,
        then one narrow step per further token (every row drafts as many; the unwanted are dropped)."""
        n, width = len(histories), max(wants)
        cache, capacity = self.decoder.cache, self.decoder.capacity
        for row, history in enumerate(histories):  # the draft's context is full: keep its latest half
            if int(cache.lengths[row]) + len(history) - self.known[row] + width > capacity:
                self.decoder.prefill([history[-(capacity // 2):-1]], row)
                self.known[row] = len(history) - 1
        unread = [h[k:] for h, k in zip(histories, self.known[:n], strict=True)]
        wide = max(map(len, unread))
        if int(cache.lengths[:n].max()) + wide + width - 1 > capacity:  # one row's backlog crowds another
            return [[] for _ in histories]
        logits = self.decoder.extend(torch.tensor([u + [u[-1]] * (wide - len(u)) for u in unread],
                                                  device=self.decoder.device))
        drafts = [[int(logits[row, len(u) - 1].argmax())] for row, u in enumerate(unread)]
        for row, u in enumerate(unread):
            cache.lengths[row] -= wide - len(u)  # padding read past a row's own tokens: forgotten
            self.known[row] += len(u)
        for _ in range(width - 1):
            logits = self.decoder.step(torch.tensor([d[-1] for d in drafts], device=self.decoder.device))
            for row in range(n):
                drafts[row].append(int(logits[row].argmax()))
        self.width = width
        return [d[:w] for d, w in zip(drafts, wants, strict=True)]

    def accepted(self, row: int, kept: int) -> None:
        """The engine kept `kept` of the row's drafts: forget the rest of what the cache read."""
        read = min(kept, self.width - 1)  # the last draft was produced but never read
        self.decoder.cache.lengths[row] -= self.width - 1 - read
        self.known[row] += read
