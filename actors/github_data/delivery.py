"""What a webhook handler gets and gives back: the `Delivery` (the command, its payload, the batch's
transaction and time, with checked accessors for payload fields), its `Effects` (the outcome and what
to tell the organization) and `MissingField`.

Split from the handlers (`actors.github_data.webhooks`) because the batch processor
(`actors.github_data.processing`) builds deliveries and reads effects without needing to know what any
event does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from actors.github_data.commands import IngestWebhook
from actors.github_data.state import ensure_meta


class MissingField(Exception):
    """The delivery lacks a field its handler needs, or carries a value that cannot be applied; it is
    recorded as failed with this reason."""


@dataclass
class Effects:
    """The outcome of one delivery.

    Attributes:
        status: ``applied`` | ``ignored`` | ``failed`` | ``forwarded``.
        reason: why it was ignored or failed (or a note), stored with the delivery.
        org: parts of the organization's ``github_event`` command (empty: nothing to tell).
        sync_reason: start a full sync for this reason.
        refresh_members: re-read the member list from GitHub.
        forward_to: hand the delivery to this organization's github-data (unrouted deliveries).
    """

    status: str = "applied"
    reason: str | None = None
    org: dict[str, Any] = field(default_factory=dict)
    sync_reason: str | None = None
    refresh_members: bool = False
    forward_to: str | None = None


@dataclass
class Delivery:
    """What a handler gets: the command, its payload, the transaction and the time."""

    cmd: IngestWebhook
    conn: AsyncConnection
    now: int
    _meta: Any = None

    async def meta(self) -> Any:
        """The cache's meta row: the batch's (read once for all its deliveries; only ``installation``
        deliveries change it, and each is a batch of its own), else read once on first use (every
        statement costs a thread hop; hundreds of deliveries/s leave about a millisecond each)."""
        if self._meta is None:
            self._meta = await ensure_meta(self.conn, self.now)
        return self._meta

    @property
    def payload(self) -> dict[str, Any]:
        return self.cmd.payload

    def need(self, *path: str) -> Any:
        """The value at ``path``, or `MissingField` naming the dotted path."""
        value: Any = self.payload
        for i, part in enumerate(path):
            if not isinstance(value, dict) or value.get(part) is None:
                raise MissingField(f"payload field {'.'.join(path[: i + 1])} is missing")
            value = value[part]
        return value

    def opt(self, *path: str) -> Any:
        try:
            return self.need(*path)
        except MissingField:
            return None

    def need_int(self, *path: str) -> int:
        value = self.need(*path)
        if isinstance(value, bool) or not isinstance(value, int):
            raise MissingField(f"payload field {'.'.join(path)} must be an integer, got {value!r}")
        return value

    def need_str(self, *path: str) -> str:
        value = self.need(*path)
        if not isinstance(value, str):
            raise MissingField(f"payload field {'.'.join(path)} must be a string, got {value!r}"[:300])
        return value

    def repo_id(self) -> str:
        return str(self.need_int("repository", "id"))


Handler = Callable[[Delivery], Awaitable[Effects]]
