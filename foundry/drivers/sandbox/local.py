"""The ``local`` sandbox provider: one real ``sandbox-agent server`` process per sandbox, jailed with
bubblewrap by default (`foundry.drivers.sandbox.jail`; its directory layout is in `layout`).

The server binds 127.0.0.1 on a free port with its own random bearer token and ``--no-telemetry``.
Its environment is an allowlist — ``PATH``, ``LANG``, ``HOME=<sandbox dir>`` and the sandbox's own
XDG/TMP paths — plus exactly what the caller passes to `LocalSandboxProvider.create`; the backend's own
secrets never reach it. Agents started by the server inherit that environment.

Each server runs in its own process group (a jail: in its own PID namespace, which dies with its
leader) so that `destroy` can stop the agents it spawned as well.
A supervisor task awaits every process; an exit that was not asked for is reported through
``on_exit(sandbox_id, returncode, reason)`` with the tail of the server's log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import inspect
import logging
import os
import re
import secrets
import signal
from collections.abc import Callable, Mapping
from pathlib import Path

from foundry.drivers.sandbox import (
    ExitCallback,
    SandboxEndpoint,
    SandboxError,
    SandboxIsolationUnavailable,
    SandboxState,
    SandboxStatus,
)
from foundry.drivers.sandbox.agents import registrations
from foundry.drivers.sandbox.binary import find_binary
from foundry.drivers.sandbox.client import ProcessResult
from foundry.drivers.sandbox.jail import IsolationStatus, JailPolicy, find_bwrap, isolation_status
from foundry.drivers.sandbox.layout import (
    WORKDIR,
    brief,
    describe_returncode,
    prepare_directory,
    read_log_tail,
    remove_tree,
)
from foundry.drivers.sandbox.limits import Cgroups, SandboxLimits, encode_rlimits, limits_mechanism
from foundry.drivers.sandbox.liveness import watch_answers
from foundry.drivers.sandbox.procs import ProcessRecord, Registry, boot_id, reap_leftovers, start_ticks
from foundry.drivers.sandbox.remote_git import RemoteGitRequest, run_remote_git
from foundry.drivers.sandbox.server import (
    PortTaken,
    RunningSandbox,
    signal_group,
    tell_launcher_healthy,
    wait_healthy,
)
from foundry.drivers.sandbox.spawn import (
    HOST,
    effective_returncode,
    jail_processes,
    plan_spawn,
    server_pid,
    wait_gone,
)
from foundry.drivers.sandbox.watchdog import watch

__all__ = ["LocalSandboxProvider"]

log = logging.getLogger(__name__)

_SANDBOX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_START_ATTEMPTS = 3


class LocalSandboxProvider:
    """Runs each sandbox as a local ``sandbox-agent server`` process (see the module docstring).

    Safe to use from one event loop with concurrent calls: operations on one sandbox are serialized by
    a per-sandbox lock, different sandboxes proceed in parallel.

    Args:
        root_dir: directory holding one sub-directory per sandbox (created if missing).
        binary: the ``sandbox-agent`` executable; ``None`` locates it with `find_binary` on first use.
        agent_launchers: agent id → launcher script text, written to
            ``agent_processes/<agent>-acp`` in every sandbox (e.g. ``{"mock": launcher_script()}`` from
            `foundry.demo_agent.launcher` runs the demo agent for ``?agent=mock``).
        agents_dir: where ``foundry agents install`` put the real agents (`agents`); each sandbox
            start registers those installed then (launcher and program) and mounts their
            directories read-only in the jail. A launcher in ``agent_launchers`` wins for its id.
        on_exit: called as ``on_exit(sandbox_id, returncode, reason)`` when a server stops on its own.
        health_timeout: seconds to wait for ``GET /v1/health`` after a start (starts of 15 s were measured
            on a busy machine, hence 30 s).
        stop_grace: seconds between SIGTERM and SIGKILL in `destroy`.
        jail: how sandboxes are isolated (`JailPolicy`); the default jails each one with bubblewrap
            in its own network namespace. A jail that cannot start here fails `create` with
            `SandboxIsolationUnavailable` unless the policy says ``isolation="none"``.
        limits: what each sandbox may use (`SandboxLimits`); a sandbox that hits one is stopped and
            ``on_exit`` reports which limit it was.
    """

    name = "local"

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        binary: str | os.PathLike[str] | None = None,
        agent_launchers: Mapping[str, str] | None = None,
        *,
        on_exit: ExitCallback | None = None,
        health_timeout: float = 30.0,
        stop_grace: float = 5.0,
        jail: JailPolicy | None = None,
        limits: SandboxLimits | None = None,
        agents_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root_dir = Path(root_dir).resolve()
        self._binary = Path(binary) if binary is not None else None
        self._launchers = dict(agent_launchers or {})
        self._agents_dir = Path(agents_dir) if agents_dir is not None else None
        for agent_id in self._launchers:
            if not re.fullmatch(r"[a-z0-9_-]+", agent_id):
                raise SandboxError(f"invalid agent id {agent_id!r} for a launcher; use [a-z0-9_-]")
        self.on_exit: ExitCallback | None = on_exit
        self._health_timeout = health_timeout
        self._stop_grace = stop_grace
        self._sandboxes: dict[str, RunningSandbox] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._notifications: set[asyncio.Task[None]] = set()
        self.registry = Registry(self.root_dir)
        self.jail = jail if jail is not None else JailPolicy()
        self.limits = limits if limits is not None else SandboxLimits()
        # Cgroups are named per provider root: several Foundry instances may share a machine.
        self._cgroup_group = "foundry-" + hashlib.sha256(str(self.root_dir).encode()).hexdigest()[:12]
        self._bwrap = find_bwrap(self.jail.bwrap) if self.jail.jailed else None
        self._isolation: IsolationStatus | None = None
        if not self.jail.jailed:
            log.warning(
                "sandboxes are NOT jailed (sandbox.isolation = none): agents run as this user and can "
                "read the data directory and reach local ports root_dir=%s",
                self.root_dir,
            )

    # ------------------------------------------------------------------------------------ public API

    def sandbox_dir(self, sandbox_id: str) -> Path:
        """The directory of ``sandbox_id`` (whether or not it exists)."""
        return self.root_dir / self._checked_id(sandbox_id)

    async def isolation(self) -> IsolationStatus:
        """Whether this provider's sandboxes can start with its isolation here, and why not (the
        answer is probed by starting a tiny jail; a yes is kept, a no is probed again at the next
        call, so that a passing failure or a fix made meanwhile needs no restart). Its detail also
        says how the resource limits are enforced here."""
        if self._isolation is not None:
            return self._isolation
        status = await asyncio.to_thread(isolation_status, self.jail)
        if status.ok and self.jail.jailed and status.network != self.jail.network:
            # egress cannot start here and was not chosen explicitly: the status says why.
            self.jail = dataclasses.replace(self.jail, network=status.network, network_fallback=None)
        limits = await asyncio.to_thread(limits_mechanism, self._cgroup_group, self.limits)
        status = dataclasses.replace(status, detail=f"{status.detail}; limits: {limits}")
        if status.ok:
            self._isolation = status
        return status

    def process_id(self, sandbox_id: str) -> int | None:
        """PID of the sandbox's ``sandbox-agent`` server while this provider runs it, else ``None``."""
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None or sandbox.process.returncode is not None:
            return None
        return sandbox.server_pid or sandbox.process.pid

    async def create(
        self, sandbox_id: str, *, env: Mapping[str, str] | None = None, owner: str = ""
    ) -> SandboxEndpoint:
        """Start the sandbox's server (or return the running one) and wait until it is healthy.

        Idempotent: a running sandbox's endpoint is returned as is (``env`` is then ignored); an exited
        or not-yet-started sandbox gets a new server (new port and token) over its existing directory,
        so the checkout in ``repo/`` survives crashes and backend restarts. ``owner`` (the owning
        actor's key) is kept in the process registry so that a restarted backend knows which of its
        hosts must reap a leftover server.

        Raises:
            SandboxError: invalid id, or the server exited or stayed unhealthy for ``health_timeout``
                seconds (the message carries the tail of its log).
            SandboxBinaryNotFound: no binary was given and none is installed.
            SandboxIsolationUnavailable: the jail cannot start here (the message says what to install).
        """
        self._checked_id(sandbox_id)
        isolation = await self.isolation()
        if not isolation.ok:
            raise SandboxIsolationUnavailable(f"cannot start a jailed sandbox: {isolation.detail}")
        async with self._lock(sandbox_id):
            current = self._sandboxes.get(sandbox_id)
            if (
                current is not None
                and current.state is SandboxState.RUNNING
                and current.process.returncode is None
            ):
                return current.endpoint
            if current is not None:
                # An exited server: forget it, keep its directory.
                await self._stop(current)
                self._sandboxes.pop(sandbox_id, None)
            binary = self._binary if self._binary is not None else await asyncio.to_thread(find_binary)
            self._binary = binary
            last_error: SandboxError | None = None
            for attempt in range(1, _START_ATTEMPTS + 1):
                try:
                    sandbox = await self._start(sandbox_id, binary, env or {}, owner)
                except PortTaken as exc:
                    log.warning("sandbox port taken, retrying sandbox_id=%s attempt=%d", sandbox_id, attempt)
                    last_error = exc.error
                    continue
                self._sandboxes[sandbox_id] = sandbox
                return sandbox.endpoint
            assert last_error is not None
            raise last_error

    async def destroy(self, sandbox_id: str) -> None:
        """Stop the server (SIGTERM to its process group, SIGKILL after ``stop_grace`` s) and delete the
        sandbox directory. Idempotent; ``on_exit`` is not called.

        Raises:
            SandboxError: the directory could not be removed.
        """
        directory = self.sandbox_dir(sandbox_id)
        async with self._lock(sandbox_id):
            sandbox = self._sandboxes.pop(sandbox_id, None)
            if sandbox is not None:
                await self._stop(sandbox)
            try:
                await asyncio.to_thread(remove_tree, directory)
            except OSError as exc:
                raise SandboxError(f"could not remove sandbox directory {directory}: {exc}") from exc
        log.info("sandbox destroyed sandbox_id=%s", sandbox_id)

    async def status(self, sandbox_id: str) -> SandboxStatus:
        """The sandbox's state: ``running``/``pending`` while served, ``exited`` after a crash, while
        being stopped or with only its directory left (a backend restart), ``destroyed`` if unknown."""
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is not None and sandbox.stopping:
            # Being stopped: its endpoint may be dead before a caller uses it; a new server waits.
            return SandboxStatus(sandbox_id, SandboxState.EXITED, detail="being stopped; directory kept")
        if sandbox is not None:
            endpoint = sandbox.endpoint if sandbox.state is SandboxState.RUNNING else None
            return SandboxStatus(sandbox_id, sandbox.state, endpoint, sandbox.returncode, sandbox.detail)
        exists = await asyncio.to_thread(self.sandbox_dir(sandbox_id).is_dir)
        if exists:
            return SandboxStatus(sandbox_id, SandboxState.EXITED, detail="not running; its directory is kept")
        return SandboxStatus(sandbox_id, SandboxState.DESTROYED)

    async def remote_git(
        self, sandbox_id: str, request: RemoteGitRequest, *, timeout_ms: int
    ) -> ProcessResult:
        """Fetch into, or push from, the running sandbox's checkout, outside the agent's jail
        (`remote_git`): the token never reaches a process the agent can see.

        Raises:
            SandboxError: the sandbox is not running (its organization's remotes are known from it).
        """
        sandbox = self._sandboxes.get(self._checked_id(sandbox_id))
        if sandbox is None or sandbox.state is not SandboxState.RUNNING:
            raise SandboxError(f"sandbox {sandbox_id} is not running; git cannot reach its remote now")
        policy = self.jail.for_owner(sandbox.owner.rpartition(":")[0] or sandbox.owner)
        return await run_remote_git(policy, self._bwrap, sandbox.directory, request, timeout_ms=timeout_ms)

    async def aclose(self) -> None:
        """Stop every server this provider started; directories are kept. Idempotent."""
        sandboxes = list(self._sandboxes.values())
        self._sandboxes.clear()
        await asyncio.gather(*(self._stop(sandbox) for sandbox in sandboxes))

    async def stop(self, sandbox_id: str) -> bool:
        """Stop the sandbox's server and its agents but keep its directory (idle reclamation).

        The next `create` starts a new server over the same checkout. ``on_exit`` is not called.
        Returns False when it was not running. Idempotent.
        """
        self._checked_id(sandbox_id)
        async with self._lock(sandbox_id):
            sandbox = self._sandboxes.get(sandbox_id)
            if sandbox is None:
                return False
            # Forgotten only once its processes are gone, so that it counts against the caps until then.
            await self._stop(sandbox)
            self._sandboxes.pop(sandbox_id, None)
        log.info("sandbox stopped sandbox_id=%s", sandbox_id)
        return True

    def running_ids(self) -> list[str]:
        """Sandboxes whose server this provider runs or is starting."""
        return [
            sandbox_id
            for sandbox_id, sandbox in self._sandboxes.items()
            if sandbox.process.returncode is None and sandbox.state is not SandboxState.DESTROYED
        ]

    async def reap_leftovers(self, belongs: Callable[[str], bool] | None = None) -> list[str]:
        """Kill sandbox servers (and their agents) left behind by an earlier backend process.

        A server is a leftover when the registry lists it but this provider does not run it; it is
        killed only when it provably is the recorded process (pid and start time match). Processes
        working inside a sandbox directory that no registry entry accounts for (a crash between the
        spawn and its record) are killed too once older than a few seconds. ``belongs(owner)`` limits
        the sweep to the sandboxes of one host (the actor key's shard); records of other hosts are
        left alone. Returns the ids of the sandboxes reaped.
        """
        reaped = await asyncio.to_thread(
            reap_leftovers, self.registry, self.root_dir, set(self._sandboxes), belongs
        )
        for sandbox_id in reaped:
            log.warning("reaped a leftover sandbox server sandbox_id=%s", sandbox_id)
        return reaped

    # ------------------------------------------------------------------------------------- internals

    async def _register(self, sandbox: RunningSandbox) -> None:
        pid = sandbox.process.pid
        ticks = await asyncio.to_thread(start_ticks, pid)
        if ticks is None:
            return  # already gone; the supervisor reports it
        record = ProcessRecord(sandbox.sandbox_id, sandbox.owner, pid, ticks, boot_id())
        await asyncio.to_thread(self.registry.write, record)

    def _checked_id(self, sandbox_id: str) -> str:
        if not _SANDBOX_ID.match(sandbox_id):
            raise SandboxError(f"invalid sandbox id {sandbox_id!r}: use 1-128 characters of [A-Za-z0-9._-]")
        return sandbox_id

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    async def _start(
        self, sandbox_id: str, binary: Path, extra_env: Mapping[str, str], owner: str
    ) -> RunningSandbox:
        directory = self.root_dir / sandbox_id
        # Read at every start: an agent installed while Foundry runs reaches the next sandbox.
        agents = await asyncio.to_thread(registrations, self._agents_dir) if self._agents_dir else None
        launchers = {**(agents.launchers if agents else {}), **self._launchers}
        natives = agents.natives if agents else {}
        # Not `for_owner`: mock mode's remotes are only mounted where Foundry itself fetches and
        # pushes (`remote_git`); an agent that could write them could plant hooks that run in every
        # other task's push, or fill the disk outside its own directory's limit.
        jail = self.jail
        if agents is not None and agents.read_only:
            jail = dataclasses.replace(jail, read_only=(*jail.read_only, *agents.read_only))
        log_handle = await asyncio.to_thread(prepare_directory, directory, launchers, natives)
        cgroups = await asyncio.to_thread(Cgroups, self._cgroup_group, sandbox_id, self.limits)
        rlimits = encode_rlimits(self.limits, memory_by_cgroup=cgroups.memory)
        if not self.jail.jailed:
            # Unjailed, RLIMIT_NPROC would count every process of Foundry's own user.
            rlimits = ",".join(item for item in rlimits.split(",") if not item.startswith("nproc="))
        token = secrets.token_urlsafe(32)
        # The token never goes on a command line (any local user can read those): the launcher
        # gets it on stdin and hands it to the server without it showing (see `launch`).
        try:
            spawn = await asyncio.to_thread(
                plan_spawn,
                jail,
                self._bwrap,
                binary=binary,
                directory=directory,
                extra_env=extra_env,
                token_length=len(token),
                launchers=[*launchers.values(), *natives.values()],
                rlimits=rlimits,
                cgroups=cgroups,
            )
        except (OSError, ValueError) as exc:  # ValueError: a bad sandbox.egress_allow entry
            await asyncio.to_thread(log_handle.close)
            await asyncio.to_thread(cgroups.remove)
            raise SandboxError(f"could not prepare the server of sandbox {sandbox_id}: {exc}") from exc
        port = spawn.port
        try:
            process = await asyncio.create_subprocess_exec(
                *spawn.argv,
                cwd=str(directory / WORKDIR),
                env=spawn.env,
                stdin=asyncio.subprocess.PIPE,
                stdout=log_handle,
                stderr=asyncio.subprocess.STDOUT,
                pass_fds=spawn.pass_fds,
                # Own process group: destroy() signals the server *and* the agents it spawned (a
                # jail's processes are in a session of their own but die with its leader).
                start_new_session=True,
            )
            assert process.stdin is not None
            process.stdin.write(f"{token}\n".encode())
            await process.stdin.drain()
        except (OSError, ConnectionError) as exc:
            await asyncio.to_thread(cgroups.remove)
            raise SandboxError(
                f"could not start sandbox-agent ({binary}) for sandbox {sandbox_id}: {exc}"
            ) from exc
        finally:
            spawn.spawned()
            await asyncio.to_thread(log_handle.close)
        endpoint = SandboxEndpoint(
            base_url=f"http://{HOST}:{port}", token=token, workdir=str(directory / WORKDIR)
        )
        sandbox = RunningSandbox(sandbox_id, directory, endpoint, process, owner, cgroups=cgroups)
        await self._register(sandbox)
        sandbox.supervisor = asyncio.create_task(
            self._supervise(sandbox), name=f"sandbox-supervisor:{sandbox_id}"
        )
        log.info("sandbox starting sandbox_id=%s pid=%d port=%d", sandbox_id, process.pid, port)
        try:
            await wait_healthy(sandbox, self._health_timeout, jailed=self.jail.jailed)
        except BaseException:
            await self._stop(sandbox)
            raise
        sandbox.state = SandboxState.RUNNING
        sandbox.server_pid = await asyncio.to_thread(server_pid, process.pid)
        await tell_launcher_healthy(process)
        sandbox.watchdog = asyncio.create_task(
            watch(
                sandbox_id,
                self.limits,
                cgroups,
                directory,
                process.pid,
                lambda what: self._limit_hit(sandbox, what),
            ),
            name=f"sandbox-watchdog:{sandbox_id}",
        )
        sandbox.liveness = asyncio.create_task(
            watch_answers(sandbox, lambda what: self._limit_hit(sandbox, what)),
            name=f"sandbox-liveness:{sandbox_id}",
        )
        return sandbox

    async def _limit_hit(self, sandbox: RunningSandbox, what: str) -> None:
        # Stopped as a crash would be: the supervisor reports it through on_exit, naming the limit.
        if sandbox.stopping or sandbox.process.returncode is not None:
            return
        sandbox.limit_hit = what
        signal_group(sandbox, signal.SIGKILL)
        if sandbox.cgroups is not None:
            sandbox.limit_cleanup = asyncio.ensure_future(asyncio.to_thread(sandbox.cgroups.remove))
            await sandbox.limit_cleanup

    async def _supervise(self, sandbox: RunningSandbox) -> None:
        returncode = effective_returncode(await sandbox.process.wait(), self.jail.jailed)
        if sandbox.limit_cleanup is not None:
            # Not reported before its cgroup is gone: a sandbox started again at once under the same
            # id (the next message) would get the same cgroup, and be killed with the old one.
            await asyncio.shield(sandbox.limit_cleanup)
        sandbox.returncode = returncode
        if sandbox.stopping or sandbox.state is SandboxState.PENDING:
            # destroy()/aclose() asked for it, or create() is failing and reports it itself.
            return
        sandbox.state = SandboxState.EXITED
        self._cancel_watchdog(sandbox)
        if sandbox.limit_hit:
            reason = (
                f"sandbox {sandbox.sandbox_id} was stopped: {sandbox.limit_hit}. "
                "Its files are kept; the next message starts it again"
            )
        else:
            tail = await asyncio.to_thread(read_log_tail, sandbox.log_path)
            # For the task's page a few lines; the whole tail goes to the operator's log.
            reason = (
                f"sandbox-agent for sandbox {sandbox.sandbox_id} {describe_returncode(returncode)} "
                f"unexpectedly; last log lines:\n{brief(tail)}"
            )
            log.warning("sandbox %s log before it exited:\n%s", sandbox.sandbox_id, tail)
        sandbox.detail = reason
        log.warning("sandbox exited unexpectedly sandbox_id=%s returncode=%s", sandbox.sandbox_id, returncode)
        # Reap the agents it spawned too; with the server gone they only wait for stdin EOF.
        signal_group(sandbox, signal.SIGKILL)
        if sandbox.cgroups is not None:
            await asyncio.to_thread(sandbox.cgroups.remove)
        await asyncio.to_thread(self.registry.remove, sandbox.sandbox_id, sandbox.process.pid)
        if self.on_exit is not None:
            # Its own task: the callback may well call create()/destroy() for this sandbox, which wait
            # for this supervisor to finish.
            task = asyncio.create_task(
                self._notify_exit(self.on_exit, sandbox.sandbox_id, returncode, reason),
                name=f"sandbox-on-exit:{sandbox.sandbox_id}",
            )
            self._notifications.add(task)
            task.add_done_callback(self._notifications.discard)

    async def _notify_exit(
        self, callback: ExitCallback, sandbox_id: str, returncode: int | None, reason: str
    ) -> None:
        try:
            result = callback(sandbox_id, returncode, reason)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("sandbox on_exit callback failed sandbox_id=%s", sandbox_id)

    @staticmethod
    def _cancel_watchdog(sandbox: RunningSandbox) -> None:
        current = asyncio.current_task()
        for watcher in (sandbox.watchdog, sandbox.liveness):
            if watcher is not None and watcher is not current:
                watcher.cancel()

    async def _stop(self, sandbox: RunningSandbox) -> None:
        sandbox.stopping = True
        self._cancel_watchdog(sandbox)
        supervisor = sandbox.supervisor
        # A jail's processes are in a session of their own: they die with bubblewrap (its pid 1 is
        # killed with its parent, and the kernel then kills everything in the jail's pid namespace),
        # which is asynchronous; they are listed now to wait for exactly those below.
        jailed = await asyncio.to_thread(jail_processes, sandbox.process.pid) if self.jail.jailed else []
        if sandbox.process.returncode is None:
            signal_group(sandbox, signal.SIGTERM)
            if supervisor is not None:
                _, pending = await asyncio.wait({supervisor}, timeout=self._stop_grace)
                if pending:
                    log.warning(
                        "sandbox ignored SIGTERM, killing sandbox_id=%s grace=%s",
                        sandbox.sandbox_id,
                        self._stop_grace,
                    )
        # Always finish with SIGKILL to the group: agents may outlive a server that exited on SIGTERM.
        signal_group(sandbox, signal.SIGKILL)
        if supervisor is not None:
            await supervisor
        if jailed:
            await wait_gone(sandbox.sandbox_id, jailed)
        if sandbox.cgroups is not None:
            await asyncio.to_thread(sandbox.cgroups.remove)
        sandbox.state = SandboxState.DESTROYED
        await asyncio.to_thread(self.registry.remove, sandbox.sandbox_id, sandbox.process.pid)
