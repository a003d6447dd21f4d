"""Calls to a host process whose data node left the cluster fail at once, naming the node.

A host process pinned to a node (``runtime.nodes``) cannot run anywhere else: its SQLite files are on
that node's disk. While the node is gone, Ray keeps the process "restarting" and holds calls to it
until it is back, so a caller would hang for the whole retry window without learning why. This watch
polls Ray's node table while such processes exist and, for as long as a pinned node is missing, turns
every call to its processes (waiting ones included) into an `ActorUnavailable` naming the node. The
process resumes by itself, with its data, when the node rejoins.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from foundry.config import Settings
from foundry.errors import ActorUnavailable
from foundry.runtime.placement import DATA_LABEL, missing_node_labels, process_name

log = logging.getLogger(__name__)

#: How often the node table is read while some process is pinned to a node.
POLL_S = 1.0
#: A call to a process whose node was missing re-reads the table when the last read is older.
RECHECK_AGE_S = 0.2

T = TypeVar("T")


class NodeWatch:
    """Which pinned processes have lost their node, kept current by polling ``read_nodes``."""

    def __init__(self, settings: Settings, read_nodes: Callable[[], list[dict[str, Any]]]) -> None:
        self.settings = settings
        self._read_nodes = read_nodes
        #: process → its label, for every pinned process.
        self._pinned = dict(settings.runtime.nodes)
        self._missing: set[str] = set()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._refresh_lock = asyncio.Lock()
        self._refreshed_at = 0.0

    @property
    def active(self) -> bool:
        return bool(self._pinned)

    def start(self) -> None:
        if self.active and self._task is None:
            self._task = asyncio.create_task(self._poll(), name="ray-node-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def check(self, process: str) -> str | None:
        """`reason`, after reading the node table again if the node was missing at the last poll
        (so a node that just came back is not reported gone for up to a poll interval). Concurrent
        callers share one read."""
        if self.reason(process) is None:
            return None
        async with self._refresh_lock:
            if time.monotonic() - self._refreshed_at > RECHECK_AGE_S:
                await self.refresh()
        return self.reason(process)

    def reason(self, process: str) -> str | None:
        """Why calls to ``process`` cannot succeed now (as of the last read of the node table)."""
        label = self._pinned.get(process)
        if label is None or label not in self._missing:
            return None
        return (
            f"host process {process_name(process)} runs only on the node labelled {DATA_LABEL}={label} "
            "(runtime.nodes), which is not in the Ray cluster now; its data is on that node's disk, so "
            "it resumes when the node is back"
        )

    async def guard(self, process: str, call: Awaitable[T]) -> T:
        """Await ``call`` (already submitted) unless the node of ``process`` goes away meanwhile;
        then `ActorUnavailable` naming it."""
        if self._pinned.get(process) is None:
            return await call
        pending = asyncio.ensure_future(call)
        try:
            while True:
                changed = asyncio.create_task(self._changed.wait())
                try:
                    await asyncio.wait({pending, changed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
                if pending.done():
                    return pending.result()
                why = self.reason(process)
                if why is not None:
                    # Sent before the node went: whether it was queued there is unknown until then.
                    raise ActorUnavailable(
                        f"{why}. This request had already reached it and may still be applied when "
                        "the node is back; to send a message, open a session or create a task again "
                        "safely, repeat it with the same Idempotency-Key header"
                    )
        finally:
            if not pending.done():
                pending.cancel()

    async def refresh(self) -> None:
        """Read the node table once and update which pinned labels are missing."""
        nodes = await asyncio.to_thread(self._read_nodes)
        self._refreshed_at = time.monotonic()
        missing = set(missing_node_labels(self.settings, nodes))
        if missing != self._missing:
            for label in sorted(missing - self._missing):
                log.warning(
                    "Ray node labelled %s=%s left the cluster; calls to its hosts fail", DATA_LABEL, label
                )
            for label in sorted(self._missing - missing):
                log.warning("Ray node labelled %s=%s is back", DATA_LABEL, label)
            self._missing = missing
            # Wake every guarded call so it re-checks; a fresh event for the next change.
            self._changed.set()
            self._changed = asyncio.Event()

    async def _poll(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                # The control store is unreachable (a head restart): calls find out by themselves.
                log.exception("reading Ray's node table failed")
            await asyncio.sleep(POLL_S)
