"""Direct actions of the task role: reads, and the git operations whose result the caller awaits.

Reads never wait behind the mailbox. Git work (diff, file tree, push + pull request, archive) runs
here, outside any transaction, and records its outcome with short writes; every git error reaches
the task state (``lastError``), the audit log and the caller with an actionable message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa

from actors.task.commands import Archive, Empty, EventsPage, PromptTarget, PullRequestRequest, Snapshot
from actors.task.gitwork import file_tree, unpushed_work
from actors.task.naming import rescue_branch, split_task_key
from actors.task.provisional import (
    archive_before_initialize,
    early_archived_at,
    listed_summary,
    lists_session,
    provisional_detail,
    provisional_snapshot,
)
from actors.task.sandbox_access import (
    author_for,
    client_for,
    ensure_sandbox,
    installation_token,
    remote_git_for,
)
from actors.task.schema import messages, permission_requests, sessions, task
from actors.task.state import (
    SANDBOX_ROLE,
    append_events,
    assert_not_archived,
    audit,
    build_detail,
    events_after,
    load_task,
    refresh,
    require_open_session,
    require_session,
    require_task,
    session_topic,
    task_topic,
)
from actors.task.turn_end import close_left_open_calls, end_running_turns
from foundry.drivers.sandbox import git as sgit
from foundry.drivers.sandbox.client import SandboxAgentClient
from foundry.errors import Conflict, FoundryError, NotFound
from foundry.runtime.context import InstanceContext
from foundry.runtime.role import PlainJson
from foundry.runtime.tables import current_seq

log = logging.getLogger(__name__)

#: One git operation that changes the checkout at a time per task (push/PR, archive): two
#: concurrent ones would race on the index and on GitHub. Per task key, in this host process; a lock
#: nobody holds or waits for is dropped.
_GIT_LOCKS: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def _git_lock(key: str) -> asyncio.Lock:
    lock = _GIT_LOCKS.get(key)
    if lock is None:
        lock = _GIT_LOCKS[key] = asyncio.Lock()
    return lock


# ------------------------------------------------------------------------------------------ reads


async def get(ctx: InstanceContext, _: Empty) -> dict[str, Any]:
    """The task detail without per-user state; the HTTP layer merges the caller's own.

    Before ``initialize`` has arrived, the detail is built from the organization's row (status
    ``provisioning``, or ``archived``): a task the organization lists is always readable.
    """
    async with ctx.read() as conn:
        row = await load_task(conn)
        if row is not None:
            return await build_detail(conn, row)
    summary = await listed_summary(ctx)
    return provisional_detail(split_task_key(ctx.key)[0], summary, archived_at=await early_archived_at(ctx))


async def snapshot(ctx: InstanceContext, cmd: Snapshot) -> dict[str, Any] | PlainJson:
    """The realtime gateway's read of ``task:<org>:<task>`` (``{"seq", "data"}``) or of a session
    transcript ``session:<org>:<task>:<sid>`` (``{"seq", "events"}`` after ``since``, paged)."""
    async with ctx.read() as conn:
        row = await load_task(conn)
    if row is None:
        provisional = await provisional_snapshot(ctx, cmd)
        if provisional is not None:
            return provisional
    organization_id, task_id = split_task_key(ctx.key)
    async with ctx.read() as conn:
        if cmd.topic == task_topic(organization_id, task_id):
            # The seq first: data read after it is at least as new, so no live event is skipped.
            seq = await current_seq(conn, cmd.topic)
            return {"seq": seq, "data": await build_detail(conn, await require_task(conn, ctx.key))}
        prefix = session_topic(organization_id, task_id, "")
        if cmd.topic.startswith(prefix):
            session_id = cmd.topic[len(prefix) :]
            await require_session(conn, session_id)
            seq, events = await events_after(conn, organization_id, task_id, session_id, cmd.since or 0, 500)
            return PlainJson(
                {"seq": seq, "events": [{k: e[k] for k in ("seq", "event", "data")} for e in events]}
            )
    raise NotFound(f"task {ctx.key!r} does not own topic {cmd.topic!r}")


async def check_prompt_target(ctx: InstanceContext, cmd: PromptTarget) -> dict[str, Any]:
    """Refuse, without writing anything, what ``send_message`` / ``create_session`` would refuse
    about where a prompt goes (the task archived, the session missing or closed). The API asks first
    and only then takes a seat for the sender: a prompt that is refused takes none."""
    async with ctx.read() as conn:
        assert_not_archived(await require_task(conn, ctx.key))
        if cmd.session_id is not None:
            await require_open_session(conn, cmd.session_id)
    return {"ok": True}


async def events(ctx: InstanceContext, cmd: EventsPage) -> dict[str, Any] | PlainJson:
    """A page of a session transcript after ``since`` (``GET …/events?since=``).

    Returns ``{sessionId, seq, events, nextSince, more}``: ``seq`` is the last seq of the log, so a
    client pages with ``since=nextSince`` while ``more``. A ``since`` beyond ``seq`` reads from the
    start, as a websocket subscription does.
    """
    async with ctx.read() as conn:
        row = await load_task(conn)
    if row is None:
        # Not initialized yet: the sessions the organization's row names have no events so far.
        if not lists_session(await listed_summary(ctx), cmd.session_id):
            raise NotFound(f"session {cmd.session_id!r} not found in this task")
        return {"sessionId": cmd.session_id, "seq": 0, "events": [], "nextSince": 0, "more": False}
    since = cmd.since
    async with ctx.read() as conn:
        await require_session(conn, cmd.session_id)
        where = (row.organization_id, row.task_id, cmd.session_id)
        seq, page = await events_after(conn, *where, since, cmd.limit)
        if since > seq:
            # A client from before a data reset (a restore, say) would poll an empty page for good:
            # as on the websocket, a `since` beyond the last seq reads from the start.
            since = 0
            seq, page = await events_after(conn, *where, 0, cmd.limit)
    next_since = page[-1]["seq"] if page else since
    # Stored JSON, read back: plain data already, so the runtime skips converting the page.
    return PlainJson(
        {
            "sessionId": cmd.session_id,
            "seq": seq,
            "events": page,
            "nextSince": next_since,
            "more": next_since < seq,
        }
    )


# ------------------------------------------------------------------------------------------ git


async def _ready_task(ctx: InstanceContext) -> sa.Row[Any]:
    async with ctx.read() as conn:
        row = await load_task(conn)
    if row is None:
        _, task_id = split_task_key(ctx.key)
        if await early_archived_at(ctx) is not None:
            raise Conflict(f"task {task_id!r} is archived; its sandbox was destroyed")
        raise Conflict(
            f"task {task_id!r} is still provisioning: its sandbox and checkout are not set up yet; "
            "try again once its status is no longer 'provisioning'"
        )
    assert_not_archived(row)
    if row.provision_state != "ready":
        state = row.provision_state
        why = f": {row.provision_error}" if state == "error" and row.provision_error else ""
        raise Conflict(f"the task's repository is not ready in its sandbox yet (provisioning {state}){why}")
    return row


@contextlib.asynccontextmanager
async def _sandbox(ctx: InstanceContext) -> AsyncIterator[SandboxAgentClient]:
    endpoint = await ensure_sandbox(ctx)
    async with client_for(endpoint) as client:
        yield client


async def _record_git_error(ctx: InstanceContext, operation: str, exc: FoundryError) -> str:
    message = f"{operation} failed: {exc.detail}"
    async with ctx.write() as conn:
        row = await require_task(conn, ctx.key)
        await conn.execute(task.update().where(task.c.id == 1).values(last_error=message))
        audit(ctx, row, "task.error", {"step": operation, "detail": message})
        await refresh(ctx, conn)
    return message


async def _clear_git_error(ctx: InstanceContext, operation: str) -> None:
    """``operation`` worked: the error it left (`_record_git_error`) is over. Another operation's error
    stays (a diff that reads again says nothing about a pull request GitHub refused)."""
    async with ctx.read() as conn:
        row = await load_task(conn)
    if row is not None and row.last_error is not None and row.last_error.startswith(f"{operation} failed:"):
        async with ctx.write() as conn:
            await conn.execute(
                task.update()
                .where(task.c.id == 1, task.c.last_error == row.last_error)
                .values(last_error=None)
            )
            await refresh(ctx, conn)


async def diff(ctx: InstanceContext, _: Empty) -> dict[str, Any]:
    """``{files: [{path, kind}], diff, filesTruncated, diffTruncated}``: the working tree against
    HEAD, untracked files included, each cut short (and saying so) past sandbox-agent's 1 MiB output
    limit: a reviewer must know that the changes shown are not all of them. Starts a crashed sandbox
    again to read it."""
    await _ready_task(ctx)
    try:
        async with _sandbox(ctx) as client:
            changes, files_cut = await sgit.status_listing(client)
            patch, patch_cut = await sgit.diff_listing(client)
    except FoundryError as exc:
        await _record_git_error(ctx, "reading the diff", exc)
        raise
    await _clear_git_error(ctx, "reading the diff")
    return {
        "files": [{"path": c.path, "kind": c.kind, "origPath": c.orig_path} for c in changes],
        "diff": patch,
        "filesTruncated": files_cut,
        "diffTruncated": patch_cut,
    }


async def files(ctx: InstanceContext, _: Empty) -> dict[str, Any]:
    """``{paths, tree, truncated}``: tracked and untracked (not ignored) files of the checkout
    (``truncated``: cut short at sandbox-agent's output limit)."""
    await _ready_task(ctx)
    try:
        async with _sandbox(ctx) as client:
            paths, cut = await sgit.file_listing(client)
    except FoundryError as exc:
        await _record_git_error(ctx, "listing the files", exc)
        raise
    await _clear_git_error(ctx, "listing the files")
    return {"paths": paths, "tree": file_tree(paths), "truncated": cut}


async def create_pull_request(ctx: InstanceContext, cmd: PullRequestRequest) -> dict[str, Any]:
    """Commit what the agent left uncommitted, push the task branch, then open the pull request
    through the GitHub driver (push first, audit both). Pushing again once a PR exists
    updates it; the PR is not opened twice.

    Raises:
        Conflict: archived, or not provisioned yet.
        GitError / DriverError: the commit, the push or GitHub failed (recorded on the task).
    """
    row = await _ready_task(ctx)
    async with _git_lock(ctx.key):
        step = "pushing the branch"
        try:
            token = await installation_token(ctx, row)
            async with _sandbox(ctx) as client:
                step = "committing the changes"
                committed = await sgit.commit_all(client, cmd.title or row.title, author_for(row))
                step = "pushing the branch"
                await sgit.push(client, row.branch, row.clone_url, token, remote=remote_git_for(ctx))
                head = await sgit.head_sha(client)
        except FoundryError as exc:
            await _record_git_error(ctx, step, exc)
            raise
        async with ctx.write() as conn:
            current = await require_task(conn, ctx.key)
            await conn.execute(
                task.update()
                .where(task.c.id == 1)
                .values(pushed_sha=head, pushed_at=ctx.now_ms(), last_error=None)
            )
            audit(
                ctx,
                current,
                "task.push",
                {"branchName": row.branch, "sha": head, "committed": committed},
                user_id=cmd.user_id,
            )
            await refresh(ctx, conn)
            existing = current.pr_number
        if existing is not None:
            async with ctx.read() as conn:
                current = await require_task(conn, ctx.key)
            return {
                "pullRequest": _pr(current),
                "pushedSha": head,
                "committedSha": committed,
                "created": False,
            }
        try:
            github = ctx.services.driver("github")
            if row.installation_id is None:
                raise Conflict(
                    f"cannot open a pull request on {row.repo_full_name}: the organization has no GitHub App "
                    "installation; install the app and sync the organization"
                )
            pull = await github.create_pull_request(
                row.installation_id,
                row.repo_full_name,
                head=row.branch,
                base=row.default_branch,
                title=cmd.title or row.title,
                body=cmd.body or (row.prompt or ""),
                draft=cmd.draft,
            )
        except FoundryError as exc:
            await _record_git_error(ctx, "opening the pull request", exc)
            raise
        async with ctx.write() as conn:
            current = await require_task(conn, ctx.key)
            await conn.execute(
                task.update()
                .where(task.c.id == 1)
                .values(
                    pr_number=pull.number,
                    pr_url=pull.html_url,
                    pr_state="draft" if pull.draft else pull.state,
                    pr_title=pull.title,
                )
            )
            audit(
                ctx,
                current,
                "task.pull_request_created",
                {"number": pull.number, "url": pull.html_url, "head": row.branch, "base": row.default_branch},
                user_id=cmd.user_id,
            )
            await refresh(ctx, conn)
            current = await require_task(conn, ctx.key)
        return {"pullRequest": _pr(current), "pushedSha": head, "committedSha": committed, "created": True}


def _pr(row: sa.Row[Any]) -> dict[str, Any]:
    return {"number": row.pr_number, "url": row.pr_url, "state": row.pr_state, "title": row.pr_title}


# ------------------------------------------------------------------------------------------ archive


async def archive(ctx: InstanceContext, cmd: Archive) -> dict[str, Any]:
    """Archive the task: refused while the sandbox holds unpushed commits or uncommitted changes,
    unless ``force`` — then they are pushed to ``foundry/rescue/<taskId>-<ts>`` first. Then running
    turns stop, the sandbox is destroyed and the summary archived (audit ``task.archive``).
    Terminal. Idempotent.

    Raises:
        Conflict: unpushed work without ``force`` (the message names it).
        GitError / SandboxError: the work could not be inspected or rescued (nothing is destroyed).
    """
    async with ctx.read() as conn:
        row = await load_task(conn)
    if row is None:
        early = await archive_before_initialize(ctx, cmd)
        if early is not None:
            return early
        async with ctx.read() as conn:  # initialize landed meanwhile: archive it the ordinary way
            row = await require_task(conn, ctx.key)
    if row.archived_at is not None:
        return {"archived": True, "already": True, "rescueBranch": None}
    async with _git_lock(ctx.key):
        # Read again under the lock: a concurrent archive may have finished while this one waited,
        # and its sandbox is gone (inspecting it would answer 409 to a request that is a repeat).
        async with ctx.read() as conn:
            row = await require_task(conn, ctx.key)
        if row.archived_at is not None:
            return {"archived": True, "already": True, "rescueBranch": None}
        rescue: str | None = None
        rescued: dict[str, Any] = {}
        inspected = row.provision_state == "ready"
        if inspected:
            try:
                token = await installation_token(ctx, row)
                async with _sandbox(ctx) as client:
                    work = await unpushed_work(client, row.branch)
                    if not work.empty:
                        if not cmd.force:
                            raise Conflict(
                                f"task {row.task_id} has unpushed work: {work.describe(row.branch)}; push it "
                                "(create a pull request) first, or archive with force to push it to a rescue "
                                "branch"
                            )
                        rescue = rescue_branch(row.task_id, ctx.now_ms())
                        await sgit.checkout_new_branch(client, rescue)
                        await sgit.commit_all(client, f"Rescue of task {row.title}", author_for(row))
                        await sgit.push(client, rescue, row.clone_url, token, remote=remote_git_for(ctx))
                        rescued = work.as_json()
            except Conflict:
                raise
            except FoundryError as exc:
                await _record_git_error(ctx, "saving the work before archiving", exc)
                raise
        # A turn still running ends here, as archived, before the destruction breaks its connection:
        # its job then finds it no longer running and records nothing more.
        async with ctx.write() as conn:
            await end_running_turns(ctx, conn, "archived")
        # Nothing is left to lose: destroy the sandbox. Running jobs are not cancelled (a cancel
        # landing inside a write would upset the runtime's topic seqs): with the sandbox gone, a
        # turn or a clone fails at once and records it; the task is archived by then.
        await ctx.actor(SANDBOX_ROLE, ctx.key).call("destroy", {"reason": f"task archived ({cmd.reason})"})
        now = ctx.now_ms()
        async with ctx.write() as conn:
            current = await require_task(conn, ctx.key)
            if current.archived_at is not None:
                return {"archived": True, "already": True, "rescueBranch": None}
            await conn.execute(task.update().where(task.c.id == 1).values(archived_at=now))
            running = (
                await conn.execute(
                    sa.select(sessions.c.session_id).where(
                        sessions.c.status.in_(["running", "pending", "idle", "error"])
                    )
                )
            ).all()
            # A turn started meanwhile ends here too, and nothing queued runs any more.
            await end_running_turns(ctx, conn, "archived")
            await conn.execute(
                messages.update()
                .where(messages.c.status == "queued")
                .values(status="cancelled", stop_reason="archived", finished_at=now)
            )
            await conn.execute(
                permission_requests.update()
                .where(permission_requests.c.status == "pending")
                .values(status="cancelled", answered_at=now)
            )
            await conn.execute(
                sessions.update()
                .where(sessions.c.status != "closed")
                .values(
                    status="closed",
                    closed_at=now,
                    thinking_since=None,
                    acp_server_id=None,
                    acp_session_id=None,
                    updated_at=now,
                )
            )
            for (session_id,) in running:
                left_open = await close_left_open_calls(conn, session_id, "cancelled")
                await append_events(
                    ctx, conn, session_id, [*left_open, ("sessionClosed", {"reason": "archived"})]
                )
            if rescue is not None:
                audit(ctx, current, "task.rescue_pushed", {"branch": rescue, **rescued}, user_id=cmd.user_id)
            audit(
                ctx,
                current,
                "task.archive",
                {"reason": cmd.reason, "force": cmd.force, "rescueBranch": rescue},
                user_id=cmd.user_id,
            )
            await refresh(ctx, conn)
        return {"archived": True, "already": False, "rescueBranch": rescue, "inspected": inspected}
