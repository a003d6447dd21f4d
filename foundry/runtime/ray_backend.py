"""The Ray backend: one async Ray actor per (role, shard) hosting many instances.

Host actors are named ``foundry.<role>.<shard>``, detached, restarted forever (``max_restarts=-1``)
and take no CPU reservation. A restarted host runs its recovery scan from ``__init__`` (Ray runs an
async actor's ``__init__`` on its event loop), so pending commands resume without a caller.
Callers retry `ActorUnavailableError` with the same command id, which makes the retry harmless.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

from foundry.config import Settings
from foundry.errors import ActorUnavailable
from foundry.logging import configure_logging
from foundry.runtime.client import Runtime
from foundry.runtime.cluster_file import clear_cluster_address, use_loopback_cluster, write_cluster_address
from foundry.runtime.events import Event, decode_batch, encode_batch
from foundry.runtime.host import Host
from foundry.runtime.host_settings import host_settings, public_settings, write_secrets
from foundry.runtime.role import available_roles, host_name, load_role
from foundry.services import build_services

log = logging.getLogger(__name__)

#: How long a caller keeps retrying a host that is restarting (a kill -9 restart takes 1-2 s here).
RETRY_WINDOW_S = 30.0
#: How long a clean stop waits for each host to close (the sandbox host stops its processes).
HOST_SHUTDOWN_S = 30.0


class HostActor:
    """The Ray actor around a `Host`. Plain class; Ray options are applied in `host_handle`."""

    def __init__(self, role: str, shard: int, config: dict[str, Any]) -> None:
        # ``config`` holds no secret (Ray keeps actor arguments readable in its control store).
        settings = host_settings(config)
        configure_logging(settings.log_level)
        self.settings = settings
        self.runtime = RayRuntime(settings)
        services = build_services(settings)
        self.host = Host(
            load_role(role, settings.runtime.extra_roles),
            shard,
            settings.runtime.shards_for(role),
            settings.data_dir,
            self.runtime,
            services,
            settings.runtime.idle_seconds,
        )
        self.host.start(recover=True)
        log.info("host %s started pid=%d", host_name(role, shard), os.getpid())

    async def send(
        self, key: str, name: str, body: Any, wait: bool, timeout: float, command_id: str
    ) -> tuple[str, Any]:
        return await self.host.send(key, name, body, wait=wait, timeout=timeout, command_id=command_id)

    async def call(self, key: str, action: str, body: Any) -> tuple[str, Any]:
        return await self.host.call(key, action, body)

    async def subscribe(self) -> AsyncIterator[bytes]:
        """The host's event batches, each as one `encode_batch` message (`RayRuntime.subscribe`)."""
        async for batch in self.host.subscribe():
            yield encode_batch(batch)

    async def awake(self) -> list[str]:
        return self.host.awake_keys()

    async def info(self) -> dict[str, Any]:
        """Process id and counters, for ``foundry actors ls`` and crash tests.

        ``deadLetters`` maps each instance of this shard that has dead letters (asleep or awake) to
        their count.
        """
        return {
            "pid": os.getpid(),
            "awake": len(self.host.awake_keys()),
            "sleeps": self.host.sleeps,
            "subscribers": self.host.hub.subscriber_count,
            "deadLetters": await self.host.dead_letter_counts(),
        }

    async def dead_letters(self, key: str) -> tuple[str, Any]:
        return await self.host.dead_letters(key)

    async def retry_dead_letters(self, key: str) -> tuple[str, Any]:
        return await self.host.retry_dead_letters(key)

    async def recovered(self) -> int:
        return await self.host.recovered()

    async def sleep_idle(self, older_than: float = 0.0) -> int:
        return await self.host.sleep_idle(older_than)

    async def shutdown(self) -> None:
        """Close the host before its process goes away: instances, then the role's resources (the
        sandbox role stops its sandbox-agent processes, which live in their own process groups and
        would otherwise outlive a killed worker)."""
        await self.host.close()


_RemoteHost = ray.remote(HostActor)


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
    """A Ray driver's (or a host's) client for every host of every role."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(dict(settings.runtime.shards), settings.runtime.default_shards)
        self.settings = settings
        self._handles: dict[tuple[str, int], Any] = {}
        self._started_ray = False

    async def start(self) -> None:
        """Connect to Ray (the configured cluster, or a new local one) and create the hosts."""
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
                )
            else:
                kwargs["address"] = address
            if address is None:
                # Every port of the local cluster on 127.0.0.1 (Ray binds all interfaces by default).
                use_loopback_cluster()
            await asyncio.to_thread(ray.init, **kwargs)
            self._started_ray = True
            if address is None:
                write_cluster_address(self.settings, ray.get_runtime_context().gcs_address)
            await asyncio.to_thread(_restrict_token_file)
        await asyncio.to_thread(write_secrets, self.settings)
        for role in available_roles() + list(self.settings.runtime.extra_roles):
            for shard in range(self.shards(role)):
                self.handle(role, shard)

    async def close(self) -> None:
        """Disconnect; when this process started the local Ray, first close every host in it.

        Hosts are detached actors, so only the process that owns the cluster shuts them down: a
        ``foundry serve`` that joined an existing cluster leaves its hosts (and their sandboxes) to it.
        """
        if self._started_ray:
            await self._shutdown_hosts()
            # Before `ray.shutdown`, which on rare occasions aborts the process (SIGABRT inside Ray's
            # core worker) after everything else is stopped: the sweep must not depend on it.
            await self._after_cluster_stop()
            clear_cluster_address(self.settings)
            # On the calling (main) thread, where the driver's core worker was created: everything is
            # closed by now, so blocking the event loop for the shutdown's second or two costs nothing.
            ray.shutdown()
            self._started_ray = False

    async def _after_cluster_stop(self) -> None:
        """Let each role release what hosts that died without closing left behind (every host has
        been asked to close and answered or timed out, so nothing of theirs is still in use)."""
        for name in available_roles() + list(self.settings.runtime.extra_roles):
            hook = load_role(name).on_cluster_stop
            if hook is None:
                continue
            try:
                await hook(self.settings)
            except Exception:
                log.exception("role %s: clean-up after the cluster stopped failed", name)

    async def _shutdown_hosts(self) -> None:
        handles = list(self._handles.items())

        async def one(name: str, handle: Any) -> None:
            try:
                await asyncio.wait_for(handle.shutdown.remote(), HOST_SHUTDOWN_S)
            except Exception:
                log.exception("host %s did not shut down cleanly", name)

        await asyncio.gather(*(one(host_name(role, shard), handle) for (role, shard), handle in handles))

    def handle(self, role: str, shard: int, *, refresh: bool = False) -> Any:
        """The Ray handle of host (role, shard), created if it does not exist yet."""
        key = (role, shard)
        if refresh or key not in self._handles:
            self._handles[key] = _RemoteHost.options(  # type: ignore[attr-defined]
                name=host_name(role, shard),
                namespace=self.settings.runtime.namespace,
                get_if_exists=True,
                lifetime="detached",
                max_restarts=-1,
                max_concurrency=10_000,
                num_cpus=0,
            ).remote(role, shard, public_settings(self.settings))
        return self._handles[key]

    async def _with_retry(self, role: str, shard: int, method: str, *args: Any) -> Any:
        deadline = time.monotonic() + RETRY_WINDOW_S
        delay = 0.05
        refresh = False
        while True:
            try:
                handle = self.handle(role, shard, refresh=refresh)
                return await getattr(handle, method).remote(*args)
            except (ActorUnavailableError, ActorDiedError, RayActorError, GetTimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise ActorUnavailable(
                        f"host {host_name(role, shard)} unreachable for {RETRY_WINDOW_S:g}s: {exc}"
                    ) from exc
                log.info("host %s unavailable (%s); retrying", host_name(role, shard), type(exc).__name__)
                refresh = isinstance(exc, ActorDiedError)
                await asyncio.sleep(delay)
                # Short waits: a restarted host answers within seconds, and every waiting caller
                # should see it back at once (a retry is one cheap actor call).
                delay = min(delay * 2, 0.25)

    async def _send(
        self, role: str, key: str, name: str, body: Any, *, wait: bool, timeout: float, command_id: str
    ) -> tuple[str, Any]:
        shard = self.shard_for(role, key)
        return await self._with_retry(role, shard, "send", key, name, body, wait, timeout, command_id)  # type: ignore[no-any-return]

    async def _call(self, role: str, key: str, action: str, body: Any) -> tuple[str, Any]:
        shard = self.shard_for(role, key)
        return await self._with_retry(role, shard, "call", key, action, body)  # type: ignore[no-any-return]

    async def _host_op(self, role: str, key: str, method: str) -> tuple[str, Any]:
        shard = self.shard_for(role, key)
        return await self._with_retry(role, shard, method, key)  # type: ignore[no-any-return]

    async def subscribe(self, role: str, shard: int) -> AsyncIterator[list[Event]]:
        """One streaming generator on the host; ends with `ActorUnavailable` if the host dies."""
        generator = self.handle(role, shard).subscribe.remote()
        try:
            async for ref in generator:
                yield decode_batch(await ref)
        except (ActorUnavailableError, ActorDiedError, RayActorError) as exc:
            raise ActorUnavailable(f"event stream of {host_name(role, shard)} broke: {exc}") from exc
        finally:
            ray.cancel(generator)

    async def awake(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for role, shard in list(self._handles):
            out[host_name(role, shard)] = await self._with_retry(role, shard, "awake")
        return out

    async def host_info(self, role: str, shard: int = 0) -> dict[str, Any]:
        return await self._with_retry(role, shard, "info")  # type: ignore[no-any-return]

    async def host_call(self, role: str, shard: int, method: str, *args: Any) -> Any:
        """Call a `HostActor` method directly (admin tools and tests)."""
        return await self._with_retry(role, shard, method, *args)
