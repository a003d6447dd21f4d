"""The full sync of one organization's GitHub data, run as a background job.

Always with the installation's token through the driver, never a member's user token.
Steps: repositories, members (organizations only, two list calls), open pull requests of
every repository (bounded concurrency in the driver), then one write transaction that diffs the
result against the cache by content and GitHub's ``updated_at``, then ONE
``apply_github_sync`` command to the organization, which pulls the changed rows through
``sync_batch`` and applies them in one transaction with one broadcast. Pulling instead of pushing
keeps the organization's command under the mailbox's 1 MiB body limit however large the sync.
Progress goes to the organization as throttled ``github_sync_progress`` commands.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.github_data.commands import Sync
from actors.github_data.schema import PR_FIELDS, members, meta, pull_requests, repositories
from actors.github_data.state import ensure_meta, iso, load_meta, pr_state, pr_title, update_meta
from foundry.drivers.github import Member, PullRequest, Repository
from foundry.errors import Conflict, DriverError, FoundryError, NotFound
from foundry.runtime.client import ActorRef
from foundry.runtime.context import CommandContext, InstanceContext

log = logging.getLogger(__name__)

SYNC_JOB = "sync"
#: Progress is sent at most every this many repositories or this many seconds (whichever first).
PROGRESS_EVERY_ITEMS = 100
PROGRESS_EVERY_S = 0.25
#: Open PRs that vanished from the list are read one by one to learn closed vs merged, up to this many.
VANISHED_CHECK_LIMIT = 200
#: The organization applies even a first sync of thousands of rows well within this.
APPLY_TIMEOUT_S = 300.0

_REPO_FIELDS = (
    "full_name",
    "name",
    "owner_login",
    "private",
    "default_branch",
    "archived",
    "clone_url",
    "html_url",
    "gh_updated_at",
)


async def handle_sync(ctx: CommandContext, cmd: Sync) -> dict[str, Any]:
    """Start a full sync, or ask the running one to run once more when it ends. Idempotent."""
    return await start_sync(ctx, ctx.conn, cmd.reason)


async def start_sync(ctx: InstanceContext, conn: AsyncConnection, reason: str) -> dict[str, Any]:
    """Inside a transaction on ``conn``: start the sync job, or mark a resync if one runs."""
    now = ctx.now_ms()
    await ensure_meta(conn, now)
    if ctx.job_running(SYNC_JOB):
        await update_meta(conn, now, resync_requested=True)
        return {"started": False, "queued": True}
    await update_meta(
        conn,
        now,
        sync_status="syncing",
        sync_phase=None,
        sync_processed=0,
        sync_total=0,
        sync_error=None,
        sync_reason=reason[:200],
        sync_started_at=now,
        resync_requested=False,
    )
    ctx.start_job(SYNC_JOB, run_sync)
    return {"started": True, "queued": False}


async def resume_sync(ctx: InstanceContext) -> None:
    """At wake: a sync interrupted by a host restart runs again from the start."""
    async with ctx.read() as conn:
        row = await load_meta(conn)
    if row is not None and (row.sync_status == "syncing" or row.resync_requested):
        log.info("github-data %s: resuming an interrupted sync", ctx.key)
        ctx.start_job(SYNC_JOB, run_sync)


async def run_sync(ctx: InstanceContext) -> None:
    """The job: sync until no further sync was requested meanwhile."""
    while True:
        await _sync_once(ctx)
        async with ctx.write() as conn:
            row = await ensure_meta(conn, ctx.now_ms())
            if not row.resync_requested:
                return
            now = ctx.now_ms()
            await update_meta(
                conn,
                now,
                sync_status="syncing",
                sync_error=None,
                sync_started_at=now,
                resync_requested=False,
            )


@dataclass
class _Progress:
    """Throttled progress reports to the organization, in order (one lock, awaited sends)."""

    ctx: InstanceContext
    org: ActorRef
    generation: int
    phase: str | None = None
    processed: int = 0
    total: int = 0
    _sent_processed: int = -1
    _sent_at: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def start_phase(self, phase: str, total: int = 0) -> None:
        async with self._lock:
            self.phase, self.processed, self.total = phase, 0, total
            await self._send()

    async def item(self) -> None:
        async with self._lock:
            self.processed += 1
            now = asyncio.get_running_loop().time()
            if (
                self.processed - self._sent_processed >= PROGRESS_EVERY_ITEMS
                or now - self._sent_at >= PROGRESS_EVERY_S
                or self.processed == self.total
            ):
                await self._send()

    async def _send(self) -> None:
        self._sent_processed = self.processed
        self._sent_at = asyncio.get_running_loop().time()
        body = {
            "generation": self.generation,
            "status": "syncing",
            "phase": self.phase,
            "processed": self.processed,
            "total": self.total,
        }
        async with self.ctx.write() as conn:
            await update_meta(
                conn,
                self.ctx.now_ms(),
                sync_phase=self.phase,
                sync_processed=self.processed,
                sync_total=self.total,
            )
        await self.org.send("github_sync_progress", body)


@dataclass
class _Fetched:
    repos: list[Repository]
    members: list[Member] | None
    pulls: dict[str, list[PullRequest]]  # repo id -> open PRs
    confirmed: dict[tuple[str, int], PullRequest | None]  # vanished PRs read back (None: gone)


async def _sync_once(ctx: InstanceContext) -> None:
    org = ctx.actor("organization", ctx.key)
    async with ctx.read() as conn:
        current = await load_meta(conn)
    own_generation = current.generation if current is not None else 0
    generation = own_generation + 1
    try:
        status = await org.call("github_status")
        # A wiped cache (or organization) must not reuse generation numbers the other side applied.
        generation = max(own_generation, int(status.get("syncGeneration") or 0)) + 1
        if not status.get("exists"):
            raise NotFound(f"organization {ctx.key!r} does not exist yet; nothing to sync")
        installation_id = status.get("installationId")
        if status.get("installationStatus") != "connected" or installation_id is None:
            raise Conflict(
                f"the GitHub App installation of {ctx.key!r} is {status.get('installationStatus')}; "
                "cannot sync"
            )
        kind, login = str(status["kind"]), str(status["githubLogin"])
        async with ctx.write() as conn:
            await update_meta(
                conn,
                ctx.now_ms(),
                kind=kind,
                github_login=login,
                installation_id=installation_id,
                installation_status="connected",
            )
        progress = _Progress(ctx, org, generation)
        clock = asyncio.get_running_loop().time
        began = clock()
        fetched = await _fetch(ctx, progress, int(installation_id), kind, login)
        fetched_at = clock()
        async with ctx.write() as conn:
            stats = await _store(conn, ctx.now_ms(), generation, fetched)
        stored_at = clock()
        result = await org.send(
            "apply_github_sync",
            {"generation": generation, "processed": len(fetched.repos), "total": len(fetched.repos)},
            wait=True,
            timeout=APPLY_TIMEOUT_S,
            command_id=f"github-sync:{ctx.key}:{generation}",
        )
        stats.update(result if isinstance(result, dict) else {})
        # Where a sync's time goes (wall seconds): GitHub, our cache, the organization.
        stats.update(
            fetchS=round(fetched_at - began, 2),
            storeS=round(stored_at - fetched_at, 2),
            applyS=round(clock() - stored_at, 2),
        )
        async with ctx.write() as conn:
            await update_meta(
                conn,
                ctx.now_ms(),
                sync_status="synced",
                sync_phase=None,
                sync_processed=len(fetched.repos),
                sync_total=len(fetched.repos),
                sync_error=None,
                last_sync_at=ctx.now_ms(),
                last_sync_stats=json.dumps(stats),
            )
        log.info("github-data %s: sync generation %d done: %s", ctx.key, generation, stats)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        message = str(exc) if isinstance(exc, FoundryError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, FoundryError):
            log.warning("github-data %s: sync generation %d failed: %s", ctx.key, generation, message)
        else:
            log.exception("github-data %s: sync generation %d failed", ctx.key, generation)
        # The organization first, and applied (not only queued): whoever sees this cache say "error"
        # must find the same outcome on the organization the dashboard reads.
        try:
            await org.send(
                "github_sync_progress",
                {"generation": generation, "status": "error", "error": message[:2000]},
                wait=True,
                timeout=APPLY_TIMEOUT_S,
            )
        except FoundryError as report_exc:
            log.warning("github-data %s: could not report the sync error: %s", ctx.key, report_exc)
        async with ctx.write() as conn:
            await update_meta(conn, ctx.now_ms(), sync_status="error", sync_phase=None, sync_error=message)


async def _fetch(
    ctx: InstanceContext, progress: _Progress, installation_id: int, kind: str, login: str
) -> _Fetched:
    github = ctx.services.driver("github")
    await progress.start_phase("repositories")
    repos: list[Repository] = await github.list_installation_repositories(installation_id)
    team: list[Member] | None = None
    if kind == "organization":
        await progress.start_phase("members")
        try:
            team = await github.list_org_members(installation_id, login)
        except DriverError as exc:
            if exc.status != 403:
                raise
            # The App lacks the "Members" permission: keep the members we know rather than none.
            log.warning("github-data %s: cannot list members of %s: %s", ctx.key, login, exc)
    await progress.start_phase("pull_requests", total=len(repos))
    pulls: dict[str, list[PullRequest]] = {}

    async def list_pulls(repo: Repository) -> None:
        try:
            pulls[str(repo.id)] = await github.list_open_pull_requests(installation_id, repo.full_name)
        except NotFound:
            log.info("github-data %s: %s vanished during the sync", ctx.key, repo.full_name)
        await progress.item()

    # The driver bounds concurrency per installation; the task group cancels the rest on a failure.
    async with asyncio.TaskGroup() as group:
        for repo in repos:
            group.create_task(list_pulls(repo))
    repos = [r for r in repos if str(r.id) in pulls]

    # Open PRs we knew that are no longer listed were closed or merged meanwhile — or opened (by a
    # webhook) after their repository was listed. Reading each back tells which, authoritatively.
    async with ctx.read() as conn:
        known_open = (
            await conn.execute(
                sa.select(
                    pull_requests.c.repo_id, pull_requests.c.number, pull_requests.c.repo_full_name
                ).where(
                    pull_requests.c.state.in_(("open", "draft")),
                    pull_requests.c.repo_id.in_(list(pulls)),
                )
            )
        ).all()
    listed = {(repo_id, pr.number) for repo_id, prs in pulls.items() for pr in prs}
    vanished = [r for r in known_open if (r.repo_id, r.number) not in listed]
    confirmed: dict[tuple[str, int], PullRequest | None] = {}

    async def read_back(repo_id: str, number: int, full_name: str) -> None:
        try:
            confirmed[(repo_id, number)] = await github.get_pull_request(installation_id, full_name, number)
        except NotFound:
            confirmed[(repo_id, number)] = None

    async with asyncio.TaskGroup() as group:
        for row in vanished[:VANISHED_CHECK_LIMIT]:
            group.create_task(read_back(row.repo_id, row.number, row.repo_full_name))
    for row in vanished[VANISHED_CHECK_LIMIT:]:
        confirmed[(row.repo_id, row.number)] = None
    return _Fetched(repos, team, pulls, confirmed)


def _repo_values(repo: Repository) -> dict[str, Any]:
    return {
        "full_name": repo.full_name,
        "name": repo.name,
        "owner_login": repo.owner_login,
        "private": bool(repo.private),
        "default_branch": repo.default_branch,
        "archived": bool(repo.archived),
        "clone_url": repo.clone_url,
        "html_url": repo.html_url,
        "gh_updated_at": iso(repo.updated_at),
    }


def pull_values(pr: PullRequest, repo_full_name: str) -> dict[str, Any]:
    """A driver `PullRequest` as a ``pull_requests`` row (without key and bookkeeping columns)."""
    return {
        "github_id": pr.id,
        "repo_full_name": repo_full_name,
        "title": pr_title(pr.title),
        "state": pr_state(pr.state, pr.draft, pr.merged),
        "head_ref": pr.head_ref,
        "head_sha": pr.head_sha,
        "base_ref": pr.base_ref,
        "author_login": pr.author_login,
        "html_url": pr.html_url,
        "gh_updated_at": iso(pr.updated_at),
    }


def _differs(row: Any, values: dict[str, Any], fields: tuple[str, ...]) -> bool:
    return any(getattr(row, f) != values[f] for f in fields)


async def _store(conn: AsyncConnection, now: int, generation: int, fetched: _Fetched) -> dict[str, Any]:
    """Diff the fetched data against the cache and write what changed, in one transaction."""
    stats = {"generation": generation, "repos": len(fetched.repos), "pullRequests": 0, "rowsWritten": 0}
    # ---- repositories: replaced by this generation
    known_repos = {r.repo_id: r for r in (await conn.execute(sa.select(repositories))).all()}
    repo_rows = []
    for repo in fetched.repos:
        values = _repo_values(repo)
        row = known_repos.get(str(repo.id))
        if row is None or _differs(row, values, _REPO_FIELDS):
            repo_rows.append(
                {"repo_id": str(repo.id), **values, "changed_generation": generation, "written_at": now}
            )
    await _upsert(conn, repositories, repo_rows, ["repo_id"])
    gone_repos = sorted(set(known_repos) - {str(r.id) for r in fetched.repos})
    if gone_repos:
        await conn.execute(repositories.delete().where(repositories.c.repo_id.in_(gone_repos)))
        # Their PRs can no longer be seen: closed as far as this organization is concerned.
        await conn.execute(
            pull_requests.update()
            .where(pull_requests.c.repo_id.in_(gone_repos), pull_requests.c.state.in_(("open", "draft")))
            .values(state="closed", changed_generation=generation, written_at=now)
        )
    # ---- members
    if fetched.members is not None:
        await replace_members(conn, fetched.members, generation)
        stats["members"] = len(fetched.members)
    # ---- pull requests
    names = {str(r.id): r.full_name for r in fetched.repos}
    known_pulls = {
        (r.repo_id, r.number): r
        for r in (
            await conn.execute(sa.select(pull_requests).where(pull_requests.c.repo_id.in_(list(names))))
        ).all()
    }
    pull_rows = []
    seen: list[tuple[str, PullRequest]] = [(rid, pr) for rid, prs in fetched.pulls.items() for pr in prs]
    seen += [(rid, pr) for (rid, _), pr in fetched.confirmed.items() if pr is not None]
    for repo_id, pr in seen:
        values = pull_values(pr, names.get(repo_id, ""))
        row = known_pulls.get((repo_id, pr.number))
        if row is not None and (
            # A webhook already stored a newer version (the list is older than it): keep it.
            (values["gh_updated_at"] or "") < row.gh_updated_at or not _differs(row, values, PR_FIELDS)
        ):
            continue
        pull_rows.append(
            {
                "repo_id": repo_id,
                "number": pr.number,
                **values,
                "changed_generation": generation,
                "written_at": now,
            }
        )
    for (repo_id, number), read_back in fetched.confirmed.items():
        row = known_pulls.get((repo_id, number))
        if read_back is None and row is not None and row.state in ("open", "draft"):
            # Unreadable now (deleted, or beyond the read-back limit): closed for this organization.
            pull_rows.append(
                {
                    **{f: getattr(row, f) for f in PR_FIELDS},
                    "repo_id": repo_id,
                    "number": number,
                    "state": "closed",
                    "changed_generation": generation,
                    "written_at": now,
                }
            )
    await _upsert(conn, pull_requests, pull_rows, ["repo_id", "number"])
    stats["pullRequests"] = sum(len(prs) for prs in fetched.pulls.values())
    stats["rowsWritten"] = len(repo_rows) + len(pull_rows) + len(gone_repos)
    await conn.execute(meta.update().where(meta.c.id == 1).values(generation=generation, updated_at=now))
    return stats


async def replace_members(conn: AsyncConnection, team: list[Member], generation: int) -> bool:
    """Make the members table equal ``team`` (GitHub's list); True when anything changed."""
    known = {m.github_id: m for m in (await conn.execute(sa.select(members))).all()}
    rows = []
    for m in team:
        values = {"login": m.login, "avatar_url": m.avatar_url, "role": m.role}
        row = known.get(m.id)
        if row is None or _differs(row, values, ("login", "avatar_url", "role")):
            rows.append({"github_id": m.id, **values, "changed_generation": generation})
    await _upsert(conn, members, rows, ["github_id"])
    gone = set(known) - {m.id for m in team}
    if gone:
        await conn.execute(members.delete().where(members.c.github_id.in_(sorted(gone))))
    first = not (await ensure_meta(conn, 0)).members_synced
    await conn.execute(meta.update().where(meta.c.id == 1).values(members_synced=True))
    return bool(rows or gone or first)


async def _upsert(
    conn: AsyncConnection, table: sa.Table, rows: list[dict[str, Any]], keys: list[str]
) -> None:
    """Insert-or-replace ``rows`` in one executemany (all rows carry the same columns)."""
    if not rows:
        return
    stmt = sqlite_insert(table)
    columns = [c for c in rows[0] if c not in keys]
    await conn.execute(
        stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in columns}),
        rows,
    )
