"""The Ray actor that runs the hosts placed in one process (`foundry.runtime.placement`).

Host processes are named ``foundry.<process>``, detached, restarted forever (``max_restarts=-1``) and
take no CPU reservation. A restarted process starts every host placed in it again, and each host runs
its recovery scan at once (Ray runs an async actor's ``__init__`` on its event loop), so pending
commands resume without a caller. Hosts in one process share its services (drivers, sandbox
provider) and reach each other without a Ray hop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import ray

from foundry import metrics, request_id
from foundry.errors import ActorUnavailable
from foundry.logging import configure_logging
from foundry.open_files import raise_open_file_limit
from foundry.runtime.events import encode_batch
from foundry.runtime.forwarded_logs import CLOSED_MARKER
from foundry.runtime.gc_policy import settle_long_lived
from foundry.runtime.holder_liveness import holder_gone_check, local_deployment
from foundry.runtime.host import Host
from foundry.runtime.host_lock import HostsConflict, hold_host_lock
from foundry.runtime.host_settings import host_settings, secret_digests
from foundry.runtime.mailbox import Outcome
from foundry.runtime.placement import DATA_LABEL, hosts_by_process
from foundry.runtime.role import load_role
from foundry.runtime.term_signal import TermSignal
from foundry.services import build_services

log = logging.getLogger(__name__)

#: How often an idle host event stream says it is alive (`foundry.realtime.pumps` watches for it).
STREAM_HEARTBEAT_S = 2.0


def key_fingerprint(secret_key: str) -> str:
    """A keyed digest of ``secret_key`` that two processes compare to learn whether they share it."""
    return hmac.new(secret_key.encode(), b"foundry cluster key check", hashlib.sha256).hexdigest()[:16]


#: How `deployment_of` names the secret key; the digests of the secrets are keyed by it.
SECRET_KEY_SETTING = "secret key (FOUNDRY_SECRET_KEY)"


def deployment_of(settings: Any) -> dict[str, Any]:
    """The settings two processes of one deployment must agree on: the secret key (as a keyed
    digest), the data directory every node keeps its databases in, and which host runs where."""
    runtime = settings.runtime
    return {
        SECRET_KEY_SETTING: key_fingerprint(settings.effective_secret_key()),
        "data directory (FOUNDRY_DATA_DIR)": str(settings.data_dir),
        "host placement (FOUNDRY_RUNTIME__PLACEMENT, __DEFAULT_PROCESS)": [
            sorted(runtime.placement.items()),
            runtime.default_process,
        ],
        "shards (FOUNDRY_RUNTIME__SHARDS, __DEFAULT_SHARDS)": [
            sorted(runtime.shards.items()),
            runtime.default_shards,
        ],
        "node of each host process (FOUNDRY_RUNTIME__NODES)": sorted(runtime.nodes.items()),
        # The hosts take the GitHub App's settings from the process that starts them: another App
        # there would fail every GitHub call of the next host that starts.
        "GitHub App (FOUNDRY_GITHUB__*)": hmac.new(
            settings.effective_secret_key().encode(),
            json.dumps(
                settings.github.model_dump(mode="json", exclude={"throttle"}), sort_keys=True
            ).encode(),
            hashlib.sha256,
        ).hexdigest()[:16],
        # …and their secrets from a file every joining process rewrites.
        **{
            f"secret {name}": digest
            for name, digest in secret_digests(settings).items()
            if name != "FOUNDRY_SECRET_KEY"  # compared above
            # In mock mode each API process runs a fake Stripe of its own, with its own keys.
            and not (settings.mode == "mock" and name.startswith("FOUNDRY_STRIPE__"))
        },
    }


def _count_restart(data_dir: Path, name: str) -> int:
    """How many times Ray restarted process ``name`` (this start counted when it is a restart)."""
    path = data_dir / ".processes" / f"{name}.restarts"
    try:
        count = int(path.read_text())
    except FileNotFoundError:
        count = 0
    except (OSError, ValueError) as exc:
        log.warning("unreadable restart count %s (%s); counting from 0", path, exc)
        count = 0
    if ray.get_runtime_context().was_current_actor_reconstructed:
        count += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(count))
        log.warning("host process %s restarted by Ray (restart %d)", name, count)
    return count


class HostProcess:
    """One process's hosts. Plain class; Ray options are applied in `RayRuntime.handle`."""

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        # ``config`` holds no secret (Ray keeps actor arguments readable in its control store).
        from foundry.runtime.ray_backend import RayRuntime  # the runtime module creates these actors

        settings = host_settings(config)
        configure_logging(
            settings.log_level, settings.log_format, process=name, secrets=settings.secret_values()
        )
        # On a node started with `ray start`, the limit is that node's, not `foundry serve`'s.
        raise_open_file_limit()
        try:
            # Before any database opens: another deployment's hosts, or a second copy of this
            # process, must not touch the files.
            ours = local_deployment(settings, ray.get_runtime_context().gcs_address)
            self._locks = hold_host_lock(settings.data_dir, name, ours, holder_gone_check(ours))
        except HostsConflict as exc:
            log.error("host process %s not started: %s", name, exc)
            raise
        self.name = name
        self.settings = settings
        self.restarts = _count_restart(settings.data_dir, name)
        self.runtime = RayRuntime(settings)
        self.runtime.creates_hosts = False  # only API processes start host processes
        services = build_services(settings)
        self.hosts: dict[tuple[str, int], Host] = {}
        for role, shard in hosts_by_process(settings).get(name, []):
            host = Host(
                load_role(role, settings.runtime.extra_roles),
                shard,
                settings.runtime.shards_for(role),
                settings.data_dir,
                self.runtime,
                services,
                settings.runtime.idle_seconds,
            )
            self.hosts[(role, shard)] = host
        # Calls between hosts of this process stay in it (see `RayRuntime.local_hosts`).
        self.runtime.local_hosts = self.hosts
        for host in self.hosts.values():
            host.start(recover=True)
            log.info("host %s started pid=%d process=%s", host.name, os.getpid(), name)
        self._shutdown: asyncio.Task[int | None] | None = None
        # Ray alone would hang on SIGTERM forever (see `foundry.runtime.term_signal`).
        TermSignal(name, self.shutdown).install()
        settle_long_lived()

    def _host(self, role: str, shard: int) -> Host:
        host = self.hosts.get((role, shard))
        if host is None:
            # A caller with a different placement than this process's (a configuration change
            # while a cluster runs): a clear error instead of a silent second copy of the host.
            raise ActorUnavailable(f"host foundry.{role}.{shard} does not run in process {self.name}")
        return host

    async def send(
        self,
        role: str,
        shard: int,
        key: str,
        name: str,
        body: Any,
        wait: bool,
        timeout: float,
        command_id: str,
        rid: str | None = None,
    ) -> Outcome:
        """`Host.send`, under the caller's request id (`foundry.request_id`)."""
        with request_id.bound(rid):
            return await self._host(role, shard).send(
                key, name, body, wait=wait, timeout=timeout, command_id=command_id
            )

    async def send_many(self, sends: list[tuple[Any, ...]]) -> list[Outcome | BaseException]:
        """`send` for each of ``sends`` (its arguments), concurrently: one outcome or error each, in
        order (`foundry.runtime.send_batcher`)."""
        return await asyncio.gather(*(self.send(*args) for args in sends), return_exceptions=True)

    async def call(
        self, role: str, shard: int, key: str, action: str, body: Any, rid: str | None = None
    ) -> Outcome:
        """`Host.call`, under the caller's request id."""
        with request_id.bound(rid):
            return await self._host(role, shard).call(key, action, body)

    async def subscribe(self, role: str, shard: int) -> AsyncIterator[bytes]:
        """The host's event batches, each as one `encode_batch` message (`RayRuntime.subscribe`),
        and an empty one every `STREAM_HEARTBEAT_S` without events: the API process's subscribers
        learn from its absence that this process stopped answering."""
        async for batch in self._host(role, shard).subscribe(STREAM_HEARTBEAT_S):
            yield encode_batch(batch)

    async def awake(self, role: str, shard: int) -> list[str]:
        return self._host(role, shard).awake_keys()

    async def ping(self) -> None:
        """A trivial answer: this process's event loop runs (`foundry.runtime.hang_watch`)."""

    async def awake_all(self) -> dict[str, list[str]]:
        """Every host of this process with its awake keys (one call for a readiness check)."""
        return {host.name: host.awake_keys() for host in self.hosts.values()}

    async def info(self, role: str, shard: int) -> dict[str, Any]:
        """Process id and counters, for ``foundry actors ls`` and crash tests.

        ``deadLetters`` maps each instance of this shard that has dead letters (asleep or awake) to
        their count.
        """
        host = self._host(role, shard)
        counts = await asyncio.to_thread(host.metrics_snapshot)
        context = ray.get_runtime_context()
        node_ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        return {
            "pid": os.getpid(),
            "process": self.name,
            # Which machine holds this host's databases (they live on its local disk).
            "node": {
                "id": context.get_node_id(),
                "ip": node_ip,
                # The data volume the node holds (``runtime.nodes``), when it is labelled with one.
                "dataLabel": (context.get_node_labels() or {}).get(DATA_LABEL),
            },
            "pending": counts["pending"],
            "queued": counts["mailbox"],
            "awake": len(host.awake_keys()),
            "sleeps": host.sleeps,
            "subscribers": host.hub.subscriber_count,
            "deadLetters": await host.dead_letter_counts(),
        }

    async def dead_letters(self, role: str, shard: int, key: str) -> Outcome:
        return await self._host(role, shard).dead_letters(key)

    async def retry_dead_letters(self, role: str, shard: int, key: str) -> Outcome:
        return await self._host(role, shard).retry_dead_letters(key)

    async def recovered(self, role: str, shard: int) -> int:
        return await self._host(role, shard).recovered()

    async def sleep_idle(self, role: str, shard: int, older_than: float = 0.0) -> int:
        return await self._host(role, shard).sleep_idle(older_than)

    async def key_fingerprint(self) -> str:
        """Which secret key this process signs and verifies with, without revealing it."""
        return key_fingerprint(self.settings.effective_secret_key())

    async def deployment(self) -> dict[str, Any]:
        """What every API process that joins these hosts must share with them (`deployment_of`)."""
        return deployment_of(self.settings)

    async def metrics(self) -> str:
        """This process's metrics (Prometheus text): its hosts, commands, sandboxes and turns, plus
        how many times Ray restarted it (kept in the data dir: each restart is a new process)."""
        return metrics.local_exposition() + self._restarts_exposition()

    def _restarts_exposition(self) -> str:
        name = "foundry_host_process_restarts"
        return (
            f"# HELP {name} Times Ray restarted this host process after it died (data dir lifetime).\n"
            f"# TYPE {name} counter\n{name}_total {self.restarts}\n"
        )

    async def shutdown(self) -> int | None:
        """Close every host before the process goes away: instances, then the roles' resources (the
        sandbox role stops its sandbox-agent processes, which live in their own process groups and
        would otherwise outlive a killed worker). A second call (a cluster stop during a SIGTERM's
        close) waits for the first.

        Returns this process's pid when its last line is `CLOSED_MARKER` (the caller waits for that
        line to be forwarded), or None when the log level hides it.
        """
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._close_hosts())
        return await asyncio.shield(self._shutdown)

    async def _close_hosts(self) -> int | None:
        for host in self.hosts.values():
            try:
                await host.close()
            except Exception:
                log.exception("host %s did not close cleanly", host.name)
        if not log.isEnabledFor(logging.INFO):
            return None
        log.info("%s %s", CLOSED_MARKER, self.name)
        return os.getpid()
