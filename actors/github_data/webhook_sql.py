"""The statements webhook handlers run for every delivery, each one call to the driver.

Inside the batch's transaction, straight to aiosqlite: one thread hop per statement and no
statement compilation. These were written when SQLAlchemy's aiosqlite cursor took three or four hops
(cursor, execute, fetch, close; `foundry.db.one_hop` has since made it one) plus the statement's
cache-key walk. A busy organization sends hundreds of deliveries a second and each runs
three to five of these, so they were most of the processing cost (measured with py-spy on a Ray
host). Semantics are those of the SQLAlchemy statements they replace (same columns, same conflict
targets, same updated columns); rows come back as `SimpleNamespace` with the table's column names.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from actors.github_data.schema import PR_FIELDS

PULL_COLUMNS = ("repo_id", "number", *PR_FIELDS, "changed_generation", "written_at")
#: The columns a pull request's upsert takes from the payload (besides its key and bookkeeping).
PULL_VALUES = PR_FIELDS
ITEM_VALUES = (
    "repo_id",
    "number",
    "author_login",
    "body",
    "state",
    "path",
    "line",
    "html_url",
    "gh_created_at",
    "gh_updated_at",
    "deleted",
)
_OPEN = "('open', 'draft')"

_SELECT_PULL = f"SELECT {', '.join(PULL_COLUMNS)} FROM pull_requests WHERE repo_id = ? AND number = ?"
_UPSERT_PULL = (
    f"INSERT INTO pull_requests ({', '.join(PULL_COLUMNS)}) VALUES ({', '.join('?' * len(PULL_COLUMNS))})"
    " ON CONFLICT (repo_id, number) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in (*PULL_VALUES, "written_at"))
)
_PULLS_ON_BRANCH = (
    f"SELECT {', '.join(PULL_COLUMNS)} FROM pull_requests WHERE repo_id = ? AND head_ref = ?"
    f" AND state IN {_OPEN} AND head_sha != ?"
)
_OPEN_PULLS_AT = f"SELECT number FROM pull_requests WHERE repo_id = ? AND head_sha = ? AND state IN {_OPEN}"
_CI_SIGNALS = "SELECT source, state FROM ci_checks WHERE repo_id = ? AND sha = ?"
_UPSERT_CI = (
    "INSERT INTO ci_checks (repo_id, sha, source, state, updated_at) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (repo_id, sha, source)"
    " DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at"
)
_SELECT_ITEM = "SELECT gh_updated_at, deleted FROM pr_items WHERE kind = ? AND item_id = ?"
_UPSERT_ITEM = (
    f"INSERT INTO pr_items (kind, item_id, {', '.join(ITEM_VALUES)})"
    f" VALUES ({', '.join('?' * (len(ITEM_VALUES) + 2))})"
    " ON CONFLICT (kind, item_id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in ITEM_VALUES)
)
_UPSERT_BRANCH = (
    "INSERT INTO branches (repo_id, name, head_sha, updated_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (repo_id, name)"
    " DO UPDATE SET head_sha = excluded.head_sha, updated_at = excluded.updated_at"
)


async def _run(conn: AsyncConnection, sql: str, params: Sequence[Any]) -> list[Any]:
    raw = await conn.get_raw_connection()
    return list(await raw.driver_connection.execute_fetchall(sql, params))  # type: ignore[union-attr]


def _pull(row: Sequence[Any]) -> SimpleNamespace:
    return SimpleNamespace(**dict(zip(PULL_COLUMNS, row, strict=True)))


async def load_pull(conn: AsyncConnection, repo_id: str, number: int) -> SimpleNamespace | None:
    """The stored pull request, or None."""
    rows = await _run(conn, _SELECT_PULL, (repo_id, number))
    return _pull(rows[0]) if rows else None


async def upsert_pull(
    conn: AsyncConnection, repo_id: str, number: int, values: dict[str, Any], generation: int, now: int
) -> None:
    """Insert the pull request, or update its `PULL_VALUES` and ``written_at`` (``changed_generation``
    only on insert)."""
    params = (repo_id, number, *(values[c] for c in PULL_VALUES), generation, now)
    await _run(conn, _UPSERT_PULL, params)


async def open_pulls_on_branch(
    conn: AsyncConnection, repo_id: str, branch: str, not_sha: str
) -> list[SimpleNamespace]:
    """Open (or draft) pull requests from ``branch`` whose head is known and is not ``not_sha``."""
    return [_pull(r) for r in await _run(conn, _PULLS_ON_BRANCH, (repo_id, branch, not_sha))]


async def open_pulls_at(conn: AsyncConnection, repo_id: str, sha: str) -> list[int]:
    """Numbers of the open (or draft) pull requests whose head is ``sha``."""
    return [r[0] for r in await _run(conn, _OPEN_PULLS_AT, (repo_id, sha))]


async def ci_signals(conn: AsyncConnection, repo_id: str, sha: str) -> dict[str, str]:
    """Every CI signal of commit ``sha``: source -> state."""
    return {source: state for source, state in await _run(conn, _CI_SIGNALS, (repo_id, sha))}


async def upsert_ci(conn: AsyncConnection, repo_id: str, sha: str, source: str, state: str, now: int) -> None:
    await _run(conn, _UPSERT_CI, (repo_id, sha, source, state, now))


async def stored_item(conn: AsyncConnection, kind: str, item_id: int) -> SimpleNamespace | None:
    """A review item's stored version (``gh_updated_at``, ``deleted``), or None."""
    rows = await _run(conn, _SELECT_ITEM, (kind, item_id))
    return SimpleNamespace(gh_updated_at=rows[0][0], deleted=bool(rows[0][1])) if rows else None


async def upsert_item(conn: AsyncConnection, kind: str, item_id: int, values: dict[str, Any]) -> None:
    """Insert the review item, or update its `ITEM_VALUES`."""
    await _run(conn, _UPSERT_ITEM, (kind, item_id, *(values[c] for c in ITEM_VALUES)))


async def upsert_branch(conn: AsyncConnection, repo_id: str, name: str, sha: str, now: int) -> None:
    await _run(conn, _UPSERT_BRANCH, (repo_id, name, sha, now))
