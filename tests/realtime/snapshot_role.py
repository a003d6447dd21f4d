"""A small role for testing the realtime gateway: one snapshot topic and one append-only log topic.

* ``board:<key>`` — a full-state topic: ``bump`` changes a value and publishes ``boardUpdated``; the
  ``snapshot`` action answers ``{"seq", "data": {"value"}}``.
* ``journal:<key>`` — an append-only, seq-numbered log (like a session transcript): ``append`` adds
  lines; ``snapshot`` replays ``{"seq", "events": [...]}`` after ``since``, at most `PAGE` at a time.

Both snapshots read the data and the topic's seq in ONE statement, so they are consistent without a
read transaction (pysqlite does not BEGIN before a SELECT, so two statements could see two states).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from foundry.errors import NotFound
from foundry.realtime.gateway import ACCESS_CHANGED_EVENT
from foundry.runtime.context import CommandContext, InstanceContext
from foundry.runtime.role import Handler, Role
from foundry.runtime.tables import add_runtime_tables, current_seq

ROLE_NAME = "snapshot-test"
MODULE = "tests.realtime.snapshot_role"
#: Replays are paged so the gateway's paging is exercised by ordinary tests.
PAGE = 100

metadata = sa.MetaData()
add_runtime_tables(metadata)
boards = sa.Table(
    "boards",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("value", sa.Integer, nullable=False),
)
journal = sa.Table(
    "journal",
    metadata,
    # The topic's seq, not an autoincrement: a line and its event share one number.
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("event", sa.String, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
)


def board_topic(key: str) -> str:
    return f"board:{key}"


def journal_topic(key: str) -> str:
    return f"journal:{key}"


class Bump(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: int = 1
    #: Publish this many events (one per increment) in one transaction.
    times: int = Field(default=1, ge=1, le=10_000)
    #: Characters of padding per event (slow-consumer tests).
    pad: int = Field(default=0, ge=0, le=1_000_000)
    #: Wall-clock time the caller sent the command (benchmarks measure latency from it).
    sent_at: float | None = None
    #: Publish the gateway's access-changed event first, in the same transaction.
    access_changed: bool = False


class Append(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = "line"
    count: int = Field(default=1, ge=1, le=10_000)


class Snapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: str
    since: int | None = None


async def bump(ctx: CommandContext, cmd: Bump) -> dict[str, int]:
    """Add ``by`` to the board ``times`` times, publishing each new value."""
    value = int((await ctx.conn.execute(sa.select(boards.c.value).where(boards.c.id == 1))).scalar() or 0)
    pad = "x" * cmd.pad
    if cmd.access_changed:
        ctx.publish(board_topic(ctx.key), ACCESS_CHANGED_EVENT, {})
    for _ in range(cmd.times):
        value += cmd.by
        ctx.publish(
            board_topic(ctx.key),
            "boardUpdated",
            {"value": value, "sentAt": cmd.sent_at, "committedAt": time.time(), "pad": pad},
        )
    await ctx.conn.execute(
        sa.text("INSERT INTO boards(id, value) VALUES (1, :v) ON CONFLICT(id) DO UPDATE SET value=:v"),
        {"v": value},
    )
    return {"value": value}


async def append(ctx: CommandContext, cmd: Append) -> dict[str, int]:
    """Append ``count`` lines to the journal; each line's seq is the seq of its event."""
    topic = journal_topic(ctx.key)
    seq = await current_seq(ctx.conn, topic)
    rows = []
    for i in range(cmd.count):
        seq += 1
        data = {"text": f"{cmd.text}-{i}"}
        rows.append({"seq": seq, "event": "line", "data": json.dumps(data)})
        ctx.publish(topic, "line", data)
    await ctx.conn.execute(journal.insert(), rows)
    return {"seq": seq}


async def snapshot(ctx: InstanceContext, cmd: Snapshot) -> dict[str, Any]:
    """The realtime gateway's snapshot (board) or replay after ``since`` (journal)."""
    async with ctx.read() as conn:
        if cmd.topic == board_topic(ctx.key):
            row = (
                await conn.execute(
                    sa.text(
                        "SELECT (SELECT value FROM boards WHERE id = 1), "
                        "(SELECT seq FROM foundry_topic_seq WHERE topic = :t)"
                    ),
                    {"t": cmd.topic},
                )
            ).one()
            return {"seq": int(row[1] or 0), "data": {"value": int(row[0] or 0)}}
        if cmd.topic == journal_topic(ctx.key):
            rows = (
                await conn.execute(
                    sa.text(
                        "SELECT h.seq, j.seq, j.event, j.data FROM "
                        "(SELECT coalesce((SELECT seq FROM foundry_topic_seq WHERE topic = :t), 0) AS seq) h "
                        "LEFT JOIN (SELECT seq, event, data FROM journal WHERE seq > :since "
                        "ORDER BY seq LIMIT :n) j ON 1 ORDER BY j.seq"
                    ),
                    {"t": cmd.topic, "since": cmd.since or 0, "n": PAGE},
                )
            ).all()
            events = [
                {"seq": r[1], "event": r[2], "data": json.loads(r[3])} for r in rows if r[1] is not None
            ]
            return {"seq": int(rows[0][0]), "events": events}
    raise NotFound(f"{ROLE_NAME} {ctx.key!r} does not own topic {cmd.topic!r}")


ROLE = Role(
    name=ROLE_NAME,
    package="snapshot_test",
    metadata=metadata,
    migrations=str(Path(__file__).parent / "migrations" / "snapshot_test"),
    commands=(Handler("bump", Bump, bump), Handler("append", Append, append)),
    actions=(Handler("snapshot", Snapshot, snapshot),),
)
