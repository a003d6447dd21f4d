"""ASGI middleware: a client's reads reflect its own writes, whichever API process serves them.

Reads of cached snapshots (`foundry.http.snapshot_cache`) come from memory fed by event streams,
which reach each API process a few milliseconds after a write commits. A write through this process
raises this process's floors at once (`SnapshotCache.wrote`); for the other processes behind the same
load balancer the client carries the seqs itself:

* every HTTP response to a request whose actor calls committed events on a guarded topic sets the
  cookie ``foundry_seen`` to ``topic!seq`` pairs (``|``-separated; the newest `MAX_TOPICS`, merged
  with what the request brought);
* every request's cookie is parsed once (`client_seqs`) and a cached read below one of its seqs asks
  the actor instead.

The cookie grants nothing: a forged value can only make its sender's own reads slower. Anything
malformed in it is ignored, never an error.
"""

from __future__ import annotations

import logging
import re

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from foundry.http.snapshot_cache import GUARDED_PREFIXES
from foundry.runtime.written import collect_written

log = logging.getLogger(__name__)

COOKIE = "foundry_seen"
#: Topics the cookie remembers (the most recently written ones).
MAX_TOPICS = 16
#: A cookie longer than this is ignored whole (16 topics of 512 characters fit).
MAX_COOKIE_CHARS = 9_000
#: Longest value this process sets: browsers keep cookies of about 4 KB, name and attributes included.
MAX_RENDERED_CHARS = 3_800
#: How long a client's seqs matter: an event reaches every API process well within it.
MAX_AGE_S = 600
_PAIR = re.compile(r"^([a-z][a-z0-9-]{0,31}(?::[A-Za-z0-9][A-Za-z0-9._@+=-]{0,127})+)!([0-9]{1,15})$")
_STATE_KEY = "foundry_seen"


def client_seqs(conn: HTTPConnection) -> dict[str, int]:
    """The seqs the client says it wrote (from its ``foundry_seen`` cookie; empty when absent or bad)."""
    cached = conn.scope.get(_STATE_KEY)
    if cached is None:
        cached = parse(conn.cookies.get(COOKIE))
        conn.scope[_STATE_KEY] = cached
    return cached  # type: ignore[no-any-return]


def parse(value: str | None) -> dict[str, int]:
    """``topic!seq|topic!seq`` → ``{topic: seq}``; pairs that do not parse are skipped."""
    if not value or len(value) > MAX_COOKIE_CHARS:
        return {}
    out: dict[str, int] = {}
    for pair in value.split("|")[:MAX_TOPICS]:
        match = _PAIR.match(pair)
        if match and match.group(1).startswith(GUARDED_PREFIXES):
            topic, seq = match.group(1), int(match.group(2))
            out[topic] = max(seq, out.get(topic, 0))
    return out


def render(seqs: dict[str, int]) -> str:
    """The cookie value of ``seqs`` (insertion order: oldest first): the newest `MAX_TOPICS` that fit
    in `MAX_RENDERED_CHARS` (a browser drops a larger cookie whole, silently)."""
    pairs = [f"{topic}!{seq}" for topic, seq in seqs.items() if topic.startswith(GUARDED_PREFIXES)]
    kept: list[str] = []
    size = 0
    for pair in reversed(pairs[-MAX_TOPICS:]):
        size += len(pair) + 1
        if size > MAX_RENDERED_CHARS:
            break
        kept.append(pair)
    return "|".join(reversed(kept))


class ReadYourWrites:
    """Collects each HTTP request's written seqs and hands them to the client (module docstring)."""

    def __init__(self, app: ASGIApp, *, secure: bool = False) -> None:
        self.app = app
        self.secure = secure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        written = collect_written()

        async def send_with_seqs(message: Message) -> None:
            if message["type"] == "http.response.start" and any(
                topic.startswith(GUARDED_PREFIXES) for topic in written
            ):
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"set-cookie", self._cookie(scope, written))]
            await send(message)

        await self.app(scope, receive, send_with_seqs)

    def _cookie(self, scope: Scope, written: dict[str, int]) -> bytes:
        seqs = dict(client_seqs(HTTPConnection(scope)))
        for topic, seq in written.items():
            # Re-inserted last, so the newest writes are the ones kept.
            seqs[topic] = max(seq, seqs.pop(topic, 0))
        # Topics and digits only: every character is a valid cookie octet, so no quoting is needed.
        attributes = f"Path=/; Max-Age={MAX_AGE_S}; HttpOnly; SameSite=Lax" + (
            "; Secure" if self.secure else ""
        )
        return f"{COOKIE}={render(seqs)}; {attributes}".encode("latin-1")
