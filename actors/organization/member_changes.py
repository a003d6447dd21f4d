"""What follows a change of the organization's member list: the audit entry, the caches, live access.

The member list comes from GitHub (a sync, a membership webhook, a member's sign-in); whichever
path changed it, the consequences are the same and are decided here once.
"""

from __future__ import annotations

from typing import Any

from actors.organization.billing_events import kick_seat_sync_after_commit
from actors.organization.billing_state import (
    ACCESS_CHANGED,
    billing_topic,
    publish_billing,
    release_seats_of_departed,
)
from actors.organization.state import audit_after_commit, organization_topic, publish_members_changed
from foundry.runtime.context import CommandContext


async def announce_member_changes(
    ctx: CommandContext, before: dict[str, str], after: dict[str, str], source: str | None = None
) -> bool:
    """After the member list changed from ``before`` to ``after`` (user id → role), in the open
    transaction: audit who joined, left or changed role; free the seats of those who left; have
    every API process drop the memberships it cached; and have the realtime gateway re-check its
    live subscribers, so one who left (or lost the admin role) gets no event published after the
    change. False when nothing changed."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    roles = [
        {"userId": user_id, "from": before[user_id], "to": after[user_id]}
        for user_id in sorted(set(before) & set(after))
        if before[user_id] != after[user_id]
    ]
    if not (added or removed or roles):
        return False
    payload: dict[str, Any] = {"added": added, "removed": removed}
    if roles:
        payload["roleChanged"] = roles
    if source is not None:
        payload["source"] = source
    audit_after_commit(ctx, "organization.members_synced", payload)
    if await release_seats_of_departed(ctx, ctx.conn, removed):
        await publish_billing(ctx, ctx.conn)
        kick_seat_sync_after_commit(ctx)
    # The caches' invalidation first: a gateway re-checking access must not read a cached role.
    publish_members_changed(ctx)
    if removed:
        # Every topic of the organization (its tasks' and sessions' too) is re-checked.
        ctx.publish(organization_topic(ctx.key), ACCESS_CHANGED, {}, plain=True)
    if any(role == "admin" and after.get(user_id) != "admin" for user_id, role in before.items()):
        ctx.publish(billing_topic(ctx.key), ACCESS_CHANGED, {}, plain=True)
    return True
