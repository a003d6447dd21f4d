"""Direct reads of the audit log."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from actors.audit_log.commands import AuditLogEvent, ListEvents
from actors.audit_log.schema import events
from foundry.runtime.context import InstanceContext

#: Kinds of event only an organization's admins read: who holds a seat, seat counts, checkouts and
#: plan changes, agent-credential changes. A member gets the billing summary and no credentials, so
#: the audit log must not tell them either.
ADMIN_ONLY_KINDS = ("billing.", "organization.agent_credential_")


async def list_events(ctx: InstanceContext, query: ListEvents) -> list[dict[str, Any]]:
    """Events matching every given filter, newest first, at most ``limit``; page with ``beforeId``."""
    stmt = sa.select(events).order_by(events.c.id.desc()).limit(query.limit)
    if query.repo_id is not None:
        stmt = stmt.where(events.c.repo_id == query.repo_id)
    if query.task_id is not None:
        stmt = stmt.where(events.c.task_id == query.task_id)
    if query.branch is not None:
        stmt = stmt.where(events.c.branch_name == query.branch)
    if query.kind is not None:
        # A kind or its beginning: "billing" finds every billing.* entry, "task.create" task.created.
        stmt = stmt.where(events.c.kind.startswith(query.kind, autoescape=True))
    if query.before_id is not None:
        stmt = stmt.where(events.c.id < query.before_id)
    if not query.admin_view:
        # In the query, not after it: a member's page is as full as anyone's.
        for prefix in ADMIN_ONLY_KINDS:
            stmt = stmt.where(sa.not_(events.c.kind.startswith(prefix, autoescape=True)))
    async with ctx.read() as conn:
        rows = (await conn.execute(stmt)).all()
    return [
        AuditLogEvent(
            id=row.id,
            organization_id=ctx.key,
            repo_id=row.repo_id,
            task_id=row.task_id,
            branch_name=row.branch_name,
            kind=row.kind,
            actor_user_id=row.actor_user_id,
            payload=json.loads(row.payload_json),
            created_at=row.created_at,
        ).public()
        for row in rows
    ]
