"""Reads and small helpers shared by github-data's commands, jobs and actions.

Row → wire conversions produce the shapes the organization's GitHub commands accept
(`actors.organization.github_commands`): camelCase keys, GitHub's ``updated_at`` as ISO 8601 UTC.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.github_data.schema import ci_checks, meta, pull_requests
from foundry.display_text import one_line

#: Precedence when several CI signals disagree on one commit: one failure fails the commit.
_CI_RANK = {"failure": 4, "error": 3, "pending": 2, "success": 1}
_CHECK_SUCCESS = {"success", "neutral", "skipped"}


def iso(value: Any) -> str | None:
    """GitHub's timestamps in one comparable form: ``YYYY-MM-DDTHH:MM:SSZ`` (UTC), or None.

    Accepts datetimes (PyGithub), ISO strings with ``Z`` or an offset (webhooks; some carry
    ``-04:00``) and epoch seconds (``installation`` payloads). Anything unparsable gives None.
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(float(value), tz=UTC)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    else:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_ms(value: str | None) -> int | None:
    """Epoch milliseconds of an `iso` string."""
    if value is None:
        return None
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def pr_state(state: str | None, draft: bool | None, merged: bool | None) -> str:
    """GitHub's (state, draft, merged) as one of ``open | draft | closed | merged``."""
    if merged:
        return "merged"
    if state == "closed":
        return "closed"
    return "draft" if draft else "open"


#: The longest pull request title the organization keeps (GitHub's own limit is 256).
PR_TITLE_LIMIT = 1000


def pr_title(title: str) -> str:
    """A pull request title as shown: one line, no control or direction-override characters
    (`foundry.display_text`), cut at `PR_TITLE_LIMIT`."""
    return one_line(title, PR_TITLE_LIMIT)


def check_state(status: str | None, conclusion: str | None) -> str:
    """A check run's or suite's (status, conclusion) as a CI state."""
    if status != "completed":
        return "pending"
    if conclusion in _CHECK_SUCCESS:
        return "success"
    if conclusion == "stale":  # GitHub gave up waiting for a result
        return "error"
    return "failure"  # failure, cancelled, timed_out, action_required, startup_failure


def aggregate_ci(states: Iterable[str]) -> str | None:
    """The CI state of a commit from all of its signals; None when there are none."""
    best: str | None = None
    for state in states:
        if best is None or _CI_RANK.get(state, 0) > _CI_RANK.get(best, 0):
            best = state
    return best


async def load_meta(conn: AsyncConnection) -> sa.Row[Any] | None:
    return (await conn.execute(sa.select(meta).where(meta.c.id == 1))).first()


async def ensure_meta(conn: AsyncConnection, now: int) -> sa.Row[Any]:
    """The singleton meta row, created on first use."""
    row = await load_meta(conn)
    if row is None:
        await conn.execute(sqlite_insert(meta).values(id=1, updated_at=now).on_conflict_do_nothing())
        row = await load_meta(conn)
    assert row is not None
    return row


async def update_meta(conn: AsyncConnection, now: int, **values: Any) -> None:
    await ensure_meta(conn, now)
    await conn.execute(meta.update().where(meta.c.id == 1).values(updated_at=now, **values))


async def ci_state_of(conn: AsyncConnection, repo_id: str, sha: str | None) -> str | None:
    """The aggregated CI state of one commit."""
    if not sha:
        return None
    rows = await conn.execute(
        sa.select(ci_checks.c.state).where(ci_checks.c.repo_id == repo_id, ci_checks.c.sha == sha)
    )
    return aggregate_ci(r.state for r in rows)


async def ci_states(conn: AsyncConnection) -> dict[tuple[str, str], str]:
    """Every commit's aggregated CI state, keyed by (repo id, sha); one query for a whole batch."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for r in await conn.execute(sa.select(ci_checks.c.repo_id, ci_checks.c.sha, ci_checks.c.state)):
        grouped.setdefault((r.repo_id, r.sha), []).append(r.state)
    return {key: state for key, states in grouped.items() if (state := aggregate_ci(states)) is not None}


def repo_json(row: Any) -> dict[str, Any]:
    """A repository row as the organization's ``RepoState``."""
    return {
        "repoId": row.repo_id,
        "fullName": row.full_name,
        "defaultBranch": row.default_branch,
        "private": bool(row.private),
        "archived": bool(row.archived),
        "cloneUrl": row.clone_url,
        "htmlUrl": row.html_url,
    }


def pull_json(row: Any, ci_state: str | None) -> dict[str, Any]:
    """A pull request row as the organization's ``PullState``."""
    return {
        "repoId": row.repo_id,
        "repoFullName": row.repo_full_name,
        "number": row.number,
        "title": row.title,
        "state": row.state,
        "headRef": row.head_ref,
        "headSha": row.head_sha,
        "baseRef": row.base_ref,
        "authorLogin": row.author_login,
        "url": row.html_url,
        "updatedAt": row.gh_updated_at,
        "ciState": ci_state,
    }


def member_json(row: Any) -> dict[str, Any]:
    return {"githubId": row.github_id, "login": row.login, "avatarUrl": row.avatar_url, "role": row.role}


async def load_pull(conn: AsyncConnection, repo_id: str, number: int) -> sa.Row[Any] | None:
    return (
        await conn.execute(
            sa.select(pull_requests).where(
                pull_requests.c.repo_id == repo_id, pull_requests.c.number == number
            )
        )
    ).first()


async def pull_json_of(conn: AsyncConnection, repo_id: str, number: int) -> dict[str, Any] | None:
    row = await load_pull(conn, repo_id, number)
    if row is None:
        return None
    return pull_json(row, await ci_state_of(conn, repo_id, row.head_sha))
