"""One deployment's host processes, and one copy of each, per data directory.

A host process opens its hosts' databases, inboxes and sandboxes in the data directory of the node it
runs on. Hosts of two deployments on the same files (a joined API process in another Ray namespace,
whatever its process names; a second Ray cluster pointed at the same volume) record each other's work
twice and reap each other's sandboxes as leftovers; two copies of one host process do the same. So:

* every host process holds a *shared* lock on ``<data_dir>/.deployment.lock`` for as long as it runs,
  and the deployment that holds it is recorded beside it (``.deployment.json``: its Ray namespace and
  cluster). A host process of another deployment finds it held by live hosts and refuses to start,
  naming the holder; once none holds it (every host ended, even by ``kill -9``: the kernel releases
  the lock), the next deployment takes it over;
* every host process also holds an *exclusive* lock on ``<data_dir>/.processes/<name>.lock``: a
  second copy of it waits for the first to end (a slow exit), then refuses.

An API process asks the same (`foreign_holder`) before it writes anything there.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

#: How long a host process waits for a copy of itself to finish exiting (Ray starts the next
#: incarnation only once the last one is gone; this covers a slow exit).
SAME_PROCESS_WAIT_S = 30.0
#: How long a host process looks again before it refuses: an API process's `foreign_holder` holds
#: the deployment lock for an instant, and hosts of the deployment may be starting at once.
OTHER_WAIT_S = 2.0
#: Words every refusal contains, so that the API process that started the host can recognise it in
#: Ray's report of the failed start.
REFUSAL_MARK = "is already served by"
DEPLOYMENT_LOCK = ".deployment.lock"
DEPLOYMENT_RECORD = ".deployment.json"


class HostsConflict(Exception):
    """Another deployment's hosts, or another copy of this host process, hold the data directory."""


@dataclass(frozen=True)
class Deployment:
    """Who runs hosts: the Ray namespace and the cluster (its GCS address)."""

    namespace: str
    cluster: str

    def describe(self) -> str:
        return f"Ray namespace {self.namespace!r} of the cluster at {self.cluster}"


@dataclass
class HostLocks:
    """The open lock files of a host process (kept open: closing one would release it)."""

    deployment: IO[str]
    process: IO[str]

    def close(self) -> None:
        self.process.close()
        self.deployment.close()


def hold_host_lock(data_dir: Path, process: str, ours: Deployment) -> HostLocks:
    """Lock ``data_dir`` for ``ours`` and ``process``'s files in it, for the life of the caller, or
    raise `HostsConflict` naming who holds them."""
    deployment = _hold_deployment(data_dir, ours)
    try:
        return HostLocks(deployment, _hold_process(data_dir, process, ours))
    except BaseException:
        deployment.close()
        raise


def foreign_holder(data_dir: Path, ours: Deployment) -> str | None:
    """Why hosts of ``ours`` cannot run on ``data_dir``: live hosts of another deployment hold it on
    this node (None when none does). For an API process to ask before it writes anything there."""
    path = data_dir / DEPLOYMENT_LOCK
    if not path.exists():
        return None
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None  # no host runs on it
        except BlockingIOError:
            holder = _record(data_dir)
    if holder is None or holder == ours:
        return None
    return _refusal(data_dir, holder, ours)


def _hold_deployment(data_dir: Path, ours: Deployment) -> IO[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / DEPLOYMENT_LOCK).open("a+")
    started = time.monotonic()
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # live hosts hold it: join them if they are of this deployment
        else:
            _write_record(data_dir, ours)  # nobody runs on it: this deployment takes it
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        holder = _record(data_dir)
        if holder == ours:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                pass  # held exclusively for an instant (another host taking it over, a look)
        if time.monotonic() - started >= OTHER_WAIT_S:
            handle.close()
            raise HostsConflict(_refusal(data_dir, holder, ours))
        time.sleep(0.1)


def _hold_process(data_dir: Path, process: str, ours: Deployment) -> IO[str]:
    folder = data_dir / ".processes"
    folder.mkdir(parents=True, exist_ok=True)
    handle = (folder / f"{process}.lock").open("a+")
    started = time.monotonic()
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() - started < SAME_PROCESS_WAIT_S:
                time.sleep(0.2)  # this process's previous incarnation, still exiting
                continue
            holder = _holder(handle)
            handle.close()
            raise HostsConflict(
                f"the data directory {data_dir} {REFUSAL_MARK} host process {process} (pid "
                f"{holder.get('pid', '?')} on {holder.get('host', '?')}), which did not end within "
                f"{SAME_PROCESS_WAIT_S:g} s: a second copy would run the same databases twice"
            ) from None
    handle.seek(0)
    handle.truncate()
    record = {"pid": os.getpid(), "namespace": ours.namespace, "host": socket.gethostname()}
    handle.write(json.dumps(record) + "\n")
    handle.flush()
    return handle


def _refusal(data_dir: Path, holder: Deployment | None, ours: Deployment) -> str:
    theirs = holder.describe() if holder is not None else "another deployment"
    return (
        f"the data directory {data_dir} {REFUSAL_MARK} the host processes of {theirs}, which still "
        f"run; the hosts of {ours.describe()} would run the same databases and sandboxes twice. Give "
        "every API process of a deployment the same FOUNDRY_RUNTIME__NAMESPACE and Ray cluster, or "
        "another FOUNDRY_DATA_DIR"
    )


def _write_record(data_dir: Path, ours: Deployment) -> None:
    path = data_dir / DEPLOYMENT_RECORD
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"namespace": ours.namespace, "cluster": ours.cluster}) + "\n")
    os.replace(tmp, path)


def _record(data_dir: Path) -> Deployment | None:
    try:
        record = json.loads((data_dir / DEPLOYMENT_RECORD).read_text())
        return Deployment(str(record["namespace"]), str(record["cluster"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not written yet (hosts of the deployment starting): the caller looks again


def _holder(handle: IO[str]) -> dict[str, object]:
    handle.seek(0)
    try:
        record = json.loads(handle.read() or "{}")
    except ValueError:
        return {}  # the holder has not written its record yet: the refusal says "?"
    return record if isinstance(record, dict) else {}
