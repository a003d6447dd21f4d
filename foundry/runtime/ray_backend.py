"""The Ray backend's client: reaches every host through the host process it is placed in.

Hosts run in `HostProcess` actors (`foundry.runtime.host_process`), several per process as
``runtime.placement`` says. Callers retry `ActorUnavailableError` with the same command id, which makes
the retry harmless; a caller inside a host process reaches the hosts of its own process directly.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from foundry import request_id
from foundry.config import Settings
from foundry.errors import ActorUnavailable, Conflict, InvalidInput
from foundry.logging import adopt_library_loggers
from foundry.runtime import local_cluster_watch
from foundry.runtime.client import Runtime, roundtrip
from foundry.runtime.cluster_file import (
    clear_cluster_address,
    namespace_conflict,
    use_loopback_cluster,
    write_cluster_address,
)
from foundry.runtime.events import Event, decode_batch
from foundry.runtime.forwarded_logs import ForwardedLogWatch
from foundry.runtime.hang_watch import HangWatch
from foundry.runtime.holder_liveness import local_deployment
from foundry.runtime.host import Host
from foundry.runtime.host_lock import Deployment
from foundry.runtime.host_process import HostProcess
from foundry.runtime.host_settings import public_settings, write_secrets
from foundry.runtime.join_checks import (
    check_cluster_key,
    check_data_dir_free,
    check_hosts_started,
    check_node_labels,
)
from foundry.runtime.node_watch import NodeWatch
from foundry.runtime.placement import (
    DATA_LABEL,
    all_hosts,
    all_roles,
    check_nodes_named,
    check_placement,
    hosts_by_process,
    node_label_of,
    process_name,
    process_of,
)
from foundry.runtime.ray_connect import init_ray
from foundry.runtime.ray_daemon_lines import route_daemon_lines_to_logging
from foundry.runtime.ray_last_words import record_log_dir
from foundry.runtime.role import host_name, load_role
from foundry.runtime.send_batcher import SendArgs, SendBatcher

log = logging.getLogger(__name__)
# Importing Ray gave its logger a handler and format of its own: its lines (the cluster started,
# joined) go through Foundry's, in the operator's one format.
adopt_library_loggers()

#: How long a caller keeps retrying a host that is restarting (a kill -9 restart takes 1-2 s here).
RETRY_WINDOW_S = 30.0
#: How long `awake` (readiness) waits for each host process.
AWAKE_TIMEOUT_S = 4.5
#: How many restarts of its host process one call rides out inside Ray before failing to this
#: module's own retry (which also renews the handle). Either way a call may run twice when its
#: process dies after running it: commands carry ids that the mailbox deduplicates, and actions are
#: reads or idempotent writes.
CALL_RESTART_RETRIES = 3
#: How long a clean stop waits for each host to close (the sandbox host stops its processes).
HOST_SHUTDOWN_S = 30.0
#: How long a stop waits for the host processes' last log lines to be forwarded (normally ~0.1 s).
FORWARDED_LOGS_S = 3.0


_RemoteProcess = ray.remote(HostProcess)
#: What a call to a host process raises while it is dead or restarting (worth a retry).
_HOST_GONE = (ActorUnavailableError, ActorDiedError, RayActorError, GetTimeoutError)


def _restrict_token_file() -> None:
    """Make Ray's authentication token file readable by this user only (with it, anyone joins the
    cluster and runs code in it)."""
    path = os.path.expanduser(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token"))
    try:
        os.chmod(path, 0o600)
        os.chmod(os.path.dirname(path), 0o700)
    except FileNotFoundError:
        pass  # token authentication is off
    except OSError as exc:
        log.warning("could not restrict Ray's token file %s: %s", path, exc)


class RayRuntime(Runtime):
    """A Ray driver's (or a host process's) client for every host of every role."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(dict(settings.runtime.shards), settings.runtime.default_shards)
        self.settings = settings
        #: Ray handles by process name.
        self._handles: dict[str, Any] = {}
        self._started_ray = False
        self._owns_cluster = False
        self._cluster_watch: asyncio.Task[None] | None = None
        #: In a host process, the hosts it runs: calls to them skip Ray (set by `HostProcess`).
        self.local_hosts: dict[tuple[str, int], Host] = {}
        #: Whether this runtime creates a host process that is not running. API processes do; a
        #: host process's own runtime (calls between hosts) does not: while Foundry stops, a host
        #: still closing would otherwise start a fresh copy of one that was just ended.
        self.creates_hosts = True
        self._nodes = NodeWatch(settings, ray.nodes)
        self._hangs = HangWatch(self._ping)
        #: Coalescers of acknowledged sends, by host process.
        self._batchers: dict[str, SendBatcher] = {}
        #: Each role's clean-up after the cluster stopped, loaded at start (see `start`).
        self._cluster_stop_hooks: list[tuple[str, Any]] = []
        self._forwarded_logs = ForwardedLogWatch()

    async def start(self) -> None:
        """Connect to Ray (the configured cluster, or a new local one) and create the host processes."""
        check_placement(self.settings)
        check_nodes_named(self.settings)
        if self.settings.runtime.ray_address:
            conflict = namespace_conflict(self.settings)
            if conflict is not None:
                raise Conflict(conflict)
        # Loaded now, not at shutdown: code replaced on disk while Foundry runs (an upgrade in place)
        # must not make the stop fail on an import of a newer version.
        self._cluster_stop_hooks = [
            (name, hook)
            for name in all_roles(self.settings)
            if (hook := load_role(name, self.settings.runtime.extra_roles).on_cluster_stop) is not None
        ]
        if not ray.is_initialized():
            address = self.settings.runtime.ray_address or None
            kwargs: dict[str, Any] = {
                "namespace": self.settings.runtime.namespace,
                # Hosts log to their worker's stderr; Ray prints those lines in this process's
                # output (prefixed with the actor and pid), so the operator reads every process.
                "log_to_driver": self.settings.runtime.forward_host_logs,
                "include_dashboard": False,
            }
            if address is None:
                # "local" starts a fresh cluster even when another one runs on this machine
                # (plain ray.init() would silently join it).
                kwargs.update(
                    address="local",
                    num_cpus=os.cpu_count() or 2,
                    object_store_memory=self.settings.runtime.object_store_bytes,
                    # Ray starts workers at nice 15: the host processes (the product's whole
                    # control plane) then lost the CPU to any busy process, measured at 6 % of a
                    # core beside one against 82 % at 0, and a restarted host took far longer to
                    # come back. Sandboxes lower their own priority instead (sandbox.launch).
                    _system_config={"worker_niceness": 0},
                    labels=_local_node_labels(self.settings),
                )
            else:
                kwargs["address"] = address
            if address is None:
                # Every port of the local cluster on 127.0.0.1 (Ray binds all interfaces by default).
                use_loopback_cluster()
            await init_ray(kwargs)
            self._started_ray = True
            node = ray._private.worker.global_worker.node
            record_log_dir(node.get_logs_dir_path() if node is not None else None)
            # Only the process that started the local cluster stops its hosts: one that joined a
            # cluster (another API process, a rolling restart) leaves them serving the others.
            self._owns_cluster = address is None
            if kwargs["log_to_driver"]:
                self._forwarded_logs.install()
                route_daemon_lines_to_logging()
            if local_cluster_watch.enabled:
                watch = (
                    local_cluster_watch.watch_local_cluster()
                    if address is None
                    else local_cluster_watch.watch_joined_cluster(address)
                )
                self._cluster_watch = asyncio.create_task(watch, name="cluster-watch")
            # Before anything is written to the data directory: another deployment's live hosts
            # may own it (the hosts themselves refuse too, but only on their node).
            self._check_data_dir_free()
            if address is None:
                write_cluster_address(
                    self.settings, ray.get_runtime_context().gcs_address, local_cluster_watch.gcs_pid()
                )
            await asyncio.to_thread(_restrict_token_file)
        self._check_data_dir_free()
        await check_node_labels(self.settings)
        self._nodes.start()
        await check_cluster_key(self.settings, RETRY_WINDOW_S)
        # Again, right before the write: the comparison can take a while, and another deployment's
        # hosts may have come back meanwhile.
        await asyncio.to_thread(self._check_data_dir_free)
        await asyncio.to_thread(write_secrets, self.settings)
        for process in hosts_by_process(self.settings):
            self._process_handle(process)
        await check_hosts_started(self.settings, self._process_handle, RETRY_WINDOW_S)

    def _check_data_dir_free(self) -> None:
        check_data_dir_free(self.settings, self.deployment())

    def deployment(self) -> Deployment:
        """This process's deployment: its Ray namespace and cluster."""
        return local_deployment(self.settings, ray.get_runtime_context().gcs_address)

    async def close(self) -> None:
        """Disconnect; when this process started the local Ray, first close every host in it.

        Host processes are detached actors, so only the process that owns the cluster shuts them
        down: a ``foundry serve`` that joined an existing cluster leaves its hosts (and their
        sandboxes) to it.
        """
        await self._nodes.close()
        if self._cluster_watch is not None:
            self._cluster_watch.cancel()
        if self._started_ray:
            if self._owns_cluster:
                await self.stop_hosts()
                # Before `ray.shutdown`, which on rare occasions aborts the process (SIGABRT inside
                # Ray's core worker) after everything else is stopped: the sweep must not depend on it.
                await self._after_cluster_stop()
                clear_cluster_address(self.settings)
            if not self._owns_cluster and local_cluster_watch.lost is not None:
                # The joined cluster's head is gone: Ray's disconnect would wait for it until Ray
                # itself ends the process a minute later. Nothing of this process is left to save.
                log.info("not disconnecting from Ray: %s", local_cluster_watch.lost)
            else:
                # On the calling (main) thread, where the driver's core worker was created: all is
                # closed by now, so blocking the event loop for the shutdown's second or two is fine.
                ray.shutdown()
            self._forwarded_logs.uninstall()
            self._started_ray = False

    async def _after_cluster_stop(self) -> None:
        """Let each role release what hosts that died without closing left behind (every host has
        been asked to close and answered or timed out, so nothing of theirs is still in use)."""
        for name, hook in self._cluster_stop_hooks:
            try:
                await hook(self.settings)
            except Exception:
                log.exception("role %s: clean-up after the cluster stopped failed", name)

    async def stop_hosts(self) -> None:
        """Close every host process of this deployment and end it (its sandboxes stop with it).

        `close` does this for the process that started the cluster; a process that joined a shared
        cluster (a test run sharing one Ray) calls it to leave nothing of its namespace running.
        """

        async def one(process: str) -> int | None:
            handle = self._process_handle(process)
            pid: int | None = None
            try:
                pid = await asyncio.wait_for(handle.shutdown.remote(), HOST_SHUTDOWN_S)
            except Exception:
                log.exception("host process %s did not shut down cleanly", process_name(process))
            try:
                ray.kill(handle, no_restart=True)
            except Exception:
                log.exception("could not end host process %s", process_name(process))
            return pid

        pids = await asyncio.gather(*(one(process) for process in hosts_by_process(self.settings)))
        self._handles.clear()
        # What the hosts logged while closing reaches the operator before Ray's log forwarding ends.
        await self._forwarded_logs.wait_for([pid for pid in pids if pid is not None], FORWARDED_LOGS_S)

    def _process_handle(self, process: str, *, refresh: bool = False) -> Any:
        """The Ray handle of host process ``process``, created if it does not exist yet (only by a
        runtime that `creates_hosts`; another raises `ActorUnavailable`)."""
        if (refresh or process not in self._handles) and not self.creates_hosts:
            try:
                self._handles[process] = ray.get_actor(
                    process_name(process), namespace=self.settings.runtime.namespace
                )
            except ValueError:
                raise ActorUnavailable(
                    f"host process {process_name(process)} is not running (Foundry is stopping, or it "
                    "was stopped); an API process starts it again"
                ) from None
        elif refresh or process not in self._handles:
            self._handles[process] = _RemoteProcess.options(  # type: ignore[attr-defined]
                name=process_name(process),
                namespace=self.settings.runtime.namespace,
                get_if_exists=True,
                lifetime="detached",
                max_restarts=-1,
                max_concurrency=10_000,
                num_cpus=0,
                **_node_options(self.settings, process),
            ).remote(process, public_settings(self.settings))
        return self._handles[process]

    def handle(self, role: str, shard: int, *, refresh: bool = False) -> Any:
        """The Ray handle of the process that runs host (role, shard)."""
        return self._process_handle(process_of(self.settings, role, shard), refresh=refresh)

    async def _with_retry(self, role: str, shard: int, method: str, *args: Any) -> Any:
        """Call ``method`` of host (role, shard) in its process, retrying while the process restarts."""
        process = process_of(self.settings, role, shard)
        return await self._retry(process, host_name(role, shard), method, role, shard, *args)

    async def _retry(self, process: str, what: str, method: str, *args: Any) -> Any:
        # The first attempt without the retry loop: nearly every call succeeds at once, and setting
        # the loop up cost about a tenth of the API process's work per webhook delivery.
        try:
            return await self._attempt(process, method, args, refresh=False)
        except _HOST_GONE as error:
            log.info("host %s unavailable (%s); retrying", what, type(error).__name__)
            refresh = isinstance(error, ActorDiedError)  # a new incarnation needs a new handle

        def note(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.info("host %s unavailable (%s); retrying", what, type(error).__name__)

        try:
            # Short, jittered waits: a restarted host answers within seconds, and every waiting
            # caller should see it back at once (a retry is one cheap actor call).
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(_HOST_GONE),
                wait=wait_random_exponential(multiplier=0.05, max=0.25),
                stop=stop_after_delay(RETRY_WINDOW_S),
                before_sleep=note,
            ):
                with attempt:
                    try:
                        return await self._attempt(process, method, args, refresh=refresh)
                    except ActorDiedError:
                        refresh = True  # a new incarnation needs a new handle
                        raise
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise ActorUnavailable(f"host {what} unreachable for {RETRY_WINDOW_S:g}s: {last}") from last
        raise AssertionError("unreachable: every attempt returns or raises")

    async def _attempt(self, process: str, method: str, args: tuple[Any, ...], *, refresh: bool) -> Any:
        """One call of ``method`` on the process's actor (a fresh handle when ``refresh``)."""
        why = await self._nodes.check(process)
        if why is not None:
            raise ActorUnavailable(why)  # not retried: the node's return is what helps
        handle = self._process_handle(process, refresh=refresh)
        # Ray itself resubmits the call to a restarted incarnation as soon as it is up (its control
        # store says so at once). Failing the call instead and retrying it here costs up to two
        # seconds more per restart: a call to a restarting actor only fails after Ray's wait for the
        # death information.
        call = getattr(handle, method).options(max_task_retries=CALL_RESTART_RETRIES)
        return await self._hangs.guard(process, self._nodes.guard(process, call.remote(*args)))

    async def _ping(self, process: str) -> None:
        await self._process_handle(process).ping.remote()

    async def _send(
        self, role: str, key: str, name: str, body: Any, *, wait: bool, timeout: float, command_id: str
    ) -> tuple[Any, ...]:
        shard = self.shard_for(role, key)
        local = self.local_hosts.get((role, shard))
        if local is not None:
            # Pickled both ways as over Ray: the callee never shares objects with its caller.
            outcome = await local.send(
                key, name, roundtrip(body), wait=wait, timeout=timeout, command_id=command_id
            )
            return roundtrip(outcome)  # type: ignore[no-any-return]
        rid = request_id.current.get()
        args = (role, shard, key, name, body, wait, timeout, command_id, rid)
        if wait:
            return await self._with_retry(role, shard, "send", *args[2:])  # type: ignore[no-any-return]
        return await self._send_batcher(role, shard).send(args)  # type: ignore[no-any-return]

    def _send_batcher(self, role: str, shard: int) -> SendBatcher:
        """The coalescer of acknowledged sends to the process that runs host (role, shard)."""
        process = process_of(self.settings, role, shard)
        batcher = self._batchers.get(process)
        if batcher is None:
            what = process_name(process)

            async def send_one(args: SendArgs) -> Any:
                return await self._retry(process, host_name(args[0], args[1]), "send", *args)

            async def send_many(sends: list[SendArgs]) -> list[Any]:
                return await self._retry(process, what, "send_many", sends)  # type: ignore[no-any-return]

            batcher = self._batchers[process] = SendBatcher(send_one, send_many)
        return batcher

    async def _call(self, role: str, key: str, action: str, body: Any) -> tuple[Any, ...]:
        shard = self.shard_for(role, key)
        local = self.local_hosts.get((role, shard))
        if local is not None:
            return roundtrip(await local.call(key, action, roundtrip(body)))  # type: ignore[no-any-return]
        return await self._with_retry(role, shard, "call", key, action, body, request_id.current.get())  # type: ignore[no-any-return]

    async def _host_op(self, role: str, key: str, method: str) -> tuple[Any, ...]:
        shard = self.shard_for(role, key)
        local = self.local_hosts.get((role, shard))
        if local is not None:
            return roundtrip(await getattr(local, method)(key))  # type: ignore[no-any-return]
        return await self._with_retry(role, shard, method, key)  # type: ignore[no-any-return]

    async def subscribe(self, role: str, shard: int) -> AsyncIterator[list[Event]]:
        """One streaming generator on the host; ends with `ActorUnavailable` if the host dies."""
        generator = self.handle(role, shard).subscribe.remote(role, shard)
        try:
            async for ref in generator:
                yield decode_batch(await ref)
        except (ActorUnavailableError, ActorDiedError, RayActorError) as exc:
            raise ActorUnavailable(f"event stream of {host_name(role, shard)} broke: {exc}") from exc
        finally:
            ray.cancel(generator)

    async def awake(self, timeout: float = AWAKE_TIMEOUT_S) -> dict[str, list[str]]:
        """Every host with its awake keys: one call per host process, all at once. Raises
        `ActorUnavailable` naming each process that gave no answer within ``timeout``."""

        async def one(process: str) -> dict[str, list[str]]:
            name = process_name(process)
            try:
                return await asyncio.wait_for(self._retry(process, name, "awake_all"), timeout)  # type: ignore[no-any-return]
            except TimeoutError:
                raise ActorUnavailable(f"host process {name} gave no answer within {timeout:g} s") from None

        answers = await asyncio.gather(
            *(one(p) for p in hosts_by_process(self.settings)), return_exceptions=True
        )
        failed = [
            str(a.detail if isinstance(a, ActorUnavailable) else a)
            for a in answers
            if isinstance(a, Exception)
        ]
        if failed:
            raise ActorUnavailable("; ".join(failed))
        out: dict[str, list[str]] = {}
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            out.update(answer)
        return out

    async def wait_host(self, role: str, shard: int) -> None:
        # A call rides a restart out inside Ray and returns as soon as the process is back (see
        # `_retry`); a stream requested meanwhile would only fail about two seconds later.
        await self._with_retry(role, shard, "info")

    async def host_info(self, role: str, shard: int = 0) -> dict[str, Any]:
        return await self._with_retry(role, shard, "info")  # type: ignore[no-any-return]

    async def host_call(self, role: str, shard: int, method: str, *args: Any) -> Any:
        """Call a `HostProcess` method for host (role, shard) (admin tools and tests)."""
        return await self._with_retry(role, shard, method, *args)

    async def process_metrics(self, timeout: float) -> dict[str, str]:
        """Each running host process's metrics text, by process name; one that does not answer in
        ``timeout`` (restarting) is left out of this scrape and logged."""

        async def one(process: str) -> tuple[str, str | None]:
            try:
                text = await asyncio.wait_for(self._process_handle(process).metrics.remote(), timeout)
            except Exception as exc:
                log.warning("metrics: host process %s did not answer: %s", process_name(process), exc)
                return process, None
            return process, str(text)

        answers = await asyncio.gather(*(one(p) for p in hosts_by_process(self.settings)))
        return {process: text for process, text in answers if text is not None}

    def hosts(self) -> list[tuple[str, int]]:
        """Every (role, shard) of this deployment."""
        return all_hosts(self.settings)


def _node_options(settings: Settings, process: str) -> dict[str, Any]:
    """Ray options that keep ``process`` on the node holding its data (none when it is not pinned)."""
    label = node_label_of(settings, process)
    return {} if label is None else {"label_selector": {DATA_LABEL: label}}


def _local_node_labels(settings: Settings) -> dict[str, str] | None:
    """The labels of a local one-node cluster: the single ``foundry-data`` value ``runtime.nodes``
    names (every pinned process then runs here), or none.

    Raises:
        InvalidInput: ``runtime.nodes`` names several values, which one node cannot all be.
    """
    labels = sorted(set(settings.runtime.nodes.values()))
    if not labels:
        return None
    if len(labels) > 1:
        raise InvalidInput(
            f"runtime.nodes names {len(labels)} data nodes ({', '.join(labels)}) but runtime.ray_address "
            "is empty, so Foundry would start a one-node local cluster; give the address of a cluster "
            "with those nodes"
        )
    return {DATA_LABEL: labels[0]}
