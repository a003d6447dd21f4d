"""A small role used to test the runtime itself: counters, ordering, slow and failing commands."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from foundry.errors import Conflict
from foundry.runtime.context import CommandContext, InstanceContext
from foundry.runtime.role import Handler, Role
from foundry.runtime.tables import add_runtime_tables

metadata = sa.MetaData()
add_runtime_tables(metadata)
counters = sa.Table(
    "counters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("value", sa.Integer, nullable=False),
)
applied = sa.Table(
    "applied",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tag", sa.String, nullable=False),
)


class Incr(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: int = 1
    tag: str = ""
    publish: bool = False


class Slow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(ge=0, le=30)


class Fail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str
    conflict: bool = False


class Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Forward(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str
    by: int = 1


class OutgoingSend(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str
    name: str = "incr"
    body: dict[str, Any] = Field(default_factory=dict)


class SendMany(BaseModel):
    """Sends to other counters, all staged in one transaction (an organization fanning out)."""

    model_config = ConfigDict(extra="forbid")
    sends: list[OutgoingSend]


class StartJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = 0.2
    again: bool = False


async def _value(conn: Any) -> int:
    return int((await conn.execute(sa.select(counters.c.value).where(counters.c.id == 1))).scalar() or 0)


async def incr(ctx: CommandContext, cmd: Incr) -> dict[str, int]:
    value = await _value(ctx.conn) + cmd.by
    await ctx.conn.execute(
        sa.text("INSERT INTO counters(id, value) VALUES (1, :v) ON CONFLICT(id) DO UPDATE SET value=:v"),
        {"v": value},
    )
    if cmd.tag:
        await ctx.conn.execute(applied.insert().values(tag=cmd.tag))
    if cmd.publish:
        ctx.publish(f"counter:{ctx.key}", "counterUpdated", {"value": value})
    return {"value": value}


async def slow(ctx: CommandContext, cmd: Slow) -> dict[str, float]:
    await asyncio.sleep(cmd.seconds)
    return {"slept": cmd.seconds}


async def fail(ctx: CommandContext, cmd: Fail) -> None:
    await ctx.conn.execute(sa.text("INSERT INTO counters(id, value) VALUES (2, 99)"))
    if cmd.conflict:
        raise Conflict(cmd.message)
    raise ValueError(cmd.message)


async def forward(ctx: CommandContext, cmd: Forward) -> dict[str, str]:
    cid = ctx.send_after_commit("counter", cmd.to, "incr", {"by": cmd.by}, command_id=ctx.derived_id("fwd"))
    return {"commandId": cid}


async def send_many(ctx: CommandContext, cmd: SendMany) -> dict[str, list[str]]:
    ids = [
        ctx.send_after_commit("counter", s.to, s.name, s.body, command_id=ctx.derived_id(f"send-{i}"))
        for i, s in enumerate(cmd.sends)
    ]
    return {"commandIds": ids}


async def start_job(ctx: CommandContext, cmd: StartJob) -> dict[str, bool]:
    async def job(jctx: InstanceContext) -> None:
        await asyncio.sleep(cmd.seconds)
        await jctx.self_ref.send("incr", {"by": 100})

    return {"started": ctx.start_job("bump", job, again_if_running=cmd.again)}


async def start_busy_writer(ctx: CommandContext, cmd: Slow) -> dict[str, bool]:
    """A job that runs write transaction after write transaction for ``seconds``: each adds 1000
    to a second row, then reads several times before committing."""

    async def job(jctx: InstanceContext) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cmd.seconds
        while loop.time() < deadline:
            async with jctx.write() as conn:
                await conn.execute(
                    sa.text(
                        "INSERT INTO counters(id, value) VALUES (2, 1000) "
                        "ON CONFLICT(id) DO UPDATE SET value = value + 1000"
                    )
                )
                for _ in range(5):
                    await conn.execute(sa.select(counters.c.value))

    return {"started": ctx.start_job("busy-writer", job)}


async def get(ctx: InstanceContext, _: Empty) -> dict[str, Any]:
    async with ctx.read() as conn:
        value = await _value(conn)
        tags = [r[0] for r in (await conn.execute(sa.select(applied.c.tag).order_by(applied.c.seq))).all()]
    return {"value": value, "tags": tags}


async def read_slowly(ctx: InstanceContext, cmd: Slow) -> dict[str, Any]:
    """The value, then (after ``seconds``) the tags: two statements of one read, as a detail
    assembled from several tables is."""
    async with ctx.read() as conn:
        value = await _value(conn)
        await asyncio.sleep(cmd.seconds)
        tags = (await conn.execute(sa.select(sa.func.count()).select_from(applied))).scalar()
    return {"value": value, "tags": tags}


async def bump_direct(ctx: InstanceContext, cmd: Incr) -> dict[str, int]:
    async with ctx.write() as conn:
        value = await _value(conn) + cmd.by
        await conn.execute(
            sa.text("INSERT INTO counters(id, value) VALUES (1, :v) ON CONFLICT(id) DO UPDATE SET value=:v"),
            {"v": value},
        )
        ctx.publish(f"counter:{ctx.key}", "counterUpdated", {"value": value})
    return {"value": value}


async def bump_then_fail(ctx: InstanceContext, cmd: Incr) -> None:
    """Stages an event, then fails: nothing of it may leak into a later write."""
    async with ctx.write() as conn:
        await conn.execute(sa.text("UPDATE counters SET value = value + 1000 WHERE id = 1"))
        ctx.publish(f"counter:{ctx.key}", "counterUpdated", {"value": -1})
        raise ValueError("boom")


ROLE = Role(
    name="counter",
    package="counter",
    metadata=metadata,
    migrations=str(Path(__file__).parent / "migrations" / "counter"),
    commands=(
        Handler("incr", Incr, incr),
        # The same handlers, allowed to share a transaction with their queued neighbours.
        Handler("incr_batched", Incr, incr, batch=True),
        Handler("fail_batched", Fail, fail, batch=True),
        Handler("slow", Slow, slow),
        Handler("fail", Fail, fail),
        Handler("forward", Forward, forward),
        Handler("send_many", SendMany, send_many),
        Handler("start_job", StartJob, start_job),
        Handler("start_busy_writer", Slow, start_busy_writer),
    ),
    actions=(
        Handler("get", Empty, get),
        Handler("read_slowly", Slow, read_slowly),
        Handler("bump", Incr, bump_direct),
        Handler("bump_then_fail", Incr, bump_then_fail),
    ),
)
