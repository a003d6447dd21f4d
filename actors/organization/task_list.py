"""The organization's task list: filtered, searched and paged from its summary rows.

Pages are keyset pages, newest change first: the cursor is the last row's ``(updated_at, task_id)``,
so a task that changes while someone pages moves to the front instead of shifting every later page
(no row is shown twice or skipped because of another one's update; the changed one shows again on
the first page).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal, get_args

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from actors.organization.schema import task_summaries
from actors.organization.state import task_summary_json
from foundry.errors import InvalidInput
from foundry.runtime.context import InstanceContext

TaskStatus = Literal["virtual", "queued", "provisioning", "running", "idle", "error", "archived"]
#: The same, as values (the API checks a ``status`` filter against them).
TASK_STATUSES: tuple[str, ...] = get_args(TaskStatus)


class ListTasks(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    statuses: list[TaskStatus] = Field(default_factory=list, max_length=6)
    repo_id: str | None = Field(default=None, alias="repoId", max_length=200)
    owner_login: str | None = Field(default=None, alias="ownerLogin", max_length=100)
    #: Case-insensitive words that must all appear in the title, branch or PR title.
    query: str | None = Field(default=None, max_length=200)
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=200)


def encode_cursor(updated_at: int, task_id: str) -> str:
    return base64.urlsafe_b64encode(f"{updated_at}:{task_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        updated_at, task_id = raw.split(":", 1)
        return int(updated_at), task_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidInput(
            "cursor is not one this server gave out (pass nextCursor back as is)", ["cursor"]
        ) from None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def list_tasks(ctx: InstanceContext, cmd: ListTasks) -> dict[str, Any]:
    """One page of tasks matching the filters; archived tasks only when asked for by status."""
    t = task_summaries
    where: list[Any] = []
    # A pull request closed on GitHub archives its virtual row (``archived_at``) but keeps the
    # status "virtual": archived means either, and an archived row matches "archived" only.
    archived = sa.or_(t.c.status == "archived", t.c.archived_at.is_not(None))
    live = [s for s in cmd.statuses if s != "archived"]
    if cmd.statuses:
        matches = [sa.and_(t.c.status.in_(live), sa.not_(archived))] if live else []
        if "archived" in cmd.statuses:
            matches.append(archived)
        where.append(sa.or_(*matches))
    else:
        where.append(sa.not_(archived))
    if cmd.repo_id is not None:
        where.append(t.c.repo_id == cmd.repo_id)
    if cmd.owner_login is not None:
        where.append(sa.func.lower(t.c.owner_login) == cmd.owner_login.lower())
    for word in (cmd.query or "").split():
        pattern = f"%{_escape_like(word.lower())}%"
        where.append(
            sa.or_(
                sa.func.lower(t.c.title).like(pattern, escape="\\"),
                sa.func.lower(sa.func.coalesce(t.c.branch, "")).like(pattern, escape="\\"),
                sa.func.lower(sa.func.coalesce(t.c.pr_title, "")).like(pattern, escape="\\"),
            )
        )
    if cmd.cursor is not None:
        updated_at, task_id = decode_cursor(cmd.cursor)
        where.append(
            sa.or_(t.c.updated_at < updated_at, sa.and_(t.c.updated_at == updated_at, t.c.task_id < task_id))
        )
    query = (
        sa.select(t).where(*where).order_by(t.c.updated_at.desc(), t.c.task_id.desc()).limit(cmd.limit + 1)
    )
    async with ctx.read() as conn:
        rows = (await conn.execute(query)).all()
    page = rows[: cmd.limit]
    more = len(rows) > cmd.limit
    return {
        "tasks": [task_summary_json(r) for r in page],
        "nextCursor": encode_cursor(page[-1].updated_at, page[-1].task_id) if more else None,
    }
