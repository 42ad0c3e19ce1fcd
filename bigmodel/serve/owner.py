"""The one thread that runs a served model's forward passes.

A module is not safe to run from two threads at once: the thread policy of a decoding step
(`torch.set_num_threads`), Captum's hooks on the token embedding during an explanation and the RNG a
sampling attribution draws from are process- or module-wide while they last. So every forward pass
over a served model runs here, one at a time: the engine's decode steps (`engine.py`, an `Owner`
that also decodes) and the encoder routes' calls (`run`), which take their turn between two steps.
Whatever a call sets while it runs it undoes before the next call starts; the route handlers only
queue work and wait for it, so the event loop never blocks on a model.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

log = logging.getLogger("bigmodel.serve")
T = TypeVar("T")


class ShuttingDown(Exception):
    """The owner takes no new work; it is finishing what it has."""


class Owner:
    """A thread with a queue of calls; `run` awaits one. Subclasses add work of their own (`_has_work`,
    `_take`, `_turn`), done in the same loop after the calls that were queued."""

    def __init__(self, name: str = "bigmodel-model") -> None:
        self.calls: collections.deque[tuple[Callable[[], Any], Future]] = collections.deque()
        self.wake = threading.Condition()
        self.closing = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the owner's thread, after the work queued before it; its result or its exception."""
        future: Future = Future()
        with self.wake:
            if self.closing:
                raise ShuttingDown
            self.calls.append((lambda: fn(*args), future))
            self.wake.notify()
        return await asyncio.wrap_future(future)

    def close(self, timeout: float = 30.0) -> None:
        """Take no more work, finish what is queued, then stop the thread."""
        with self.wake:
            self.closing = True
            self.wake.notify()
        self.thread.join(timeout)

    def _has_work(self) -> bool:
        return bool(self.calls)

    def _take(self) -> Any:
        """What the next turn works on, taken under the lock (the engine: the sequences that join)."""
        return None

    def _turn(self, taken: Any) -> None:
        """One round of the subclass's own work, after the calls."""

    def _run(self) -> None:
        while True:
            with self.wake:
                while not (self._has_work() or self.closing):
                    self.wake.wait()
                if self.closing and not self._has_work():
                    return
                calls = list(self.calls)
                self.calls.clear()
                taken = self._take()
            for call, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(call())
                    except BaseException as e:  # the caller's error: raised in its request, not here
                        future.set_exception(e)
            self._turn(taken)
