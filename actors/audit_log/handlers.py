"""Mailbox commands of the audit log."""

from __future__ import annotations

import json

from actors.audit_log.commands import AppendEvent
from actors.audit_log.schema import events
from foundry.runtime.context import CommandContext


async def handle_append(ctx: CommandContext, cmd: AppendEvent) -> dict[str, int]:
    """Insert one event. Idempotent through the sender's command id (the mailbox dedupes)."""
    result = await ctx.conn.execute(
        events.insert().values(
            repo_id=cmd.repo_id,
            task_id=cmd.task_id,
            branch_name=cmd.branch_name,
            kind=cmd.kind,
            actor_user_id=cmd.actor_user_id,
            payload_json=json.dumps(cmd.payload),
            created_at=ctx.now_ms(),
        )
    )
    event_id = int(result.inserted_primary_key[0])  # type: ignore[index]
    return {"id": event_id}
