"""``Idempotency-Key``: send a write again without it being applied twice.

A write whose answer never arrived (the connection dropped, or the node holding the task left the
cluster while the write was in flight, which is answered 503 without knowing whether it was queued)
can be sent again with the same key: the actor's durable inbox sees the same command id, applies the
command at most once and answers the retry with the first outcome. The command id is derived from
the caller, the request path and the key, so two people's keys (or one person's on two paths) never
collide.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Header

#: What a key may be: what clients generate (UUIDs, random tokens), printable and short.
_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=_KEY_PATTERN,
        description="Any unique string (e.g. a UUID) per intended write: sending the request again "
        "with the same key applies it at most once and answers with the first outcome.",
    ),
]


def command_id_for(user_id: str, path: str, key: str | None) -> str | None:
    """The durable command id of a keyed write (None without a key: a fresh id per request)."""
    if key is None:
        return None
    digest = hashlib.sha256(f"{user_id}\n{path}\n{key}".encode()).hexdigest()[:40]
    return f"idem-{digest}"
