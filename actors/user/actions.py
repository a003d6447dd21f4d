"""Direct actions of the user role.

Everything sign-in needs is a direct action with plain transactions: auth must never wait behind
background work in a command queue.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.user.commands import (
    CreateSession,
    Empty,
    SessionRef,
    SetActiveOrganization,
    Snapshot,
    TaskRef,
    UpdateSessionState,
    UpsertFromGitHub,
)
from actors.user.schema import oauth_accounts, profile, session_state, sessions, task_state
from actors.user.state import (
    app_snapshot_with_seq,
    app_topic,
    load_app_snapshot,
    load_profile,
    publish_app,
    require_profile,
)
from foundry.auth.cache_events import (
    SESSION_REVOKED,
    VIEWER_STATE_CHANGED,
    session_digest,
    sessions_topic,
    viewer_topic,
)
from foundry.auth.crypto import decrypt, encrypt
from foundry.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from foundry.runtime.context import CommandContext, InstanceContext


async def upsert_from_github(ctx: InstanceContext, cmd: UpsertFromGitHub) -> dict[str, Any]:
    """Create or refresh the user from a GitHub sign-in and store the token encrypted. Idempotent."""
    now = ctx.now_ms()
    secret = ctx.services.settings.effective_secret_key()
    values = {
        "user_id": ctx.key,
        "github_account_id": cmd.github_account_id,
        "github_login": cmd.login,
        "name": cmd.name or cmd.login,
        "email": cmd.email,
        "avatar_url": cmd.avatar_url,
        "updated_at": now,
    }
    async with ctx.write() as conn:
        existing = await load_profile(conn)
        if existing is not None and existing.github_account_id != cmd.github_account_id:
            raise Forbidden(f"user {ctx.key!r} belongs to another GitHub account")
        stmt = sqlite_insert(profile).values(id=1, created_at=now, **values)
        await conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=values))
        token_row = {
            "account_id": str(cmd.github_account_id),
            "access_token_encrypted": encrypt(secret, cmd.access_token),
            "scope": cmd.scope,
            "updated_at": now,
        }
        stmt2 = sqlite_insert(oauth_accounts).values(provider="github", **token_row)
        await conn.execute(stmt2.on_conflict_do_update(index_elements=["provider"], set_=token_row))
        await publish_app(ctx, conn)
    return {"userId": ctx.key, "created": existing is None}


async def create_session(ctx: InstanceContext, cmd: CreateSession) -> dict[str, Any]:
    """A new server-side session; its id goes into the signed cookie and only its digest is stored."""
    session_id = secrets.token_urlsafe(32)
    now = ctx.now_ms()
    async with ctx.write() as conn:
        await require_profile(conn, ctx.key)
        await conn.execute(
            sessions.insert().values(
                id=session_digest(session_id),
                created_at=now,
                expires_at=now + cmd.ttl_seconds * 1000,
                user_agent=cmd.user_agent,
                ip_address=cmd.ip_address,
            )
        )
    return {"sessionId": session_id, "expiresAt": now + cmd.ttl_seconds * 1000}


async def get_session(ctx: InstanceContext, cmd: SessionRef) -> dict[str, Any]:
    """The live session, or `Unauthorized` when it is unknown, expired or revoked."""
    async with ctx.read() as conn:
        row = (
            await conn.execute(sa.select(sessions).where(sessions.c.id == session_digest(cmd.session_id)))
        ).first()
    if row is None or row.revoked_at is not None:
        raise Unauthorized("session is not valid; sign in again")
    if row.expires_at <= ctx.now_ms():
        raise Unauthorized("session expired; sign in again")
    return {"userId": ctx.key, "sessionId": cmd.session_id, "expiresAt": row.expires_at}


async def revoke_session(ctx: InstanceContext, cmd: SessionRef) -> dict[str, bool]:
    """Sign-out: the session stops working at once. Idempotent."""
    digest = session_digest(cmd.session_id)
    async with ctx.write() as conn:
        result = await conn.execute(
            sessions.update()
            .where(sessions.c.id == digest, sessions.c.revoked_at.is_(None))
            .values(revoked_at=ctx.now_ms())
        )
        if result.rowcount == 1:
            # Every API process caches valid sessions and drops this one when it hears the event.
            ctx.publish(sessions_topic(ctx.key), SESSION_REVOKED, {"session": digest}, plain=True)
    return {"revoked": result.rowcount == 1}


async def app_snapshot(ctx: InstanceContext, _: Empty) -> dict[str, Any]:
    async with ctx.read() as conn:
        return await load_app_snapshot(conn, ctx.key)


async def snapshot(ctx: InstanceContext, cmd: Snapshot) -> dict[str, Any]:
    """The realtime gateway's snapshot of ``app:<userId>``."""
    if cmd.topic != app_topic(ctx.key):
        raise NotFound(f"user {ctx.key!r} does not own topic {cmd.topic!r}")
    return await app_snapshot_with_seq(ctx)


async def set_active_organization(ctx: InstanceContext, cmd: SetActiveOrganization) -> dict[str, Any]:
    """Choose the organization the app opens; only one the user may use (else `Forbidden`)."""
    async with ctx.write() as conn:
        row = await require_profile(conn, ctx.key)
        allowed = {o["id"] for o in json.loads(row.organizations_json)}
        if cmd.organization_id is not None and cmd.organization_id not in allowed:
            raise NotFound(f"organization {cmd.organization_id!r} is not one of yours")
        await conn.execute(
            profile.update()
            .where(profile.c.id == 1)
            .values(active_organization_id=cmd.organization_id, updated_at=ctx.now_ms())
        )
        await publish_app(ctx, conn)
        return await load_app_snapshot(conn, ctx.key)


async def github_token(ctx: InstanceContext, _: Empty) -> dict[str, str]:
    """The user's GitHub OAuth token, for user-attributed actions only."""
    async with ctx.read() as conn:
        row = (
            await conn.execute(sa.select(oauth_accounts).where(oauth_accounts.c.provider == "github"))
        ).first()
    if row is None:
        raise NotFound(f"user {ctx.key!r} has no GitHub account linked")
    return {
        "accessToken": decrypt(ctx.services.settings.effective_secret_key(), row.access_token_encrypted),
        "scope": row.scope,
    }


async def get_task_state(ctx: InstanceContext, cmd: TaskRef) -> dict[str, Any]:
    """This user's view of a task: active session, unread flags and drafts per session."""
    async with ctx.read() as conn:
        task = (
            await conn.execute(
                sa.select(task_state).where(
                    task_state.c.organization_id == cmd.organization_id, task_state.c.task_id == cmd.task_id
                )
            )
        ).first()
        rows = (
            await conn.execute(
                sa.select(session_state)
                .where(
                    session_state.c.organization_id == cmd.organization_id,
                    session_state.c.task_id == cmd.task_id,
                )
                .order_by(session_state.c.session_id)
            )
        ).all()
    return {
        "taskId": cmd.task_id,
        "activeSessionId": task.active_session_id if task else None,
        "sessions": [
            {
                "sessionId": r.session_id,
                "unread": bool(r.unread),
                "draftText": r.draft_text,
                "draftUpdatedAt": r.draft_updated_at,
            }
            for r in rows
        ],
    }


async def write_session_state(conn: AsyncConnection, cmd: UpdateSessionState, now: int) -> bool:
    """Apply an `UpdateSessionState` inside an open transaction (shared by the action and command).

    Returns whether the session's unread flag changed: the caller then publishes the app snapshot,
    which lists the unread sessions (a draft save alone publishes nothing).
    """
    before = (
        await conn.execute(
            sa.select(session_state.c.unread).where(
                session_state.c.organization_id == cmd.organization_id,
                session_state.c.task_id == cmd.task_id,
                session_state.c.session_id == cmd.session_id,
            )
        )
    ).scalar()
    changes: dict[str, Any] = {"updated_at": now}
    if cmd.unread is not None:
        changes["unread"] = cmd.unread
    if cmd.draft_text is not None:
        changes["draft_text"] = cmd.draft_text
        changes["draft_updated_at"] = now
    stmt = sqlite_insert(session_state).values(
        organization_id=cmd.organization_id, task_id=cmd.task_id, session_id=cmd.session_id, **changes
    )
    await conn.execute(
        stmt.on_conflict_do_update(index_elements=["organization_id", "task_id", "session_id"], set_=changes)
    )
    if cmd.make_active:
        stmt2 = sqlite_insert(task_state).values(
            organization_id=cmd.organization_id,
            task_id=cmd.task_id,
            active_session_id=cmd.session_id,
            updated_at=now,
        )
        await conn.execute(
            stmt2.on_conflict_do_update(
                index_elements=["organization_id", "task_id"],
                set_={"active_session_id": cmd.session_id, "updated_at": now},
            )
        )
    return cmd.unread is not None and bool(before) != cmd.unread


def _require_change(cmd: UpdateSessionState) -> None:
    if cmd.unread is None and cmd.draft_text is None and not cmd.make_active:
        raise InvalidInput("nothing to change: give unread, draftText or makeActive", ["body"])


async def update_session_state(ctx: InstanceContext, cmd: UpdateSessionState) -> dict[str, Any]:
    """Change unread/draft for one session (only given fields) and optionally make it active."""
    _require_change(cmd)
    async with ctx.write() as conn:
        if await write_session_state(conn, cmd, ctx.now_ms()):
            await publish_app(ctx, conn)
        publish_viewer_state(ctx, cmd)
    return await get_task_state(ctx, TaskRef(organizationId=cmd.organization_id, taskId=cmd.task_id))


async def handle_update_session_state(ctx: CommandContext, cmd: UpdateSessionState) -> None:
    """The durable form, for other actors' outboxes (e.g. a task marking a finished turn unread)."""
    _require_change(cmd)
    if await write_session_state(ctx.conn, cmd, ctx.now_ms()):
        await publish_app(ctx, ctx.conn)
    publish_viewer_state(ctx, cmd)


def publish_viewer_state(ctx: InstanceContext, cmd: UpdateSessionState) -> None:
    """Say (in the open transaction) that this user's state of a task changed: API processes that
    cached it for ``GET …/tasks/{taskId}`` drop it (drafts and the active session included)."""
    ctx.publish(
        viewer_topic(ctx.key),
        VIEWER_STATE_CHANGED,
        {"organizationId": cmd.organization_id, "taskId": cmd.task_id},
        plain=True,
    )
