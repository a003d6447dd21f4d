"""Direct reads of github-data."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from actors.github_data.commands import Empty, ListDeliveries, PullRef, RepoRef, SyncBatch
from actors.github_data.schema import (
    branches,
    members,
    pr_items,
    pull_requests,
    repositories,
    webhook_deliveries,
)
from actors.github_data.state import ci_states, load_meta, member_json, pull_json, repo_json
from foundry.runtime.context import InstanceContext


async def status(ctx: InstanceContext, _: Empty) -> dict[str, Any]:
    """The cache's sync state and row counts."""
    async with ctx.read() as conn:
        meta = await load_meta(conn)

        async def count(table: sa.Table, *where: Any) -> int:
            return int(
                (await conn.execute(sa.select(sa.func.count()).select_from(table).where(*where))).scalar()
                or 0
            )

        # Deliveries by outcome and how many ran twice, in one pass over the table.
        outcomes: dict[str, int] = {}
        applied_twice = 0
        for status_, n, twice in await conn.execute(
            sa.select(
                webhook_deliveries.c.status,
                sa.func.count(),
                sa.func.sum(sa.case((webhook_deliveries.c.applied_count > 1, 1), else_=0)),
            ).group_by(webhook_deliveries.c.status)
        ):
            outcomes[status_] = int(n)
            applied_twice += int(twice or 0)
        counts = {
            "repositoryCount": await count(repositories),
            "memberCount": await count(members),
            "openPullRequestCount": await count(pull_requests, pull_requests.c.state.in_(("open", "draft"))),
            "deliveryCount": sum(outcomes.values()),
            "deliveriesQueued": outcomes.get("queued", 0),
            "deliveryOutcomes": outcomes,
            # Always 0: a delivery's handler runs once (checked by the tests and the benchmark).
            "deliveriesAppliedTwice": applied_twice,
        }
    if meta is None:
        return {"syncStatus": "idle", "generation": 0, **counts}
    return {
        "installationId": meta.installation_id,
        "installationStatus": meta.installation_status,
        "generation": meta.generation,
        "syncStatus": meta.sync_status,
        "syncPhase": meta.sync_phase,
        "processed": meta.sync_processed,
        "total": meta.sync_total,
        "syncError": meta.sync_error,
        "lastSyncAt": meta.last_sync_at,
        "lastSyncStats": meta.last_sync_stats,
        **counts,
    }


async def sync_batch(ctx: InstanceContext, cmd: SyncBatch) -> dict[str, Any]:
    """What the organization applies for a sync: every repository (the catalog is replaced), the
    member list (None if never read), and the pull requests changed after generation ``since``."""
    async with ctx.read() as conn:
        meta = await load_meta(conn)
        repos = (await conn.execute(sa.select(repositories).order_by(repositories.c.full_name))).all()
        team = None
        if meta is not None and meta.members_synced:
            team = [member_json(m) for m in (await conn.execute(sa.select(members))).all()]
        changed = (
            await conn.execute(sa.select(pull_requests).where(pull_requests.c.changed_generation > cmd.since))
        ).all()
        ci = await ci_states(conn) if changed else {}
    return {
        "generation": cmd.generation,
        "repos": [repo_json(r) for r in repos],
        "members": team,
        "pulls": [pull_json(r, ci.get((r.repo_id, r.head_sha or ""))) for r in changed],
    }


async def member_list(ctx: InstanceContext, _: Empty) -> dict[str, Any]:
    """GitHub's member list as last read (``members`` None when it never was)."""
    async with ctx.read() as conn:
        meta = await load_meta(conn)
        if meta is None or not meta.members_synced:
            return {"members": None}
        return {"members": [member_json(m) for m in (await conn.execute(sa.select(members))).all()]}


async def list_pr_items(ctx: InstanceContext, cmd: PullRef) -> list[dict[str, Any]]:
    """Reviews, review comments and comments of one pull request, oldest first (for the task detail
    and the agent). Deleted comments stay as ``deleted: true`` without their text."""
    async with ctx.read() as conn:
        rows = (
            await conn.execute(
                sa.select(pr_items)
                .where(pr_items.c.repo_id == cmd.repo_id, pr_items.c.number == cmd.number)
                .order_by(pr_items.c.gh_created_at, pr_items.c.item_id)
            )
        ).all()
    return [
        {
            "id": f"{r.kind}-{r.item_id}",
            "kind": r.kind,
            "githubId": r.item_id,
            "authorLogin": r.author_login,
            "body": r.body,
            "state": r.state,
            "path": r.path,
            "line": r.line,
            "url": r.html_url,
            "createdAt": r.gh_created_at,
            "updatedAt": r.gh_updated_at,
            "deleted": bool(r.deleted),
        }
        for r in rows
    ]


async def list_branches(ctx: InstanceContext, cmd: RepoRef) -> list[dict[str, Any]]:
    """Branch heads of a repository as pushes, creates and deletes reported them."""
    async with ctx.read() as conn:
        rows = (
            await conn.execute(
                sa.select(branches).where(branches.c.repo_id == cmd.repo_id).order_by(branches.c.name)
            )
        ).all()
    return [{"name": r.name, "headSha": r.head_sha, "updatedAt": r.updated_at} for r in rows]


async def list_deliveries(ctx: InstanceContext, cmd: ListDeliveries) -> list[dict[str, Any]]:
    """The most recent webhook deliveries recorded here, newest first (``queued`` until applied)."""
    stmt = sa.select(webhook_deliveries).order_by(webhook_deliveries.c.seq.desc())
    if cmd.status is not None:
        stmt = stmt.where(webhook_deliveries.c.status == cmd.status)
    async with ctx.read() as conn:
        rows = (await conn.execute(stmt.limit(cmd.limit))).all()
    return [
        {
            "deliveryId": r.delivery_id,
            "event": r.event,
            "action": r.action,
            "installationId": r.installation_id,
            "status": r.status,
            "reason": r.reason,
            "appliedCount": r.applied_count,
            "receivedAt": r.received_at,
            "processedAt": r.processed_at,
        }
        for r in rows
    ]
