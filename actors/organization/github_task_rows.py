"""The PR, CI and activity columns of ``task_summaries``, and the virtual rows of pull requests.

Both a sync and a webhook delivery end here: each pull request either attaches to the real task on
its branch or keeps its virtual row (``pr-<repoId>-<number>``) current; CI results and activity land
on every row of their pull request. Split from the command handlers because this is the row-level
rule set both paths share (GitHub's ``updated_at`` orders versions, content is compared before
writing, one statement per set of changed columns).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.organization.github_commands import CiChange, PullState, Touch
from actors.organization.schema import task_summaries


def virtual_task_id(repo_id: str, number: int) -> str:
    """The id of the virtual task of pull request ``number`` in repository ``repo_id``."""
    return f"pr-{repo_id}-{number}"


@dataclass
class TaskRowChanges:
    """Task rows touched by one command, and how many row writes that took."""

    task_ids: set[str] = field(default_factory=set)
    writes: int = 0
    #: Real (not virtual) tasks whose pull request changed: task id → the PR as the task shows it.
    real_pulls: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Real tasks whose pull request changed state on GitHub: task id → the audit entry's fields.
    pull_outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def wrote(self, task_id: str, count: int = 1) -> None:
        self.task_ids.add(task_id)
        self.writes += count


def _ms(iso_value: str | None) -> int | None:
    if iso_value is None:
        return None
    return int(datetime.fromisoformat(iso_value.replace("Z", "+00:00")).timestamp() * 1000)


def _pr_columns(p: PullState) -> dict[str, Any]:
    return {
        "pr_number": p.number,
        "pr_state": p.state,
        "pr_url": p.url,
        "pr_title": p.title,
        "pr_author_login": p.author_login,
        "pr_head_sha": p.head_sha,
        "pr_updated_at": p.updated_at,
        "ci_state": p.ci_state,
    }


#: The columns of a task row that the task's own page shows (through ``mirror_pull_request``).
_TASK_PULL_COLUMNS = {
    "pr_number",
    "pr_state",
    "pr_url",
    "pr_title",
    "pr_head_sha",
    "pr_author_login",
    "pr_updated_at",
    "ci_state",
}


def _task_pull(columns: dict[str, Any]) -> dict[str, Any]:
    """The pull request as the task's ``mirror_pull_request`` takes it, from a row's columns."""
    return {
        "number": columns["pr_number"],
        "url": columns["pr_url"],
        "state": columns["pr_state"],
        "title": columns["pr_title"],
        "headSha": columns["pr_head_sha"],
        "authorLogin": columns["pr_author_login"],
        "updatedAt": columns["pr_updated_at"],
        "ciState": columns["ci_state"],
    }


def changed_columns(row: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that differ from ``row`` (every GitHub write compares first)."""
    return {k: v for k, v in values.items() if getattr(row, k) != v}


class _RowWrites:
    """Changes to task rows, written together: one statement per set of changed columns instead of
    one per row (a batch of deliveries changes dozens of rows; each statement costs a thread hop)."""

    def __init__(self) -> None:
        self._values: dict[str, dict[str, Any]] = {}

    def set(self, task_id: str, values: dict[str, Any]) -> None:
        """Change ``values`` of row ``task_id`` (later changes of a column win, as in order)."""
        self._values.setdefault(task_id, {}).update(values)

    async def flush(self, conn: AsyncConnection) -> None:
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for task_id, values in self._values.items():
            params = {"row_task_id": task_id, **{f"new_{k}": v for k, v in values.items()}}
            groups.setdefault(tuple(sorted(values)), []).append(params)
        for columns, params_list in groups.items():
            await conn.execute(
                task_summaries.update()
                .where(task_summaries.c.task_id == sa.bindparam("row_task_id"))
                .values({c: sa.bindparam(f"new_{c}") for c in columns}),
                params_list,
            )
        self._values.clear()


async def apply_pulls(
    conn: AsyncConnection, pulls: list[PullState], now: int, changes: TaskRowChanges
) -> None:
    """Attach each pull request to its real task, or keep its virtual task row current."""
    if not pulls:
        return
    rows = (
        await conn.execute(
            sa.select(task_summaries).where(task_summaries.c.repo_id.in_(sorted({p.repo_id for p in pulls})))
        )
    ).all()
    by_id = {r.task_id: r for r in rows}
    real_by_pr = {(r.repo_id, r.pr_number): r for r in rows if not r.is_virtual and r.pr_number is not None}
    real_by_branch = {
        (r.repo_id, r.branch): r for r in rows if not r.is_virtual and r.branch and r.archived_at is None
    }
    inserts: list[dict[str, Any]] = []
    inserted: set[str] = set()
    writes = _RowWrites()
    for p in pulls:
        vid = virtual_task_id(p.repo_id, p.number)
        pr_ms = _ms(p.updated_at) or now
        real = real_by_pr.get((p.repo_id, p.number)) or real_by_branch.get((p.repo_id, p.head_ref))
        if real is not None:
            if real.pr_number == p.number and real.pr_updated_at and p.updated_at < real.pr_updated_at:
                continue  # an older version of this PR (webhooks arrive out of order)
            diff = changed_columns(real, {**_pr_columns(p), "updated_at": max(real.updated_at, pr_ms)})
            if diff:
                writes.set(real.task_id, diff)
                changes.wrote(real.task_id)
                if real.pr_number == p.number and real.pr_state != p.state:
                    changes.pull_outcomes[real.task_id] = {
                        "repoId": real.repo_id,
                        "branchName": real.branch,
                        "payload": {"number": p.number, "from": real.pr_state, "to": p.state},
                    }
                if set(diff) & _TASK_PULL_COLUMNS:
                    changes.real_pulls[real.task_id] = _task_pull({**real._asdict(), **_pr_columns(p)})
            shadow = by_id.get(vid)
            if shadow is not None and shadow.is_virtual and shadow.archived_at is None:
                # The real task now carries this PR: its virtual twin leaves the sidebar.
                writes.set(vid, {"archived_at": now})
                changes.wrote(vid)
            continue
        row = by_id.get(vid)
        is_open = p.state in ("open", "draft")
        if row is None:
            if is_open and vid not in inserted:
                inserted.add(vid)
                inserts.append(
                    {
                        "task_id": vid,
                        "repo_id": p.repo_id,
                        "repo_full_name": p.repo_full_name,
                        "title": p.title.strip() or p.head_ref,
                        "status": "virtual",
                        "is_virtual": True,
                        "branch": p.head_ref,
                        **_pr_columns(p),
                        "sessions_json": "[]",
                        "created_at": now,
                        "updated_at": pr_ms,
                        "archived_at": None,
                    }
                )
            continue
        if row.pr_updated_at and p.updated_at < row.pr_updated_at:
            continue
        values: dict[str, Any] = {**_pr_columns(p), "updated_at": max(row.updated_at, pr_ms)}
        if row.is_virtual:
            values |= {
                "title": p.title.strip() or p.head_ref,
                "repo_full_name": p.repo_full_name,
                "branch": p.head_ref,
                # Reopened: back in the sidebar. Closed or merged: archived.
                "archived_at": None if is_open else (row.archived_at or now),
            }
        diff = changed_columns(row, values)
        if diff:
            writes.set(vid, diff)
            changes.wrote(vid)
    await writes.flush(conn)
    if inserts:
        await conn.execute(sqlite_insert(task_summaries).on_conflict_do_nothing(), inserts)
        for row_values in inserts:
            changes.wrote(row_values["task_id"])


async def _rows_of_pulls(
    conn: AsyncConnection, keys: set[tuple[str, int]], *columns: Any
) -> dict[tuple[str, int], list[Any]]:
    """The task rows of these pull requests, by (repository id, number), in one query: a batch of
    deliveries names dozens of them, and a query each cost a thread hop each."""
    if not keys:
        return {}
    rows = await conn.execute(
        sa.select(
            task_summaries.c.task_id, task_summaries.c.repo_id, task_summaries.c.pr_number, *columns
        ).where(
            task_summaries.c.repo_id.in_(sorted({repo_id for repo_id, _ in keys})),
            task_summaries.c.pr_number.in_(sorted({number for _, number in keys})),
        )
    )
    found: dict[tuple[str, int], list[Any]] = {}
    for r in rows:
        if (r.repo_id, r.pr_number) in keys:
            found.setdefault((r.repo_id, r.pr_number), []).append(r)
    return found


async def apply_ci(conn: AsyncConnection, ci: list[CiChange], changes: TaskRowChanges) -> None:
    """Set the CI state of each pull request's rows, unless it is of a commit no longer the head."""
    by_pull = await _rows_of_pulls(
        conn,
        {(c.repo_id, c.number) for c in ci},
        task_summaries.c.is_virtual,
        *(task_summaries.c[name] for name in sorted(_TASK_PULL_COLUMNS - {"pr_number"})),
    )
    current = {r.task_id: r.ci_state for rows in by_pull.values() for r in rows}
    writes = _RowWrites()
    for c in ci:
        for row in by_pull.get((c.repo_id, c.number), []):
            if c.head_sha and row.pr_head_sha and row.pr_head_sha != c.head_sha:
                continue  # CI of a commit that is no longer the PR's head
            if current[row.task_id] != c.state:
                current[row.task_id] = c.state
                writes.set(row.task_id, {"ci_state": c.state})
                changes.wrote(row.task_id)
                if not row.is_virtual:
                    changes.real_pulls[row.task_id] = _task_pull({**row._asdict(), "ci_state": c.state})
    await writes.flush(conn)


async def apply_touches(conn: AsyncConnection, touched: list[Touch], changes: TaskRowChanges) -> None:
    """Move the rows of each pull request's activity forward to the new activity (never back)."""
    by_pull = await _rows_of_pulls(
        conn, {(t.repo_id, t.number) for t in touched}, task_summaries.c.updated_at
    )
    current = {r.task_id: r.updated_at for rows in by_pull.values() for r in rows}
    writes = _RowWrites()
    for t in touched:
        for row in by_pull.get((t.repo_id, t.number), []):
            if t.at > current[row.task_id]:
                current[row.task_id] = t.at
                writes.set(row.task_id, {"updated_at": t.at})
                changes.wrote(row.task_id)
    await writes.flush(conn)


async def archive_virtual_of(
    conn: AsyncConnection, repo_ids: list[str] | None, now: int, changes: TaskRowChanges
) -> None:
    """Archive the virtual rows of these repositories (all repositories when None)."""
    stmt = sa.select(task_summaries.c.task_id).where(
        task_summaries.c.is_virtual.is_(True), task_summaries.c.archived_at.is_(None)
    )
    if repo_ids is not None:
        stmt = stmt.where(task_summaries.c.repo_id.in_(repo_ids))
    ids = [r.task_id for r in (await conn.execute(stmt)).all()]
    if ids:
        await conn.execute(
            task_summaries.update().where(task_summaries.c.task_id.in_(ids)).values(archived_at=now)
        )
        for task_id in ids:
            changes.wrote(task_id)
