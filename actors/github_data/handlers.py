"""Mailbox commands of github-data: webhook ingest and processing, installation reconciliation
(and ``sync``, in `actors.github_data.sync`).

A delivery takes two steps. ``ingest_webhook`` (one per delivery, enqueued by the HTTP tier before
it answers 202) only records it ``queued``. Queued deliveries are then applied in arrival order,
many per transaction, with one organization ``github_event`` per batch (`actors.github_data.processing`):
by a job of the instance (the fast path), and by ``process_deliveries`` commands (the durable path:
while deliveries are queued, one is always pending, so processing resumes after a crash).

Key ``app`` (the app shell's id) is the github-data instance of no organization: deliveries whose
installation Foundry does not know, or that name none (``ping`` of a repository hook), are recorded
there. It is a github-data instance rather than the app shell itself so webhook traffic never queues
in front of sign-in work on the app shell's mailbox, and so every delivery, routed or not,
lands in the same ``webhook_deliveries`` table with the same dedupe.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import sqlalchemy as sa

from actors.github_data.commands import Empty, IngestWebhook
from actors.github_data.processing import (
    KICK_STALE_MS,
    apply_batch,
    ensure_processor,
    known_kicks,
    note_recorded,
)
from actors.github_data.schema import webhook_deliveries
from actors.github_data.state import ensure_meta, update_meta
from actors.github_data.sync import resume_sync
from foundry.errors import FoundryError, InvalidInput
from foundry.ids import APP_SHELL_ID, organization_id_for
from foundry.runtime.context import CommandContext, InstanceContext

log = logging.getLogger(__name__)

RECONCILE_JOB = "reconcile-installations"
#: Processed deliveries are forgotten after this long, checked every PRUNE_EVERY deliveries.
DELIVERY_RETENTION_MS = 30 * 24 * 3600 * 1000
PRUNE_EVERY = 1000
#: Records a delivery ``queued``; no row when its id is known (a redelivery past the mailbox's dedupe).
_INSERT_DELIVERY = (
    "INSERT INTO webhook_deliveries"
    " (delivery_id, event, action, installation_id, status, payload_json, applied_count, received_at)"
    " VALUES (?, ?, ?, ?, 'queued', ?, 0, ?) ON CONFLICT (delivery_id) DO NOTHING RETURNING seq"
)


async def handle_ingest_webhook(ctx: CommandContext, cmd: IngestWebhook) -> dict[str, Any]:
    """Record one delivery (``queued``) and make sure a ``process_deliveries`` command will apply it.

    Kept to a couple of statements: it runs once per delivery, at hundreds per second. The sender's
    command id is ``github-delivery:<X-GitHub-Delivery>``, so the mailbox answers a redelivery with
    the stored outcome without running this again; the unique ``delivery_id`` is the same guarantee
    beyond the mailbox's retention.
    """
    now = ctx.now_ms()
    # Straight to the driver, inside the command's transaction: no statement compilation or result
    # processing (this runs once per delivery, in the mailbox loop).
    raw = await ctx.conn.get_raw_connection()
    inserted = await raw.driver_connection.execute_fetchall(  # type: ignore[union-attr]
        _INSERT_DELIVERY,
        (
            cmd.delivery_id,
            cmd.event,
            cmd.action,
            cmd.installation_id,
            json.dumps(cmd.payload),
            cmd.received_at,
        ),
    )
    if not inserted:
        return {"status": "duplicate"}
    seq = inserted[0][0]
    note_recorded(ctx.key)
    if isinstance(seq, int) and seq % PRUNE_EVERY == 0:
        # Outcomes are kept well beyond the mailbox's 7 days (GitHub redelivers by hand, any time).
        await ctx.conn.execute(
            webhook_deliveries.delete().where(
                webhook_deliveries.c.status != "queued",
                webhook_deliveries.c.received_at < now - DELIVERY_RETENTION_MS,
            )
        )
    kicked = known_kicks.get(ctx.key)
    if kicked is None or now - kicked > KICK_STALE_MS // 2:
        # Unless a pending kick is known (`known_kicks` spares this read on the hot path).
        meta = await ensure_meta(ctx.conn, now)
        stale = meta.process_kicked_at is None or now - meta.process_kicked_at > KICK_STALE_MS
        if not meta.process_pending or stale:
            # The durable kick, through the outbox: after a crash the recovery scan finds it (or
            # the command it became) and processing resumes without a caller.
            await update_meta(ctx.conn, now, process_pending=True, process_kicked_at=now)
            ctx.send_after_commit(
                "github-data", ctx.key, "process_deliveries", {}, command_id=f"process-deliveries:q{seq}"
            )
    # The fast path: a job that applies batches while deliveries are queued.
    ensure_processor(ctx)
    return {"status": "queued"}


async def handle_process_deliveries(ctx: CommandContext, _: Empty) -> dict[str, Any]:
    """Apply the oldest queued deliveries (one batch: see `apply_batch`); when some remain, leave
    the next ``process_deliveries`` behind and make sure the processing job runs."""
    result = await apply_batch(ctx, ctx.conn, durable=True)
    return {"processed": result.processed, "more": result.more, "organizationEvent": result.event}


async def on_wake(ctx: InstanceContext) -> None:
    """Resume an interrupted sync and make sure queued deliveries get processed."""
    await resume_sync(ctx)
    await resume_deliveries(ctx)


async def resume_deliveries(ctx: InstanceContext) -> None:
    """At wake: queued deliveries get a ``process_deliveries`` command of their own. One is normally
    still pending in the outbox or the mailbox; a second one costs a no-op, a missing one would
    leave them queued until the next delivery."""
    known_kicks.pop(ctx.key, None)  # what this process knew is from before the sleep
    async with ctx.read() as conn:
        queued = (
            await conn.execute(
                sa.select(webhook_deliveries.c.seq).where(webhook_deliveries.c.status == "queued").limit(1)
            )
        ).first()
    if queued is None:
        return
    now = ctx.now_ms()
    log.info("github-data %s: deliveries are queued at wake; kicking their processing", ctx.key)
    async with ctx.write() as conn:
        await update_meta(conn, now, process_pending=True, process_kicked_at=now)
        ctx.send_after_commit(
            "github-data",
            ctx.key,
            "process_deliveries",
            {},
            command_id=f"process-deliveries:w{queued.seq}-{now}",
        )


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
