"""How a task reaches its sandbox: the endpoint from its sandbox actor, a client, a GitHub token.

The sandbox actor owns the sandbox-agent process (in the sandbox role's host); the task talks to the
server directly over HTTP with the endpoint it hands out (DESIGN §7). Only the task calls ``ensure``:
only the task creates its sandbox (DESIGN §4).
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from actors.task.schema import task
from actors.task.state import SANDBOX_ROLE, audit, load_task, refresh
from foundry.drivers.sandbox import SandboxEndpoint
from foundry.drivers.sandbox.client import SandboxAgentClient
from foundry.drivers.sandbox.git import GitAuthor
from foundry.errors import DriverError, FoundryError
from foundry.runtime.context import InstanceContext

log = logging.getLogger(__name__)


async def ensure_sandbox(ctx: InstanceContext) -> SandboxEndpoint:
    """The endpoint of this task's running sandbox, started (or restarted after a crash) if needed.

    A successful start clears a recorded sandbox crash (the task leaves ``error``, bug 15).

    Raises:
        SandboxError / SandboxBinaryNotFound: it did not start (the message names the fix).
        Conflict: the task is archived and its sandbox destroyed.
    """
    result: dict[str, Any] = await ctx.actor(SANDBOX_ROLE, ctx.key).call("ensure", {})
    generation = int(result.get("generation") or 0)
    async with ctx.read() as conn:
        row = await load_task(conn)
    if row is not None and (row.sandbox_error is not None or row.sandbox_generation != generation):
        async with ctx.write() as conn:
            current = await load_task(conn)
            if current is not None and generation >= current.sandbox_generation:
                cleared = current.sandbox_error is not None
                await conn.execute(
                    task.update()
                    .where(task.c.id == 1)
                    .values(sandbox_error=None, sandbox_generation=generation)
                )
                if cleared:
                    audit(ctx, current, "task.sandbox_restarted", {"generation": generation})
                    await refresh(ctx, conn)
    return SandboxEndpoint(base_url=result["baseUrl"], token=result.get("token"), workdir=result["workdir"])


def client_for(endpoint: SandboxEndpoint) -> SandboxAgentClient:
    return SandboxAgentClient(endpoint)


async def installation_token(ctx: InstanceContext, row: sa.Row[Any]) -> str | None:
    """A short-lived installation token narrowed to this task's repository, or None when the
    organization has no installation (a public remote, or a local ``file://`` one in mock mode).

    The token reaches git only through a per-command credential helper (never the sandbox's
    environment or ``.git/config``; bugs 12 and 23).

    Raises:
        DriverError / NotFound: GitHub refused (e.g. the App was uninstalled).
    """
    if row.installation_id is None or "github" not in ctx.services.drivers:
        return None
    repository_ids = [int(row.repo_id)] if str(row.repo_id).isdigit() else None
    try:
        token = await ctx.services.driver("github").get_installation_token(
            row.installation_id, repository_ids
        )
    except FoundryError as exc:
        raise DriverError(
            f"could not get a GitHub token for {row.repo_full_name} (installation {row.installation_id}): "
            f"{exc.detail}; check that the GitHub App is installed on the organization and can access "
            "this repository",
            getattr(exc, "status", None),
            "github",
        ) from exc
    return str(token.token)


def author_for(row: sa.Row[Any]) -> GitAuthor:
    """Commits Foundry makes on the task's behalf are attributed to the task owner (spec §4.13)."""
    login = row.owner_login or "foundry"
    return GitAuthor(login, f"{login}@users.noreply.github.com")
