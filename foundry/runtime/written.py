"""The seqs a caller's writes committed, for reads that must reflect them (read-your-writes).

A call or command that publishes events returns, with its result, the last seq it committed on each
topic (see `foundry.runtime.mailbox.Outcome`). `Runtime.call` and `Runtime.send` hand them here:

* to the collector of the current request (`collect_written`), so the HTTP layer can tell the
  client which seqs its later reads must reach, whichever API process serves them;
* to every listener registered on the runtime (`WrittenListeners`), such as the API process's
  snapshot cache, which from then on serves those topics only at that seq or later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

log = logging.getLogger(__name__)

#: The current request's written seqs; None outside a request that collects them.
_collected: ContextVar[dict[str, int] | None] = ContextVar("foundry_written_seqs", default=None)

Listener = Callable[[dict[str, int]], None]


def collect_written() -> dict[str, int]:
    """Start collecting the written seqs of the current context (a request); returns the dict that
    fills as its calls return."""
    seqs: dict[str, int] = {}
    _collected.set(seqs)
    return seqs


def written_of(outcome: tuple[Any, ...]) -> dict[str, int] | None:
    """The ``{topic: seq}`` an "ok" outcome carries, if any."""
    if len(outcome) > 2 and outcome[0] == "ok" and isinstance(outcome[2], dict) and outcome[2]:
        return outcome[2]
    return None


class WrittenListeners:
    """Who hears of committed writes made through one `Runtime`."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def add(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def note(self, seqs: dict[str, int]) -> None:
        """Record ``seqs`` for the current request and tell every listener."""
        collected = _collected.get()
        if collected is not None:
            for topic, seq in seqs.items():
                if seq > collected.get(topic, 0):
                    collected[topic] = seq
        for listener in self._listeners:
            try:
                listener(seqs)
            except Exception:
                # A listener bug must not turn a committed write into an error for its caller.
                log.exception("a written-seqs listener failed on %d topics", len(seqs))
