"""Direct actions of the sandbox role.

``ensure`` and ``destroy`` do their provider work (starting a process, waiting up to 30 s for its
health) outside any transaction and record the outcome with short writes, so they never hold the
actor's loop. The provider serializes operations on one sandbox, which makes concurrent ``ensure``
calls safe: the second one gets the endpoint the first one started.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.sandbox.admission import Admission, Ticket, admission_for
from actors.sandbox.commands import Destroy, Empty, Ensure, Lease, Reclaim, RemoteGit
from actors.sandbox.schema import sandbox
from actors.sandbox.supervision import exit_router, reap_orphan
from foundry.drivers.sandbox import SandboxEndpoint, SandboxError, SandboxState
from foundry.drivers.sandbox.binary import find_binary
from foundry.drivers.sandbox.remote_git import RemoteGitRequest
from foundry.errors import Conflict
from foundry.logging import redact_value
from foundry.runtime.context import InstanceContext

log = logging.getLogger(__name__)

#: How long one ``ensure`` waits in the queue before answering "queued" (the task asks again, which
#: keeps its place and lets it show its position meanwhile).
QUEUE_WAIT_S = 2.0


def provider_sandbox_id(actor_key: str) -> str:
    """The provider's id of the sandbox of actor ``<orgId>:<taskId>``: the task id."""
    return actor_key.rsplit(":", 1)[-1]


async def load(conn: AsyncConnection) -> sa.Row[Any] | None:
    return (await conn.execute(sa.select(sandbox).where(sandbox.c.id == 1))).first()


async def _record(ctx: InstanceContext, **values: Any) -> None:
    now = ctx.now_ms()
    provider = ctx.services.driver("sandbox")
    async with ctx.write() as conn:
        stmt = sqlite_insert(sandbox).values(
            id=1,
            sandbox_id=provider_sandbox_id(ctx.key),
            provider=str(getattr(provider, "name", "local")),
            created_at=now,
            updated_at=now,
            **values,
        )
        await conn.execute(
            stmt.on_conflict_do_update(index_elements=["id"], set_={"updated_at": now, **values})
        )


def _known_pid(provider: Any, sandbox_id: str) -> int | None:
    """The pid of the server this process's provider runs for the sandbox (local provider only)."""
    process_id = getattr(provider, "process_id", None)
    return process_id(sandbox_id) if process_id is not None else None


async def _reap_previous(provider: Any, sandbox_id: str, row: sa.Row[Any] | None) -> None:
    """A server started by an earlier host process that died keeps running (and could keep editing
    the checkout) beside a new one: kill it before starting or destroying."""
    sandbox_dir = getattr(provider, "sandbox_dir", None)
    if row is None or row.pid is None or sandbox_dir is None or _known_pid(provider, sandbox_id) is not None:
        return
    await reap_orphan(row.pid, sandbox_dir(sandbox_id))


def _endpoint_json(
    endpoint: SandboxEndpoint, sandbox_id: str, *, started: bool, generation: int
) -> dict[str, Any]:
    return {
        "sandboxId": sandbox_id,
        "generation": generation,
        "baseUrl": endpoint.base_url,
        "token": endpoint.token,
        "workdir": endpoint.workdir,
        "started": started,
        "running": True,
    }


async def ensure(ctx: InstanceContext, cmd: Ensure) -> dict[str, Any]:
    """Return ``{sandboxId, generation, baseUrl, token, workdir, started}`` of a running sandbox,
    starting it first when it is not running (first use, after a crash, after idle reclamation or a
    restart: "restarted on next use"), or ``{queued: true, position, reason}`` while it waits for a
    slot (`actors.sandbox.admission`; the caller asks again to keep its place).

    ``generation`` counts the servers started so far; state tied to one server (ACP sessions, a crash
    report) carries it, so the task can tell that the server it knew was replaced.

    With ``lease`` the caller holds the sandbox for ``leaseSeconds`` (renew with ``renew``, end with
    ``release``); a leased sandbox is never reclaimed. Without ``wait`` a sandbox that cannot start
    at once is not queued (``position`` 0). Without ``start`` a sandbox that is not running is only
    reported (``{running: false}``).

    Only the task that owns this sandbox calls it. The endpoint's token is the
    per-sandbox bearer token; it is never stored.

    Raises:
        Conflict: the sandbox was destroyed (its task is archived).
        SandboxBinaryNotFound: sandbox-agent is not installed (the message names the fix).
        SandboxError: the server did not start or stay healthy (with the tail of its log).
    """
    provider = ctx.services.driver("sandbox")
    sandbox_id = provider_sandbox_id(ctx.key)
    runtime = ctx.self_ref.runtime
    router = exit_router(provider, runtime)
    admission = admission_for(provider, runtime, ctx.services.settings)
    async with ctx.read() as conn:
        row = await load(conn)
    if row is not None and row.state == "destroyed":
        raise Conflict(f"the sandbox of task {sandbox_id} was destroyed when the task was archived")
    while True:
        status = await provider.status(sandbox_id)
        if status.state is SandboxState.RUNNING and status.endpoint is not None:
            # Before any await: a reclaim running beside this sees the lease.
            _hold(admission, sandbox_id, cmd)
            router.track(sandbox_id, ctx.key, _known_pid(provider, sandbox_id))
            # A start running beside this one records its generation before it leaves `starting`;
            # then read the row again, so the generation returned is the running server's.
            await admission.wait_started(sandbox_id)
            async with ctx.read() as conn:
                row = await load(conn)
            if row is None or row.state != "running":
                await _record(ctx, state="running", error=None)
            generation = int(row.starts) if row is not None else 0
            return _endpoint_json(status.endpoint, sandbox_id, started=False, generation=generation)
        if not cmd.start:
            return {"sandboxId": sandbox_id, "running": False}
        ticket = await admission.admit(sandbox_id, ctx.key, QUEUE_WAIT_S if cmd.wait else 0.0)
        if ticket is Ticket.ADMITTED:
            break
        if ticket is Ticket.RETRY:
            # Somebody else is starting or stopping it right now: look again in a moment.
            await asyncio.sleep(0.05)
            continue
        if ticket is Ticket.QUEUED:
            position = admission.position(sandbox_id)
            if not cmd.wait:
                admission.leave_queue(sandbox_id)
                position = 0
            return {
                "sandboxId": sandbox_id,
                "queued": True,
                "position": position,
                "reason": admission.reason(),
            }
    try:
        return await _start(ctx, provider, sandbox_id, row, cmd)
    finally:
        admission.started(sandbox_id)


def _hold(admission: Admission, sandbox_id: str, cmd: Ensure) -> None:
    # Every use counts as activity; a lease also protects the sandbox until it expires.
    admission.lease(sandbox_id, cmd.lease or "use", cmd.lease_seconds)


async def _agent_env(ctx: InstanceContext) -> dict[str, str]:
    """The new server's extra environment: the deployment's ``agent_env``, then the organization's
    agent credentials (decrypted by the organization), which win for the same name.

    Fetched for this start only and handed straight to the provider: never stored, published or
    logged. A running server keeps the environment it started with.
    """
    env = dict(ctx.services.settings.sandbox.agent_env)
    organization_id = ctx.key.split(":", 1)[0]
    credentials: dict[str, str] = await ctx.actor("organization", organization_id).call(
        "agent_environment", {}
    )
    for value in credentials.values():
        # This host process holds the values now: its log lines must not show them either.
        redact_value(value)
    env.update(credentials)
    return env


async def _start(
    ctx: InstanceContext, provider: Any, sandbox_id: str, row: sa.Row[Any] | None, cmd: Ensure
) -> dict[str, Any]:
    admission = admission_for(provider, ctx.self_ref.runtime, ctx.services.settings)
    env = await _agent_env(ctx)
    await _reap_previous(provider, sandbox_id, row)
    await _record(ctx, state="pending")
    try:
        configured = ctx.services.settings.sandbox.binary
        if configured:
            # The provider would only report "no such file"; this names the fix (settings, bootstrap).
            await asyncio.to_thread(find_binary, configured)
        endpoint = await provider.create(sandbox_id, env=env, owner=ctx.key)
    except SandboxError as exc:
        log.warning("sandbox start failed key=%s: %s", ctx.key, exc.detail)
        await _record(ctx, state="error", error=exc.detail)
        raise
    _hold(admission, sandbox_id, cmd)
    pid = _known_pid(provider, sandbox_id)
    exit_router(provider, ctx.self_ref.runtime).track(sandbox_id, ctx.key, pid)
    async with ctx.write() as conn:
        current = await load(conn)
        # Two concurrent ensures of a stopped sandbox share one start (the provider serializes them).
        fresh = current is None or current.pid != pid or current.state != "running"
        generation = (int(current.starts) if current is not None else 0) + (1 if fresh else 0)
        await conn.execute(
            sandbox.update()
            .where(sandbox.c.id == 1)
            .values(
                state="running",
                pid=pid,
                base_url=endpoint.base_url,
                workdir=endpoint.workdir,
                error=None,
                starts=generation,
                updated_at=ctx.now_ms(),
            )
        )
    log.info(
        "sandbox running key=%s pid=%s url=%s generation=%d", ctx.key, pid, endpoint.base_url, generation
    )
    return _endpoint_json(endpoint, sandbox_id, started=True, generation=generation)


async def renew(ctx: InstanceContext, cmd: Lease) -> dict[str, Any]:
    """Extend a lease taken with ``ensure``; ``running`` is false when the sandbox is not running
    (it crashed, or was destroyed), in which case nothing is held."""
    provider = ctx.services.driver("sandbox")
    sandbox_id = provider_sandbox_id(ctx.key)
    if sandbox_id not in provider.running_ids():
        return {"running": False}
    admission_for(provider, ctx.self_ref.runtime, ctx.services.settings).lease(
        sandbox_id, cmd.lease, cmd.lease_seconds
    )
    return {"running": True}


async def release(ctx: InstanceContext, cmd: Lease) -> dict[str, Any]:
    """End a lease: once no lease is left the sandbox may be reclaimed when idle. Idempotent."""
    provider = ctx.services.driver("sandbox")
    admission_for(provider, ctx.self_ref.runtime, ctx.services.settings).release(
        provider_sandbox_id(ctx.key), cmd.lease
    )
    return {"released": True}


async def reclaim(ctx: InstanceContext, cmd: Reclaim) -> dict[str, Any]:
    """Stop the sandbox's server and agents, keeping its directory, unless a lease holds it.

    Used for idle sandboxes and to free a slot for a waiting one; the next ``ensure`` starts it again
    with a new generation, and the task resumes its sessions then.
    """
    provider = ctx.services.driver("sandbox")
    sandbox_id = provider_sandbox_id(ctx.key)
    admission = admission_for(provider, ctx.self_ref.runtime, ctx.services.settings)
    if admission.busy(sandbox_id):
        return {"stopped": False, "busy": True}
    stopped = await provider.stop(sandbox_id)
    admission.notify()
    if stopped:
        await _record(ctx, state="stopped", pid=None, base_url=None)
        log.info("sandbox reclaimed key=%s reason=%s", ctx.key, cmd.reason)
    return {"stopped": stopped, "busy": False}


async def destroy(ctx: InstanceContext, cmd: Destroy) -> dict[str, Any]:
    """Stop the sandbox's server and delete the sandbox with its checkout. Idempotent.

    The task checks for unpushed work before asking (archive); this action does not.
    """
    provider = ctx.services.driver("sandbox")
    sandbox_id = provider_sandbox_id(ctx.key)
    async with ctx.read() as conn:
        row = await load(conn)
    if row is not None and row.state == "destroyed":
        return {"destroyed": True, "already": True}
    await _reap_previous(provider, sandbox_id, row)
    await provider.destroy(sandbox_id)
    admission_for(provider, ctx.self_ref.runtime, ctx.services.settings).forget(sandbox_id)
    await _record(ctx, state="destroyed", destroyed_at=ctx.now_ms(), pid=None, base_url=None, error=None)
    log.info("sandbox destroyed key=%s reason=%s", ctx.key, cmd.reason)
    return {"destroyed": True, "already": False}


async def get_status(ctx: InstanceContext, _: Empty) -> dict[str, Any]:
    """``{state, error, starts, crashes, providerState}`` (``state`` ``none`` before the first start;
    ``stopped`` after idle reclamation)."""
    provider = ctx.services.driver("sandbox")
    async with ctx.read() as conn:
        row = await load(conn)
    live = await provider.status(provider_sandbox_id(ctx.key))
    if row is None:
        return {"state": "none", "error": None, "starts": 0, "crashes": 0, "providerState": live.state.value}
    return {
        "state": row.state,
        "error": row.error,
        "starts": row.starts,
        "crashes": row.crashes,
        "providerState": live.state.value,
        "pid": row.pid,
    }


async def remote_git(ctx: InstanceContext, cmd: RemoteGit) -> dict[str, Any]:
    """Run one git network command for the task's checkout outside the agent's jail; the process's
    outcome (``exitCode``, ``timedOut``, ``stdout``, ``stderr``)."""
    provider = ctx.services.driver("sandbox")
    request = RemoteGitRequest(op=cmd.op, url=cmd.url, token=cmd.token, sha=cmd.sha, branch=cmd.branch)
    result = await provider.remote_git(provider_sandbox_id(ctx.key), request, timeout_ms=cmd.timeout_ms)
    return {
        "exitCode": result.exit_code,
        "timedOut": result.timed_out,
        "stdout": result.stdout,
        "stderr": result.stderr,
    }
