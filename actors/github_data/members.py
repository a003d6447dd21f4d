"""The member-list refresh of github-data: started by member events, read from GitHub."""

from __future__ import annotations

import logging

from actors.github_data.state import load_meta
from actors.github_data.sync import replace_members
from foundry.errors import FoundryError
from foundry.runtime.context import InstanceContext

log = logging.getLogger(__name__)

MEMBERS_JOB = "refresh-members"
#: Organizations whose member list changed (an event) since their running refresh started reading.
members_stale: set[str] = set()


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
        members_stale.discard(ctx.key)
        try:
            team = await ctx.services.driver("github").list_org_members(
                meta.installation_id, meta.github_login
            )
        except FoundryError as exc:
            log.warning("github-data %s: member refresh failed: %s", ctx.key, exc)
            return
        async with ctx.write() as conn:
            if ctx.key in members_stale:
                continue
            changed = await replace_members(conn, team, int(meta.generation))
        if changed:
            await ctx.actor("organization", ctx.key).send("github_event", {"membersChanged": True})
        return
    log.warning("github-data %s: member list kept changing during 5 refreshes; next event retries", ctx.key)
