"""How a task reaches its sandbox: the endpoint from its sandbox actor, a client, a GitHub token.

The sandbox actor owns the sandbox-agent process (in the sandbox role's host); the task talks to the
server directly over HTTP with the endpoint it hands out. Only the task calls ``ensure``:
only the task creates its sandbox.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from actors.task.schema import task
from actors.task.state import SANDBOX_ROLE, audit, load_task, refresh
from foundry.drivers.sandbox import SandboxEndpoint
from foundry.drivers.sandbox.client import ProcessResult, SandboxAgentClient
from foundry.drivers.sandbox.git import GitAuthor, RemoteGit
from foundry.errors import Conflict, DriverError, FoundryError
from foundry.runtime.context import InstanceContext

log = logging.getLogger(__name__)

#: A job's hold on its sandbox lasts this long unless renewed; it is renewed every `LEASE_RENEW_S`.
LEASE_S = 20.0
LEASE_RENEW_S = 5.0


@dataclass(frozen=True)
class SandboxInfo:
    """A running sandbox as the task sees it: how to reach it and which server start it is."""

    endpoint: SandboxEndpoint
    #: Counts the sandbox's server starts; ACP sessions belong to one generation (see `jobs`).
    generation: int


async def acquire_sandbox(
    ctx: InstanceContext, *, lease: str | None = None, wait: bool = True
) -> SandboxInfo:
    """This task's running sandbox, started (or restarted after a crash, idle reclamation or a
    restart) if needed, waiting in the node's FIFO queue when the sandbox caps are reached.

    While queued the task shows ``queued`` with its position and the reason. A successful start
    clears a recorded sandbox crash (the task leaves ``error``).

    Args:
        lease: hold the sandbox under this lease id (see `SandboxLease`); otherwise a short one.
        wait: when false, a sandbox that cannot start at once raises `Conflict` instead of waiting.

    Raises:
        SandboxError / SandboxBinaryNotFound: it did not start (the message names the fix).
        Conflict: the task is archived and its sandbox destroyed, or (``wait`` false) it is queued.
    """
    body: dict[str, Any] = {"wait": wait, "leaseSeconds": LEASE_S}
    if lease is not None:
        body["lease"] = lease
    while True:
        result: dict[str, Any] = await ctx.actor(SANDBOX_ROLE, ctx.key).call("ensure", body)
        if not result.get("queued"):
            break
        if not wait:
            raise Conflict(
                f"the sandbox is not running and no sandbox slot is free ({result.get('reason')}); "
                "try again shortly"
            )
        await _record_queue(ctx, int(result.get("position") or 0), str(result.get("reason") or ""))
    generation = int(result.get("generation") or 0)
    async with ctx.read() as conn:
        row = await load_task(conn)
    if row is not None and (
        row.sandbox_error is not None
        or row.sandbox_generation != generation
        or row.sandbox_queue_position is not None
    ):
        async with ctx.write() as conn:
            current = await load_task(conn)
            if current is not None and generation >= current.sandbox_generation:
                cleared = current.sandbox_error is not None
                await conn.execute(
                    task.update()
                    .where(task.c.id == 1)
                    .values(
                        sandbox_error=None,
                        sandbox_generation=generation,
                        sandbox_queue_position=None,
                        sandbox_queue_reason=None,
                    )
                )
                if cleared:
                    audit(ctx, current, "task.sandbox_restarted", {"generation": generation})
                await refresh(ctx, conn)
    endpoint = SandboxEndpoint(
        base_url=result["baseUrl"], token=result.get("token"), workdir=result["workdir"]
    )
    return SandboxInfo(endpoint, generation)


def _info(result: dict[str, Any]) -> SandboxInfo:
    endpoint = SandboxEndpoint(
        base_url=result["baseUrl"], token=result.get("token"), workdir=result["workdir"]
    )
    return SandboxInfo(endpoint, int(result.get("generation") or 0))


async def ensure_sandbox(ctx: InstanceContext, *, wait: bool = False) -> SandboxEndpoint:
    """The endpoint of this task's running sandbox (see `acquire_sandbox`); by default it does not
    wait in the queue, which suits requests that a user waits on (diff, files, a pull request)."""
    return (await acquire_sandbox(ctx, wait=wait)).endpoint


async def running_sandbox(ctx: InstanceContext) -> SandboxInfo | None:
    """This task's sandbox if it runs right now, else None; never starts one (to shut an agent
    down, there is nothing to do when its sandbox is not running)."""
    result: dict[str, Any] = await ctx.actor(SANDBOX_ROLE, ctx.key).call("ensure", {"start": False})
    if not result.get("running"):
        return None
    endpoint = SandboxEndpoint(
        base_url=result["baseUrl"], token=result.get("token"), workdir=result["workdir"]
    )
    return SandboxInfo(endpoint, int(result.get("generation") or 0))


async def _record_queue(ctx: InstanceContext, position: int, reason: str) -> None:
    async with ctx.write() as conn:
        row = await load_task(conn)
        if row is None or (row.sandbox_queue_position == position and row.sandbox_queue_reason == reason):
            return
        await conn.execute(
            task.update()
            .where(task.c.id == 1)
            .values(sandbox_queue_position=position, sandbox_queue_reason=reason)
        )
        await refresh(ctx, conn)


class SandboxLease:
    """Holds this task's sandbox while a job uses it, so that it is never reclaimed mid-use.

    `acquire` takes (or re-takes) the lease with the sandbox and starts renewing it every
    `LEASE_RENEW_S`; `close` releases it. A holder that dies simply stops renewing: the lease
    expires after `LEASE_S`.
    """

    def __init__(self, ctx: InstanceContext, name: str) -> None:
        self.ctx = ctx
        self.lease_id = f"{name}:{uuid.uuid4().hex[:8]}"
        self._renewer: asyncio.Task[None] | None = None

    async def acquire(self) -> SandboxInfo:
        info = await acquire_sandbox(self.ctx, lease=self.lease_id)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew(), name=f"sandbox-lease:{self.lease_id}")
        return info

    async def _renew(self) -> None:
        body = {"lease": self.lease_id, "leaseSeconds": LEASE_S}
        while True:
            await asyncio.sleep(LEASE_RENEW_S)
            try:
                await self.ctx.actor(SANDBOX_ROLE, self.ctx.key).call("renew", body)
            except FoundryError as exc:
                log.warning("could not renew sandbox lease %s of %s: %s", self.lease_id, self.ctx.key, exc)

    async def close(self) -> None:
        renewer, self._renewer = self._renewer, None
        if renewer is None:
            return
        renewer.cancel()
        await asyncio.gather(renewer, return_exceptions=True)
        try:
            await self.ctx.actor(SANDBOX_ROLE, self.ctx.key).call("release", {"lease": self.lease_id})
        except FoundryError as exc:
            # It expires on its own after LEASE_S.
            log.info("could not release sandbox lease %s of %s: %s", self.lease_id, self.ctx.key, exc)


def client_for(endpoint: SandboxEndpoint) -> SandboxAgentClient:
    return SandboxAgentClient(endpoint)


def remote_git_for(ctx: InstanceContext) -> RemoteGit:
    """How this task's git fetches and pushes: through its sandbox actor, which runs them outside the
    agent's jail (the token never reaches a process the agent can see)."""

    async def run(body: dict[str, Any]) -> ProcessResult:
        answer: dict[str, Any] = await ctx.actor(SANDBOX_ROLE, ctx.key).call("remote_git", body)
        return ProcessResult(
            exit_code=answer["exitCode"],
            timed_out=bool(answer["timedOut"]),
            stdout=str(answer["stdout"]),
            stderr=str(answer["stderr"]),
        )

    return run


async def installation_token(ctx: InstanceContext, row: sa.Row[Any]) -> str | None:
    """A short-lived installation token narrowed to this task's repository, or None when the
    organization has no installation (a public remote, or a local ``file://`` one in mock mode).

    The token reaches git only outside the agent's jail (`remote_git_for`), through a per-command
    credential helper: never the sandbox, its environment or ``.git/config``.

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
    """Commits Foundry makes on the task's behalf are attributed to the task owner."""
    login = row.owner_login or "foundry"
    return GitAuthor(login, f"{login}@users.noreply.github.com")
