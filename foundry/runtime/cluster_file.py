"""Where a running Foundry's local Ray can be joined: a small file in the data directory.

Kept free of Ray imports: Ray reads its authentication mode from the environment when it is
imported, so a command must learn the mode before it imports Ray.
"""

from __future__ import annotations

import json
import os

from foundry.config import Settings

CLUSTER_ADDRESS_FILE = "ray-address"


def write_cluster_address(settings: Settings, address: str) -> None:
    """Record how to join the local Ray this Foundry started, in its data directory.

    Operator commands (``foundry actors …``) read it to join *this* Foundry's cluster: Ray's own
    "auto" picks the newest cluster on the machine, which is another Foundry's when several run. The
    authentication mode goes with it because a new local cluster turns on token authentication by
    default, and a client that joins by address only sends its token in that mode.
    """
    path = settings.data_dir / CLUSTER_ADDRESS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"address": address, "authMode": os.environ.get("RAY_AUTH_MODE", "")}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def clear_cluster_address(settings: Settings) -> None:
    """Forget the recorded address once the cluster is going away."""
    (settings.data_dir / CLUSTER_ADDRESS_FILE).unlink(missing_ok=True)


def cluster_address(settings: Settings) -> str | None:
    """The Ray address of the running Foundry for these settings: configured, or recorded at start.

    Also adopts the recorded authentication mode (unless the environment sets one), so that joining
    works against a cluster with token authentication.
    """
    if settings.runtime.ray_address:
        return settings.runtime.ray_address
    try:
        record = json.loads((settings.data_dir / CLUSTER_ADDRESS_FILE).read_text())
    except FileNotFoundError:
        return None
    if record.get("authMode"):
        os.environ.setdefault("RAY_AUTH_MODE", record["authMode"])
    return str(record["address"])
