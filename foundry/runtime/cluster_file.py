"""Where a running Foundry's local Ray can be joined: a small file in the data directory.

Kept free of Ray imports: Ray reads its authentication mode from the environment when it is
imported, so a command must learn the mode before it imports Ray.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from foundry.config import Settings

CLUSTER_ADDRESS_FILE = "ray-address"
#: Ray's switch for a single-machine "cluster": every Ray process then takes 127.0.0.1 as its node
#: address, and its gRPC servers (GCS, raylet, workers) listen on the loopback only instead of on
#: all interfaces. Ray reads it when imported; the processes it starts inherit it.
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def use_loopback_cluster() -> None:
    """Make this process start (or join) a Ray that lives on 127.0.0.1 only."""
    os.environ[LOOPBACK_ONLY_ENV] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        # Ray is imported already: its constant is set as the variable would have set it.
        constants.ENABLE_RAY_CLUSTER = False  # type: ignore[attr-defined]


def write_cluster_address(settings: Settings, address: str, gcs_pid: int | None = None) -> None:
    """Record how to join the local Ray this Foundry started, in its data directory.

    Operator commands (``foundry actors …``) read it to join *this* Foundry's cluster: Ray's own
    "auto" picks the newest cluster on the machine, which is another Foundry's when several run. The
    authentication mode goes with it because a new local cluster turns on token authentication by
    default, and a client that joins by address only sends its token in that mode.
    """
    path = settings.data_dir / CLUSTER_ADDRESS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "address": address,
        "authMode": os.environ.get("RAY_AUTH_MODE", ""),
        # The hosts of this data directory live in this namespace: another namespace joining with
        # the same data directory would start a second set of hosts on the same files.
        "namespace": settings.runtime.namespace,
        # The cluster's head process on this machine: once it is gone, so is the cluster (its port
        # may be anyone's by then), and the data directory is free for the next `foundry serve`.
        "gcsPid": gcs_pid,
        "host": socket.gethostname(),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def local_gcs_pid(data_dir: Path, address: str) -> int | None:
    """The pid of the head (GCS) process of the local cluster at ``address``, as the `foundry serve`
    that started it recorded it on this machine; None for a cluster started elsewhere."""
    try:
        record = json.loads((data_dir / CLUSTER_ADDRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("address") != address:
        return None
    pid = record.get("gcsPid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int):
        return None
    return pid


def clear_cluster_address(settings: Settings) -> None:
    """Forget the recorded address once the cluster is going away."""
    (settings.data_dir / CLUSTER_ADDRESS_FILE).unlink(missing_ok=True)


def cluster_address(settings: Settings) -> str | None:
    """The Ray address of the running Foundry for these settings: configured, or recorded at start.

    Also adopts the recorded authentication mode (unless the environment sets one), so that joining
    works against a cluster with token authentication.
    """
    if settings.runtime.ray_address:
        prepare_join(settings, settings.runtime.ray_address)
        return settings.runtime.ray_address
    record = _record(settings)
    if record is None:
        return None
    address = str(record["address"])
    prepare_join(settings, address)
    return address


def prepare_join(settings: Settings, address: str) -> None:
    """Set up this process (before Ray is imported) to join the cluster at ``address``.

    A local cluster started by another Foundry process (the first ``foundry serve`` of several on one
    machine) listens on the loopback only and requires its authentication token: a process joining
    it must say so to Ray, or Ray swaps 127.0.0.1 for the machine's address, where nothing listens,
    and sends no token. The mode is taken from the record that process left in the data directory,
    when the record names this address.
    """
    record = _record(settings)
    if record is not None and record.get("address") == address and record.get("authMode"):
        os.environ.setdefault("RAY_AUTH_MODE", str(record["authMode"]))
    if address.startswith("127.0.0.1:"):
        # Otherwise Ray replaces a loopback address by the machine's own, where nothing listens.
        use_loopback_cluster()


def _record(settings: Settings) -> dict[str, object] | None:
    try:
        record = json.loads((settings.data_dir / CLUSTER_ADDRESS_FILE).read_text())
    except FileNotFoundError:
        return None
    return record if isinstance(record, dict) and "address" in record else None


def namespace_conflict(settings: Settings) -> str | None:
    """Why a process joining with ``settings`` would run a second set of hosts on this data
    directory (the Foundry that started the cluster recorded another namespace), else None."""
    record = _record(settings)
    theirs = None if record is None else record.get("namespace")
    if theirs is None or theirs == settings.runtime.namespace:
        return None
    return (
        f"this process's Ray namespace (FOUNDRY_RUNTIME__NAMESPACE={settings.runtime.namespace!r}) differs "
        f"from {theirs!r}, the one whose hosts serve the data directory {settings.data_dir}: it would start "
        "a second set of hosts on the same databases and sandboxes. Use the same namespace"
    )
