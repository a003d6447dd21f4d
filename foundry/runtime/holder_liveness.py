"""Whether the deployment recorded as a data directory's holder is gone for good (`host_lock`).

Asked only when no host process holds the directory's lock: its hosts either ended for good or are
being restarted by Ray. A holder in another cluster is gone when that cluster's GCS refuses
connections (a machine that does not answer at all may still come back: the claim then lapses by
time); in this process's own cluster, when its namespace has no host process left (Ray lists a
restarting actor under its name; one that ended for good is gone from the list).
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import ray
import ray.util

from foundry.config import Settings
from foundry.runtime.cluster_file import local_gcs_pid
from foundry.runtime.host_lock import Deployment, HolderGone
from foundry.runtime.placement import process_name

log = logging.getLogger(__name__)

#: How long to try reaching another cluster's GCS.
CONNECT_TIMEOUT_S = 1.0
_REPORTED: set[str] = set()


def holder_gone_check(ours: Deployment) -> HolderGone:
    """The check for the hosts of ``ours`` (connected to ``ours.cluster``)."""

    def gone(holder: Deployment) -> bool:
        if holder.cluster != ours.cluster:
            if holder.gcs_pid is not None and holder.host == socket.gethostname():
                # A local cluster of this machine: its head process tells (its port may be reused).
                return not _is_gcs_process(holder.gcs_pid)
            return not _cluster_answers(holder.cluster)
        return not _namespace_has_hosts(holder.namespace)

    return gone


def local_deployment(settings: Settings, cluster: str) -> Deployment:
    """This process's deployment in ``cluster``, with the head's pid when it is a local cluster that
    a `foundry serve` on this machine started (`foundry.runtime.cluster_file`)."""
    pid = local_gcs_pid(settings.data_dir, cluster)
    host = socket.gethostname() if pid is not None else None
    return Deployment(settings.runtime.namespace, cluster, host=host, gcs_pid=pid)


def _is_gcs_process(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "gcs_server"
    except OSError:
        return False  # no such process


def _cluster_answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        log.warning("recorded holder cluster %r is not host:port; treating it as gone", address)
        return False
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            return True
    except (ConnectionRefusedError, socket.gaierror) as exc:
        if address not in _REPORTED:  # asked several times at each start
            _REPORTED.add(address)
            log.info("the cluster at %s that held the data directory is gone: %s", address, exc)
        return False
    except OSError as exc:
        # Unreachable or silent: it may come back, so its claim lapses by time only.
        log.info("the cluster at %s that held the data directory does not answer: %s", address, exc)
        return True


def _namespace_has_hosts(namespace: str) -> bool:
    prefix = process_name("")
    try:
        actors = ray.util.list_named_actors(all_namespaces=True)
    except Exception as exc:  # the cluster's head does not answer: nothing is known, so not gone
        log.warning("could not list the host processes of Ray namespace %r: %s", namespace, exc)
        return True
    return any(
        isinstance(actor, dict)
        and actor.get("namespace") == namespace
        and str(actor.get("name", "")).startswith(prefix)
        for actor in actors
    )
