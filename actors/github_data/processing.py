"""Applying queued webhook deliveries, many per transaction, in arrival order.

``ingest_webhook`` records each delivery ``queued``; `apply_batch` applies the oldest ones in one
transaction and tells the organization what changed in ONE ``github_event``. Two callers run it:

* the processing job (`process_deliveries_job`), the fast path. It runs each batch in a write
  transaction of its own, which takes turns with mailbox commands on the instance's write lock: a
  batch waits for the command that is running, never for the backlog of ingest commands queued in
  the mailbox behind it (as a ``process_deliveries`` command would: under a burst that backlog is
  thousands deep, and processing stopped until the burst was over). It hands each batch's
  organization event over at once.
* the ``process_deliveries`` command, the durable path. While deliveries are queued one of these
  commands is always pending (in the outbox or the mailbox) or running: the ingest that finds none
  sends one, and one that leaves deliveries behind sends the next. So after a crash the recovery
  scan finds it and processing resumes without a caller.

Per delivery, only its handler's own statements remain: the batch shares one savepoint (a
savepoint per delivery only when one of them fails: it is then applied again that way, and the
failing one is recorded ``failed`` alone), one read of the cache's meta row, one statement that
records every outcome, and one metrics update per outcome.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.github_data.commands import IngestWebhook
from actors.github_data.delivery import Delivery, Effects, MissingField
from actors.github_data.members import MEMBERS_JOB, members_stale, refresh_members_job
from actors.github_data.schema import meta as meta_table
from actors.github_data.schema import webhook_deliveries
from actors.github_data.state import ensure_meta
from actors.github_data.sync import start_sync
from actors.github_data.webhooks import dispatch
from actors.organization.github_commands import GitHubEvent
from foundry import metrics
from foundry.errors import FoundryError, NotFound
from foundry.ids import APP_SHELL_ID
from foundry.runtime.context import InstanceContext

log = logging.getLogger(__name__)

#: Deliveries applied per transaction, at most ...
BATCH = 200
#: ... and, beyond the first MIN_BATCH of them, for about this long (seconds). The transaction holds
#: the instance's write lock, which the ingest commands moving new deliveries out of the host's
#: inbox wait for (acknowledgements do not: they are answered once the inbox holds the delivery).
#: Each batch also costs its commit and one organization event, so a short budget spends the
#: processing on overhead: at 600 deliveries/s on a 2-core box a 10 ms budget (batches of ~8)
#: applied ~405/s and left a 6 s backlog, 40 ms applied 532-557/s and drained within about a
#: second (bench/github_sync.py, same session) ...
BATCH_BUDGET_S = 0.040
#: ... but a batch never stops below this many: on a loaded box a time budget alone shrank batches
#: to one delivery each (measured), and each batch costs about as much as several deliveries.
MIN_BATCH = 8
#: A processing job starts with a batch once this many deliveries were recorded since the last
#: batch (about what a batch's budget applies on a busy 2-core box) ...
BATCH_TARGET = 16
#: ... or once it waited this long (seconds), whichever comes first.
LINGER_MAX_S = 0.1
#: Queued rows read per batch, at least (then twice the size of the previous batch, up to BATCH).
FETCH_MIN = 32
#: A kick older than this whose command never ran (it failed) is sent again by the next delivery.
KICK_STALE_MS = 30_000
#: The organization learns "a webhook arrived" (shown in its summary) at most this often, with or
#: without changes: 200 deliveries/s must not mean 200 profile writes/s.
RECEIPT_EVERY_MS = 5_000

#: When each organization was last told about a receipt, in this process. Only a throttle: after a
#: restart the next delivery simply reports one again.
_last_receipt: dict[str, int] = {}
#: Instances with a processing job in this process, by the job's token.
_processors: dict[str, int] = {}
_processor_ids = itertools.count(1)
#: Deliveries the last batch of each instance applied (sizes the next read).
_last_done: dict[str, int] = {}
#: Deliveries recorded per instance since its last batch began (see `note_recorded`).
_recorded: dict[str, int] = {}
#: Set when `_recorded` reaches BATCH_TARGET (with the event loop it belongs to).
_enough: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
#: Per instance: when the pending durable kick was sent, as last seen COMMITTED by this process (set
#: only after a commit, dropped whenever a transaction may clear it or the instance wakes). It
#: spares each ingest a read of the meta row while a kick is known to be pending.
known_kicks: dict[str, int] = {}


@dataclass
class BatchResult:
    """What one batch did: ``event`` is the organization's ``{"body", "commandId"}`` or None;
    ``kicked_at`` the pending kick's time as read in the transaction (None: none is pending)."""

    processed: int
    more: bool
    event: dict[str, Any] | None
    kicked_at: int | None


def ensure_processor(ctx: InstanceContext) -> None:
    """Start the processing job of this instance unless one runs (checked under the write lock,
    so it cannot miss the end of the previous one: see `apply_batch`)."""
    if ctx.key in _processors:
        return
    token = next(_processor_ids)
    _processors[ctx.key] = token

    async def job(job_ctx: InstanceContext) -> None:
        await process_deliveries_job(job_ctx, token)

    ctx.start_job(f"process-deliveries-{token}", job)


async def process_deliveries_job(ctx: InstanceContext, token: int) -> None:
    """Apply batches until nothing is queued, each in a write transaction of its own, and hand
    each batch's organization event over directly (same command id as its outbox copy, which then
    arrives as a duplicate): the outbox stays the durable path, this one is the fast path."""
    try:
        # Deliveries come in bursts, recorded one mailbox command at a time: the first of a burst
        # starts this job, and waiting here for the next ones makes the batch a batch rather than
        # one delivery (a batch costs about as much as several deliveries: its statements, its
        # organization event and outbox row). A batch that leaves deliveries behind was cut by its
        # budget: the next one follows at once.
        await _linger(ctx.key)
        while True:
            async with ctx.write() as conn:
                result = await apply_batch(ctx, conn, durable=False)
            # Committed: what the transaction read about the kick is now the stored state.
            if result.kicked_at is not None:
                known_kicks[ctx.key] = result.kicked_at
            if result.event is not None:
                await ctx.actor("organization", ctx.key).send(
                    "github_event", result.event["body"], command_id=result.event["commandId"]
                )
            if not result.more:
                return
    except FoundryError as exc:
        # The durable kick (outbox) and the wake check take over; nothing is lost.
        log.warning("github-data %s: delivery processing paused: %s", ctx.key, exc)
    finally:
        if _processors.get(ctx.key) == token:
            del _processors[ctx.key]


def note_recorded(key: str) -> None:
    """A delivery of instance ``key`` was recorded ``queued`` (a hint for `_linger` only)."""
    count = _recorded[key] = _recorded.get(key, 0) + 1
    entry = _enough.get(key)
    if count >= BATCH_TARGET and entry is not None:
        entry[1].set()


async def _linger(key: str) -> None:
    """Wait until `BATCH_TARGET` deliveries were recorded since the last batch, `LINGER_MAX_S` at most."""
    loop = asyncio.get_running_loop()
    entry = _enough.get(key)
    if entry is None or entry[0] is not loop:
        entry = _enough[key] = (loop, asyncio.Event())
    if _recorded.get(key, 0) >= BATCH_TARGET:
        return
    entry[1].clear()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LINGER_MAX_S):
            await entry[1].wait()


async def apply_batch(ctx: InstanceContext, conn: AsyncConnection, *, durable: bool) -> BatchResult:
    """Inside a write transaction on ``conn``: apply the oldest queued deliveries, up to `BATCH` of
    them, for about `BATCH_BUDGET_S` (`MIN_BATCH` at least), and record the organization's event in
    the outbox.

    ``durable``: called by a ``process_deliveries`` command, which must leave another one behind
    when deliveries remain queued (see the module's docstring).
    """
    now = ctx.now_ms()
    _recorded[ctx.key] = 0  # every recorded delivery is visible to this transaction
    # Read about twice what the last batch managed within its budget (payloads are kilobytes each).
    fetch = min(BATCH, max(FETCH_MIN, 2 * _last_done.get(ctx.key, 0)))
    rows = (
        await conn.execute(
            sa.select(webhook_deliveries)
            .where(webhook_deliveries.c.status == "queued")
            .order_by(webhook_deliveries.c.seq)
            .limit(fetch + 1)
        )
    ).all()
    meta = await ensure_meta(conn, now)
    batch = _batch_of(rows[:fetch])
    applied = await _apply_rows(ctx, conn, batch, now, meta) if batch else []
    done = len(applied)
    more = len(rows) > done
    _last_done[ctx.key] = done
    if applied:
        await _record_outcomes(conn, applied, now)
    kicked_at = await _settle_kick(ctx, conn, now, meta, more, durable, applied)
    merged = _OrganizationBatch()
    for _, cmd, effects in applied:
        if effects.forward_to is not None:
            ctx.send_after_commit(
                "github-data",
                effects.forward_to,
                "ingest_webhook",
                cmd.model_dump(by_alias=True),
                command_id=f"github-delivery:{cmd.delivery_id}",
            )
        merged.add(cmd, effects)
    event = None
    if applied and ctx.key != APP_SHELL_ID:
        first, last = applied[0][0].seq, applied[-1][0].seq
        event = await _apply_effects(ctx, conn, merged, now, f"github-deliveries:{first}-{last}")
    if more:
        ensure_processor(ctx)
    elif _processors.get(ctx.key) is not None:
        # Nothing left: the job ends after this; the next delivery (which runs after this
        # transaction, under the same lock) starts a new one.
        del _processors[ctx.key]
    return BatchResult(done, more, event, kicked_at)


async def _settle_kick(
    ctx: InstanceContext,
    conn: AsyncConnection,
    now: int,
    meta: Any,
    more: bool,
    durable: bool,
    applied: list[tuple[Any, IngestWebhook, Effects]],
) -> int | None:
    """Keep "a kick is pending" true while deliveries are queued: a kick that leaves some behind
    sends the next one; one that leaves none clears the flag (the job never does: a kick may still
    be on its way, and while the flag is set new deliveries send none). Returns the pending kick's
    time (None: no kick pending)."""
    known_kicks.pop(ctx.key, None)  # set again only once this transaction committed
    if not durable:
        return int(meta.process_kicked_at) if meta.process_pending and meta.process_kicked_at else None
    if not more:
        if meta.process_pending:
            await conn.execute(meta_table.update().where(meta_table.c.id == 1).values(process_pending=False))
        return None
    last = applied[-1][0].seq
    await conn.execute(
        meta_table.update().where(meta_table.c.id == 1).values(process_pending=True, process_kicked_at=now)
    )
    ctx.send_after_commit(
        "github-data", ctx.key, "process_deliveries", {}, command_id=f"process-deliveries:a{last}"
    )
    return now


def _batch_of(rows: Sequence[Any]) -> list[Any]:
    """The leading ``rows`` to apply together: an ``installation`` delivery is a batch of its own,
    so every status change (suspend, then unsuspend) reaches the organization in order."""
    batch: list[Any] = []
    for row in rows:
        if row.event == "installation" and batch:
            break
        batch.append(row)
        if row.event == "installation":
            break
    return batch


def _command_of(row: Any) -> IngestWebhook:
    # Validated when it was enqueued; stored by ingest_webhook from that model.
    return IngestWebhook.model_construct(
        delivery_id=row.delivery_id,
        event=row.event,
        action=row.action,
        installation_id=row.installation_id,
        received_at=row.received_at,
        payload=json.loads(row.payload_json or "{}"),
    )


class _Failed(Exception):
    """A delivery of an optimistic batch raised: the batch is applied again, one savepoint each."""


async def _apply_rows(
    ctx: InstanceContext, conn: AsyncConnection, batch: list[Any], now: int, meta: Any
) -> list[tuple[Any, IngestWebhook, Effects]]:
    """Apply ``batch`` (as far as the time budget goes) inside one savepoint; if a delivery raises,
    roll it all back and apply the same deliveries again, each in a savepoint of its own."""
    clock = asyncio.get_running_loop().time
    deadline = clock() + BATCH_BUDGET_S
    applied: list[tuple[Any, IngestWebhook, Effects]] = []
    try:
        async with conn.begin_nested():
            for row in batch:
                if len(applied) >= MIN_BATCH and clock() > deadline:
                    break
                cmd = _command_of(row)
                try:
                    effects = await _dispatch(ctx, conn, cmd, now, meta)
                except Exception as exc:
                    # Logged below, when the delivery is applied alone.
                    applied.append((row, cmd, Effects("failed")))
                    raise _Failed from exc
                applied.append((row, cmd, effects))
                if cmd.event == "installation":
                    meta = None  # the handler may have changed it
        return applied
    except _Failed:
        pass
    meta = await ensure_meta(conn, now)
    isolated: list[tuple[Any, IngestWebhook, Effects]] = []
    for row, cmd, _ in applied:
        isolated.append((row, cmd, await _apply_alone(ctx, conn, cmd, now, meta)))
        if cmd.event == "installation":
            meta = await ensure_meta(conn, now)
    return isolated


async def _dispatch(
    ctx: InstanceContext, conn: AsyncConnection, cmd: IngestWebhook, now: int, meta: Any
) -> Effects:
    if ctx.key == APP_SHELL_ID:
        return await _unrouted(ctx, cmd)
    effects = await dispatch(Delivery(cmd, conn, now, meta))
    if effects.org:
        _check_acceptable(effects.org)
    return effects


def _check_acceptable(org: dict[str, Any]) -> None:
    """Refuse (as this delivery's failure) what the organization's ``github_event`` would refuse.

    The organization gets one event per batch: a value it cannot take (a pull request numbered -1,
    say) would make it refuse the whole event, and with it every other delivery of the batch,
    after all of them were recorded applied. Checked here, the delivery fails alone, with the
    reason, before anything of it is stored.
    """
    try:
        GitHubEvent.model_validate(org)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise MissingField(f"the organization cannot take it: {where}: {first['msg']}") from None


async def _apply_alone(
    ctx: InstanceContext, conn: AsyncConnection, cmd: IngestWebhook, now: int, meta: Any
) -> Effects:
    """One delivery in a savepoint of its own: one that fails is rolled back and recorded
    ``failed`` with the reason (never retried in a loop)."""
    try:
        async with conn.begin_nested():
            return await _dispatch(ctx, conn, cmd, now, meta)
    except MissingField as exc:
        log.warning(
            "github delivery %s (%s.%s) for %s failed: %s",
            cmd.delivery_id,
            cmd.event,
            cmd.action,
            ctx.key,
            exc,
        )
        return Effects("failed", str(exc))
    except Exception as exc:
        log.exception(
            "github delivery %s (%s.%s) for %s crashed", cmd.delivery_id, cmd.event, cmd.action, ctx.key
        )
        return Effects("failed", f"internal error while applying it: {type(exc).__name__}: {exc}")


async def _record_outcomes(
    conn: AsyncConnection, applied: list[tuple[Any, IngestWebhook, Effects]], now: int
) -> None:
    """Every outcome of the batch in one statement (executemany, straight to the driver, without
    SQLAlchemy's statement compilation), and the metrics once per outcome."""
    raw = await conn.get_raw_connection()
    await raw.driver_connection.executemany(  # type: ignore[union-attr]
        _RECORD_OUTCOME, [(effects.status, effects.reason, now, row.seq) for row, _, effects in applied]
    )
    for status, count in collections.Counter(e.status for _, _, e in applied).items():
        metrics.WEBHOOKS_PROCESSED.labels("github", status).inc(count)


_RECORD_OUTCOME = (
    "UPDATE webhook_deliveries SET status = ?, reason = ?, payload_json = NULL,"
    " applied_count = applied_count + 1, processed_at = ? WHERE seq = ?"
)


class _OrganizationBatch:
    """The organization's view of one batch of deliveries: the last state of each pull request,
    repository and CI signal, merged into one ``github_event``."""

    def __init__(self) -> None:
        self.installation: dict[str, Any] | None = None
        self.repos: dict[str, dict[str, Any] | None] = {}  # id -> state, or None: removed
        self.members_changed = False
        self.pulls: dict[tuple[str, int], dict[str, Any]] = {}
        self.ci: dict[tuple[str, int], dict[str, Any]] = {}
        self.touched: dict[tuple[str, int], dict[str, Any]] = {}
        self.sync_reason: str | None = None
        self.refresh_members = False
        self.last: IngestWebhook | None = None

    def add(self, cmd: IngestWebhook, effects: Effects) -> None:
        self.last = cmd
        org = effects.org
        if org.get("installation"):
            self.installation = org["installation"]
        for repo in org.get("reposUpserted", []):
            self.repos[repo["repoId"]] = repo
        for repo_id in org.get("reposRemoved", []):
            self.repos[repo_id] = None
        self.members_changed |= bool(org.get("membersChanged"))
        for pull in org.get("pulls", []):
            self.pulls[(pull["repoId"], pull["number"])] = pull
        for change in org.get("ci", []):
            self.ci[(change["repoId"], change["number"])] = change
        for touch in org.get("touched", []):
            key = (touch["repoId"], touch["number"])
            if key not in self.touched or touch["at"] > self.touched[key]["at"]:
                self.touched[key] = touch
        self.sync_reason = effects.sync_reason or self.sync_reason
        self.refresh_members |= effects.refresh_members

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.installation is not None:
            body["installation"] = self.installation
        upserted = [r for r in self.repos.values() if r is not None]
        removed = [repo_id for repo_id, r in self.repos.items() if r is None]
        for name, value in (
            ("reposUpserted", upserted),
            ("reposRemoved", removed),
            ("pulls", list(self.pulls.values())),
            ("ci", list(self.ci.values())),
            ("touched", list(self.touched.values())),
        ):
            if value:
                body[name] = value
        if self.members_changed:
            body["membersChanged"] = True
        return body


async def _apply_effects(
    ctx: InstanceContext, conn: AsyncConnection, merged: _OrganizationBatch, now: int, command_id: str
) -> dict[str, Any] | None:
    """Record the batch's organization event in the outbox (and return it) and start what it needs."""
    body = merged.body()
    last = _last_receipt.get(ctx.key)
    if merged.last is not None and (last is None or now - last >= RECEIPT_EVERY_MS):
        # "Last webhook received" is shown to members, at most this fresh: not one write per delivery.
        cmd = merged.last
        name = f"{cmd.event}.{cmd.action}" if cmd.action else cmd.event
        body["webhook"] = {"event": name[:100], "receivedAt": cmd.received_at}
        _last_receipt[ctx.key] = now
    event = None
    if body:
        ctx.send_after_commit("organization", ctx.key, "github_event", body, command_id=command_id)
        event = {"body": body, "commandId": command_id}
    if merged.sync_reason is not None:
        await start_sync(ctx, conn, merged.sync_reason)
    if merged.refresh_members or merged.members_changed:
        # A list read before these deliveries is stale now: a running refresh reads again.
        members_stale.add(ctx.key)
    if merged.refresh_members:
        ctx.start_job(MEMBERS_JOB, refresh_members_job)
    return event


async def _unrouted(ctx: InstanceContext, cmd: IngestWebhook) -> Effects:
    if cmd.installation_id is None:
        if cmd.event == "ping":
            return Effects("applied", "ping of a hook that names no installation")
        return Effects("ignored", "the delivery names no GitHub App installation")
    # The installation may have been registered since the HTTP tier looked (a race with a sign-in):
    # look again and forward under the same command id, so the delivery still applies once.
    try:
        found = await ctx.actor("organization", APP_SHELL_ID).call(
            "organization_for_installation", {"installationId": cmd.installation_id}
        )
    except NotFound:
        return Effects("ignored", f"installation {cmd.installation_id} is not known to this Foundry")
    organization_id = str(found["organizationId"])
    return Effects(
        "forwarded",
        f"installation {cmd.installation_id} belongs to {organization_id}",
        forward_to=organization_id,
    )
