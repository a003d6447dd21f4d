"""Record a turn's agent events into the session transcript, many events per transaction.

An agent can stream thousands of events a second; one transaction per event caps a task host at a
few hundred a second for all its sessions together. `TranscriptRecorder` takes the events that an
`AcpEventFeed` queued while the previous batch committed (group commit) and writes them in one
transaction: the ``session_events`` rows, the session's ``last_event_id``, pending permission
requests. The runtime stamps their seqs and publishes them together after the commit, so a reader of
``events?since`` or a websocket subscriber sees a batch whole or not at all.

A batch is bounded (`MAX_BATCH`) so that the write lock is never held for long and one batch never
overflows a websocket's queue of live frames.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.task.schema import messages, permission_requests
from actors.task.state import append_events, refresh
from foundry.drivers.sandbox.feed import AcpEvent, AcpEventFeed, EventsLost, FeedEnded, FeedItem
from foundry.runtime.context import InstanceContext

log = logging.getLogger(__name__)

#: Most events written in one transaction. Far above what one commit costs to amortise, and well
#: under the realtime gateway's per-socket queue of live frames.
MAX_BATCH = 500
#: After the agent-exited notice, events that arrive within this much silence are still the turn's:
#: sandbox-agent reports the exit and forwards the agent's last output lines independently, so on a
#: busy machine the last lines can come after the notice.
EXIT_TAIL_QUIET_S = 0.1
#: ... but no longer than this in total.
EXIT_TAIL_MAX_S = 1.0
#: Tool call statuses after which a tool call is over.
FINAL_TOOL_STATUSES = frozenset({"completed", "failed", "cancelled"})

Item = tuple[str, dict[str, Any]]


@dataclass
class RecordedEnd:
    """Why the recorder stopped: ``answered`` (the mirror of the turn's prompt, in ``envelope``),
    ``agent_exited`` (``envelope`` is the adapter's params), ``feed_ended`` (``feed_end``) or
    ``drained`` (asked to stop, with ``unrecorded`` events left behind, ids ``first..last``)."""

    kind: str
    envelope: dict[str, Any] = field(default_factory=dict)
    feed_end: FeedEnded | None = None
    unrecorded: tuple[int, int] | None = None


class _Drain:
    """Queue marker: record what arrived before it, then stop."""


class TranscriptRecorder:
    """Writes one turn's feed into the transcript of ``session_id`` until the turn's last event.

    Args:
        ctx: the turn job's context; nothing else may write through it while `run` runs.
        session_id: the Foundry session.
        server_id: the ACP server (stored with permission requests, to answer them).
        feed: the started feed of that server.
        request_id: the JSON-RPC id of the turn's ``session/prompt``: the mirror of its answer on the
            stream is the turn's last event.
        message_id: the turn's message: once it is no longer running (its session was closed or
            its task archived meanwhile), nothing more is recorded, so the transcript ends with
            the close.
    """

    def __init__(
        self,
        ctx: InstanceContext,
        session_id: str,
        server_id: str,
        feed: AcpEventFeed,
        request_id: str,
        message_id: int | None = None,
    ) -> None:
        self.ctx = ctx
        self.message_id = message_id
        self.session_id = session_id
        self.server_id = server_id
        self.feed = feed
        self.request_id = request_id
        self.agent_title: str | None = None
        #: Last known status of every tool call the agent opened in this turn.
        self.tool_calls: dict[str, str] = {}
        self.recorded = 0
        self.batches = 0
        self.last_recorded_id: int | None = feed.last_id
        self._drain_deadline: float | None = None
        #: Set once the turn's message was ended from outside the turn (nothing is recorded since).
        self.ended_elsewhere = False

    async def _still_running(self, conn: AsyncConnection) -> bool:
        status = (
            await conn.execute(sa.select(messages.c.status).where(messages.c.id == self.message_id))
        ).scalar()
        return status == "running"

    def drain(self, deadline: float) -> None:
        """Record what has arrived so far (until loop time ``deadline`` at most), then stop."""
        self._drain_deadline = deadline
        self.feed.queue.put_nowait(_Drain())  # type: ignore[arg-type]

    def open_tool_calls(self) -> list[str]:
        return [call for call, status in self.tool_calls.items() if status not in FINAL_TOOL_STATUSES]

    async def run(self) -> RecordedEnd:
        """Record batches until the turn's last event, the feed's end or a drain; returns which."""
        queue = self.feed.queue
        loop = asyncio.get_running_loop()
        while True:
            batch: list[FeedItem] = [await queue.get()]
            while len(batch) < MAX_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            end: RecordedEnd | None = None
            kept: list[FeedItem] = []
            for item in batch:
                if isinstance(item, _Drain):
                    end = RecordedEnd("drained")
                    break
                kept.append(item)
                end = self._end_of(item)
                if end is not None:
                    break
            if kept:
                await self._write(kept)
            if end is None and self._drain_deadline is not None and loop.time() >= self._drain_deadline:
                end = RecordedEnd("drained")
            if end is not None:
                if end.kind == "drained":
                    end.unrecorded = self._left_behind(batch[len(kept) :])
                elif end.kind == "agent_exited":
                    await self._record_exit_tail(batch[len(kept) :])
                return end

    async def _record_exit_tail(self, rest: list[FeedItem]) -> None:
        """Record the agent's output that arrives just after its exit notice (see `EXIT_TAIL_QUIET_S`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EXIT_TAIL_MAX_S
        tail: list[FeedItem] = []
        pending = list(rest)
        while True:
            for item in pending:
                if isinstance(item, (_Drain, FeedEnded)):
                    break
                if isinstance(item, (AcpEvent, EventsLost)):
                    tail.append(item)
            else:
                remaining = min(EXIT_TAIL_QUIET_S, deadline - loop.time())
                if remaining > 0:
                    try:
                        pending = [await asyncio.wait_for(self.feed.queue.get(), remaining)]
                        pending += _drain_nowait(self.feed.queue)
                        continue
                    except TimeoutError:
                        pass
            break
        if tail:
            log.info("recorded %d events that followed the agent's exit notice", len(tail))
            await self._write(tail)

    def _left_behind(self, rest: list[FeedItem]) -> tuple[int, int] | None:
        """The id range of events that arrived but will not be recorded."""
        ids: list[int] = []
        for item in [*rest, *_drain_nowait(self.feed.queue)]:
            if isinstance(item, AcpEvent):
                ids.append(item.id)
            elif isinstance(item, EventsLost):
                ids.extend((item.first, item.last))
        return (min(ids), max(ids)) if ids else None

    def _end_of(self, item: FeedItem) -> RecordedEnd | None:
        if isinstance(item, FeedEnded):
            return RecordedEnd("feed_ended", feed_end=item)
        if not isinstance(item, AcpEvent):
            return None
        envelope = item.envelope
        method = envelope.get("method")
        if method == "_adapter/agent_exited":
            params = envelope.get("params")
            return RecordedEnd("agent_exited", params if isinstance(params, dict) else {})
        if method is None and envelope.get("id") == self.request_id:
            return RecordedEnd("answered", envelope)
        return None

    async def _write(self, batch: list[FeedItem]) -> None:
        items: list[Item] = []
        permissions: list[dict[str, Any]] = []
        last_id: int | None = None
        for entry in batch:
            if isinstance(entry, EventsLost):
                items.append(("eventsLost", {"from": entry.first, "to": entry.last}))
            elif isinstance(entry, AcpEvent):
                last_id = entry.id
                self._convert(entry.envelope, items, permissions)
        async with self.ctx.write() as conn:
            if self.message_id is not None and not await self._still_running(conn):
                if not self.ended_elsewhere:
                    log.info(
                        "turn of message %s ended outside it (session closed or task archived); "
                        "not recording its last %d events",
                        self.message_id,
                        len(items),
                    )
                self.ended_elsewhere = True
                return
            if permissions:
                await conn.execute(permission_requests.insert().prefix_with("OR IGNORE"), permissions)
            await append_events(self.ctx, conn, self.session_id, items, last_event_id=last_id)
            if permissions:
                await refresh(self.ctx, conn)
        if last_id is not None:
            self.last_recorded_id = last_id
        self.recorded += len(items)
        self.batches += 1

    def _convert(
        self, envelope: dict[str, Any], items: list[Item], permissions: list[dict[str, Any]]
    ) -> None:
        """Transcript items of one envelope; answers and adapter notices have none."""
        method = envelope.get("method")
        raw_params = envelope.get("params")
        params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
        if method == "session/update":
            raw_update = params.get("update")
            update: dict[str, Any] = raw_update if isinstance(raw_update, dict) else {}
            kind = update.get("sessionUpdate")
            if kind == "session_info_update" and update.get("title"):
                self.agent_title = str(update["title"])[:300]
            elif kind in ("tool_call", "tool_call_update") and update.get("toolCallId"):
                call = str(update["toolCallId"])
                status = update.get("status")
                if status:
                    self.tool_calls[call] = str(status)
                else:
                    self.tool_calls.setdefault(call, "pending")
            items.append(("agentUpdate", {"kind": kind, "update": update}))
        elif method == "session/request_permission" and "id" in envelope:
            rpc_id = envelope["id"]
            options = params.get("options") or []
            permissions.append(
                {
                    "session_id": self.session_id,
                    "request_id": str(rpc_id),
                    "rpc_id_json": json.dumps(rpc_id),
                    "acp_server_id": self.server_id,
                    "options_json": json.dumps(options),
                    "status": "pending",
                    "created_at": self.ctx.now_ms(),
                }
            )
            items.append(
                (
                    "permissionRequested",
                    {"requestId": str(rpc_id), "toolCall": params.get("toolCall"), "options": options},
                )
            )


def _drain_nowait(queue: asyncio.Queue[FeedItem]) -> list[FeedItem]:
    out: list[FeedItem] = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out
