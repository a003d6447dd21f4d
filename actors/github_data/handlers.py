"""Mailbox commands of github-data: webhook ingest and processing, installation reconciliation
(and ``sync``, in `actors.github_data.sync`).

A delivery takes two steps through the mailbox. ``ingest_webhook`` (one per delivery, enqueued by the
HTTP tier before it answers 202) only records it ``queued``. ``process_deliveries`` applies queued
deliveries in arrival order, a few per transaction (bounded in time, since acknowledgements wait for
the instance's write lock), and tells the organization what changed in one ``github_event``: one
organization command and one broadcast per batch instead of per delivery. Measured on 2 cores, per
delivery commands cost ~14 ms of CPU each across the tiers (~2.8 cores at 200/s); batches let
ingest keep up.

Who sends ``process_deliveries``: a job of the instance (the fast path), and — durably, once per
busy period — the ingest command through the outbox, so that after a crash the recovery scan finds
the kick and processing resumes without a caller. The job also forwards each batch's organization
event at once under the command id of its outbox copy: the outbox delays deliveries under steady
traffic (its retry backoff also applies when new sends arrive during a pass), and the duplicate it
delivers later is a no-op.

Key ``app`` (the app shell's id) is the github-data instance of no organization: deliveries whose
installation Foundry does not know, or that name none (``ping`` of a repository hook), are recorded
there. It is a github-data instance rather than the app shell itself so webhook traffic never queues
in front of sign-in work on the app shell's mailbox, and so every delivery, routed or not,
lands in the same ``webhook_deliveries`` table with the same dedupe.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from actors.github_data.commands import Empty, IngestWebhook
from actors.github_data.schema import meta as meta_table
from actors.github_data.schema import webhook_deliveries
from actors.github_data.state import ensure_meta, load_meta, update_meta
from actors.github_data.sync import replace_members, resume_sync, start_sync
from actors.github_data.webhooks import Delivery, Effects, MissingField, dispatch
from foundry import metrics
from foundry.errors import FoundryError, InvalidInput, NotFound
from foundry.ids import APP_SHELL_ID, organization_id_for
from foundry.runtime.context import CommandContext, InstanceContext

log = logging.getLogger(__name__)

MEMBERS_JOB = "refresh-members"
RECONCILE_JOB = "reconcile-installations"
#: The organization learns "a webhook arrived" (shown in its summary) at most this often, with or
#: without changes: 200 deliveries/s must not mean 200 profile writes/s.
RECEIPT_EVERY_MS = 5_000
#: Deliveries applied per ``process_deliveries`` command, at most. Small on purpose: the command holds
#: the instance's write lock, and every acknowledgement of a new delivery waits for it ...
BATCH = 20
#: ... and at most about this long (seconds): acknowledgements of new deliveries wait for the lock,
#: so the batch adapts to how loaded the machine is (measured: 10 fixed deliveries per command put
#: the ack p99 at ~100 ms on a busy 2-core box, a ~10 ms budget keeps it near 30 ms).
BATCH_BUDGET_S = 0.010
#: A kick older than this whose command never ran (it failed) is sent again by the next delivery.
KICK_STALE_MS = 30_000
#: Processed deliveries are forgotten after this long, checked every PRUNE_EVERY deliveries.
DELIVERY_RETENTION_MS = 30 * 24 * 3600 * 1000
PRUNE_EVERY = 1000
#: When each organization was last told about a receipt, in this process. Only a throttle: after a
#: restart the next delivery simply reports one again.
_last_receipt: dict[str, int] = {}
#: Organizations whose member list changed (an event) since their running refresh started reading.
_members_stale: set[str] = set()
#: Instances with a delivery-processing job in this process, by the job's token.
_processors: dict[str, int] = {}
_processor_ids = itertools.count(1)


async def handle_ingest_webhook(ctx: CommandContext, cmd: IngestWebhook) -> dict[str, Any]:
    """Record one delivery (``queued``) and make sure a ``process_deliveries`` command will apply it.

    Kept to a couple of statements: it runs once per delivery, at hundreds per second. The sender's
    command id is ``github-delivery:<X-GitHub-Delivery>``, so the mailbox answers a redelivery with
    the stored outcome without running this again; the unique ``delivery_id`` is the same guarantee
    beyond the mailbox's retention.
    """
    now = ctx.now_ms()
    inserted = await ctx.conn.execute(
        sqlite_insert(webhook_deliveries)
        .values(
            delivery_id=cmd.delivery_id,
            event=cmd.event,
            action=cmd.action,
            installation_id=cmd.installation_id,
            status="queued",
            payload_json=json.dumps(cmd.payload),
            applied_count=0,
            received_at=cmd.received_at,
        )
        .on_conflict_do_nothing(index_elements=["delivery_id"])
    )
    if inserted.rowcount == 0:
        return {"status": "duplicate"}
    seq = inserted.inserted_primary_key[0] if inserted.inserted_primary_key else now
    if isinstance(seq, int) and seq % PRUNE_EVERY == 0:
        # Outcomes are kept well beyond the mailbox's 7 days (GitHub redelivers by hand, any time).
        await ctx.conn.execute(
            webhook_deliveries.delete().where(
                webhook_deliveries.c.status != "queued",
                webhook_deliveries.c.received_at < now - DELIVERY_RETENTION_MS,
            )
        )
    meta = await ensure_meta(ctx.conn, now)
    stale = meta.process_kicked_at is None or now - meta.process_kicked_at > KICK_STALE_MS
    if not meta.process_pending or stale:
        # The durable kick, through the outbox: after a crash the recovery scan finds it (or the
        # command it became) and processing resumes without a caller.
        await update_meta(ctx.conn, now, process_pending=True, process_kicked_at=now)
        ctx.send_after_commit(
            "github-data", ctx.key, "process_deliveries", {}, command_id=f"process-deliveries:q{seq}"
        )
    # The fast path: a job that keeps sending ``process_deliveries`` while deliveries are queued.
    _ensure_processor(ctx)
    return {"status": "queued"}


def _ensure_processor(ctx: InstanceContext) -> None:
    """Start the processing job of this instance unless one runs (checked under the write lock,
    so it cannot miss the end of the previous one: see `handle_process_deliveries`)."""
    if ctx.key in _processors:
        return
    token = next(_processor_ids)
    _processors[ctx.key] = token

    async def job(job_ctx: InstanceContext) -> None:
        await process_deliveries_job(job_ctx, token)

    ctx.start_job(f"process-deliveries-{token}", job)


async def process_deliveries_job(ctx: InstanceContext, token: int) -> None:
    """Send ``process_deliveries`` until nothing is queued, and hand each batch's organization
    event over directly (same command id as its outbox copy, which then arrives as a duplicate):
    the outbox stays the durable path, this one is the fast path."""
    try:
        while True:
            result = await ctx.self_ref.send("process_deliveries", {}, wait=True, timeout=120)
            event = result.get("organizationEvent")
            if event is not None:
                await ctx.actor("organization", ctx.key).send(
                    "github_event", event["body"], command_id=event["commandId"]
                )
            if not result.get("more"):
                return
    except FoundryError as exc:
        # The durable kick (outbox) and the wake check take over; nothing is lost.
        log.warning("github-data %s: delivery processing paused: %s", ctx.key, exc)
    finally:
        if _processors.get(ctx.key) == token:
            del _processors[ctx.key]


async def handle_process_deliveries(ctx: CommandContext, _: Empty) -> dict[str, Any]:
    """Apply queued deliveries in arrival order, in this one transaction: up to `BATCH` of them,
    for about `BATCH_BUDGET_S`.

    Each delivery runs in a savepoint: one that lacks a field its handler needs, or hits a bug, is
    rolled back alone and recorded ``failed`` with the reason (never retried in a loop). What the
    batch changed reaches the organization as ONE ``github_event`` (one broadcast per batch),
    returned too so the processing job can deliver it at once. Small batches, each its own
    command, keep the mailbox fair to ingest (and its acknowledgements) under load.
    """
    now = ctx.now_ms()
    rows = (
        await ctx.conn.execute(
            sa.select(webhook_deliveries)
            .where(webhook_deliveries.c.status == "queued")
            .order_by(webhook_deliveries.c.seq)
            .limit(BATCH + 1)
        )
    ).all()
    batch = _batch_of(rows)
    # A write first: under pysqlite the transaction only opens at the first write, and a SAVEPOINT
    # opening it would make its RELEASE a COMMIT.
    await ctx.conn.execute(meta_table.update().where(meta_table.c.id == 1).values(process_kicked_at=now))
    merged = _OrganizationBatch()
    clock = asyncio.get_running_loop().time
    deadline = clock() + BATCH_BUDGET_S
    done = 0
    for row in batch:
        if done and clock() > deadline:
            break
        done += 1
        cmd = IngestWebhook(
            deliveryId=row.delivery_id,
            event=row.event,
            action=row.action,
            installationId=row.installation_id,
            receivedAt=row.received_at,
            payload=json.loads(row.payload_json or "{}"),
        )
        effects = await _apply_one(ctx, cmd, now)
        metrics.WEBHOOKS_PROCESSED.labels("github", effects.status).inc()
        await ctx.conn.execute(
            webhook_deliveries.update()
            .where(webhook_deliveries.c.seq == row.seq)
            .values(
                status=effects.status,
                reason=effects.reason,
                payload_json=None,
                applied_count=webhook_deliveries.c.applied_count + 1,
                processed_at=now,
            )
        )
        if effects.forward_to is not None:
            ctx.send_after_commit(
                "github-data",
                effects.forward_to,
                "ingest_webhook",
                cmd.model_dump(by_alias=True),
                command_id=f"github-delivery:{cmd.delivery_id}",
            )
        merged.add(cmd, effects)
    more = len(rows) > done
    if not more:
        await ctx.conn.execute(meta_table.update().where(meta_table.c.id == 1).values(process_pending=False))
    event = await _apply_batch(ctx, merged, now) if ctx.key != APP_SHELL_ID else None
    if more:
        _ensure_processor(ctx)
    elif _processors.get(ctx.key) is not None:
        # Nothing left: the job ends after this; the next delivery (which runs after this
        # transaction, under the same lock) starts a new one.
        del _processors[ctx.key]
    return {"processed": done, "more": more, "organizationEvent": event}


def _batch_of(rows: Sequence[Any]) -> list[Any]:
    """At most `BATCH` rows; an ``installation`` delivery is a batch of its own, so every status
    change (suspend, then unsuspend) reaches the organization in order."""
    batch: list[Any] = []
    for row in rows[:BATCH]:
        if row.event == "installation" and batch:
            break
        batch.append(row)
        if row.event == "installation":
            break
    return batch


async def _apply_one(ctx: CommandContext, cmd: IngestWebhook, now: int) -> Effects:
    try:
        async with ctx.conn.begin_nested():
            if ctx.key == APP_SHELL_ID:
                return await _unrouted(ctx, cmd)
            return await dispatch(Delivery(cmd, ctx.conn, now))
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


async def _apply_batch(ctx: CommandContext, merged: _OrganizationBatch, now: int) -> dict[str, Any] | None:
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
        command_id = ctx.send_after_commit(
            "organization", ctx.key, "github_event", body, command_id=ctx.derived_id("org")
        )
        event = {"body": body, "commandId": command_id}
    if merged.sync_reason is not None:
        await start_sync(ctx, ctx.conn, merged.sync_reason)
    if merged.refresh_members or merged.members_changed:
        # A list read before these deliveries is stale now: a running refresh reads again.
        _members_stale.add(ctx.key)
    if merged.refresh_members:
        ctx.start_job(MEMBERS_JOB, refresh_members_job)
    return event


async def _unrouted(ctx: CommandContext, cmd: IngestWebhook) -> Effects:
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


async def on_wake(ctx: InstanceContext) -> None:
    """Resume an interrupted sync and make sure queued deliveries get processed."""
    await resume_sync(ctx)
    await resume_deliveries(ctx)


async def resume_deliveries(ctx: InstanceContext) -> None:
    """At wake: queued deliveries whose ``process_deliveries`` command was lost (it failed, or its
    kick went stale) get a new one. Normally the kick is still in the outbox or the mailbox."""
    async with ctx.read() as conn:
        meta = await load_meta(conn)
        queued = (
            await conn.execute(
                sa.select(webhook_deliveries.c.seq).where(webhook_deliveries.c.status == "queued").limit(1)
            )
        ).first()
    if queued is None or meta is None:
        return
    now = ctx.now_ms()
    kicked = meta.process_kicked_at
    if meta.process_pending and kicked is not None and now - kicked <= KICK_STALE_MS:
        return
    log.warning("github-data %s: queued deliveries had no processing command; kicking", ctx.key)
    async with ctx.write() as conn:
        await update_meta(conn, now, process_pending=True, process_kicked_at=now)
        ctx.send_after_commit(
            "github-data",
            ctx.key,
            "process_deliveries",
            {},
            command_id=f"process-deliveries:w{queued.seq}-{now}",
        )


async def refresh_members_job(ctx: InstanceContext) -> None:
    """Re-read the organization's members from GitHub and tell the organization if they changed.

    A member event that arrives while the list is being read makes that list stale: it is then not
    written (the check runs inside the write transaction, which the mailbox cannot interleave) and
    the list is read again, so a removed member is never re-added by an older read.
    """
    async with ctx.read() as conn:
        meta = await load_meta(conn)
    if meta is None or meta.kind != "organization" or meta.installation_id is None or not meta.github_login:
        log.info("github-data %s: no organization installation known yet; member refresh skipped", ctx.key)
        return
    for _ in range(5):
        _members_stale.discard(ctx.key)
        try:
            team = await ctx.services.driver("github").list_org_members(
                meta.installation_id, meta.github_login
            )
        except FoundryError as exc:
            log.warning("github-data %s: member refresh failed: %s", ctx.key, exc)
            return
        async with ctx.write() as conn:
            if ctx.key in _members_stale:
                continue
            changed = await replace_members(conn, team, int(meta.generation))
        if changed:
            await ctx.actor("organization", ctx.key).send("github_event", {"membersChanged": True})
        return
    log.warning("github-data %s: member list kept changing during 5 refreshes; next event retries", ctx.key)


async def handle_reconcile_installations(ctx: CommandContext, _: Empty) -> dict[str, Any]:
    """Rebuild the installation index and recreate missing organizations from GitHub.

    Runs on key ``app`` at server start: ``GET /app/installations`` with the App JWT, then one
    ``github_event`` per installation to its organization, which registers the installation with
    the app shell, creates the organization if its state was wiped and then syncs it.
    """
    if ctx.key != APP_SHELL_ID:
        raise InvalidInput("reconcile_installations only runs on github-data key 'app'")
    return {"started": ctx.start_job(RECONCILE_JOB, reconcile_job)}


async def reconcile_job(ctx: InstanceContext) -> None:
    try:
        installations = await ctx.services.driver("github").list_installations()
    except (FoundryError, RuntimeError) as exc:
        log.warning("github installation reconciliation failed: %s", exc)
        return
    run = uuid.uuid4().hex[:12]
    for inst in installations:
        kind = "personal" if inst.account_type == "User" else "organization"
        organization_id = organization_id_for(kind, inst.account_login)
        body = {
            "installation": {
                "installationId": inst.id,
                "status": "suspended" if inst.suspended else "connected",
                "accountLogin": inst.account_login,
                "accountId": inst.account_id,
                "accountType": inst.account_type,
            }
        }
        try:
            await ctx.actor("organization", organization_id).send(
                "github_event", body, command_id=f"reconcile:{run}:{inst.id}"
            )
        except FoundryError as exc:
            log.warning("reconciliation of installation %s (%s) failed: %s", inst.id, organization_id, exc)
    log.info("github installation reconciliation: %d installation(s)", len(installations))
