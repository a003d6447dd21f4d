"""The request id: one per HTTP request, websocket connection and webhook delivery, carried through
actor calls into the hosts' log lines, so that one grep follows a task creation from the HTTP request
to the sandbox.

It lives in a context variable: set by the HTTP middleware, sent along with every actor call and
command (`Runtime.send` / `Runtime.call`), and set again on the host side while the command or action
runs, including the sends a command makes after it commits.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from contextvars import ContextVar

#: The current request id, or None outside any request (start-up, timers, recovery).
current: ContextVar[str | None] = ContextVar("foundry_request_id", default=None)

#: What an incoming ``X-Request-Id`` may look like to be kept (a proxy's id); anything else is replaced.
_ACCEPTED = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def accept(incoming: str | None) -> str:
    """The caller's id when it is a sane token, else a fresh one (never a log-injection vector)."""
    if incoming and _ACCEPTED.fullmatch(incoming):
        return incoming
    return new_id()


@contextlib.contextmanager
def bound(request_id: str | None) -> Iterator[None]:
    """Run the block with ``request_id`` as the current id (None leaves the current one)."""
    if request_id is None:
        yield
        return
    token = current.set(request_id)
    try:
        yield
    finally:
        current.reset(token)
