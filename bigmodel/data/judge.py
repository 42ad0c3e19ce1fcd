"""What makes a reply right: the one rule exact match scores by, the baseline comparison counts and a
preference builder uses to leave out pairs with nothing to teach; and the shape of a judge that ranks a
model's own replies into preference pairs."""

from __future__ import annotations

from collections.abc import Callable

Judge = Callable[[list[list[dict]], list[str]], list[tuple[str, str]]]
"""Given conversations and their reference answers: for each, the answer to prefer and the one to reject."""


def exact(reply: str, reference: str) -> bool:
    """A reply counts as right when it is the reference, surrounding whitespace aside."""
    return reply.strip() == reference.strip()
