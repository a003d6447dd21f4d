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

A free lock does not mean the holder is gone: Ray restarts host processes that died (a node's OOM
killer takes them all at once) and the restart can take most of a minute on a busy machine. So
the record stays the deployment's claim: its hosts touch it every `HEARTBEAT_S`, and another
deployment takes the directory over only once the holder is known to be gone (``holder_gone``: its
cluster refuses connections, or, in the same cluster, its namespace has no host process left) or its
claim lapsed (`CLAIM_LAPSES_S` without a sign of life).

An API process asks the same (`foreign_holder`) before it writes anything there.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

#: How long a host process waits for a copy of itself to finish exiting (Ray starts the next
#: incarnation only once the last one is gone; this covers a slow exit).
SAME_PROCESS_WAIT_S = 30.0
#: How long a host process looks again before it refuses: an API process's `foreign_holder` holds
#: the deployment lock for an instant, and hosts of the deployment may be starting at once.
OTHER_WAIT_S = 2.0
#: Words every refusal contains, so that the API process that started the host can recognise it in
#: Ray's report of the failed start.
REFUSAL_MARK = "is already served by"
#: How often a host process renews its deployment's claim on the data directory.
HEARTBEAT_S = 10.0
#: How long a claim holds after its hosts' last renewal when nothing tells whether they are gone:
#: longer than Ray takes to restart every host of a loaded machine.
CLAIM_LAPSES_S = 120.0
DEPLOYMENT_LOCK = ".deployment.lock"
DEPLOYMENT_RECORD = ".deployment.json"


class HostsConflict(Exception):
    """Another deployment's hosts, or another copy of this host process, hold the data directory."""


@dataclass(frozen=True)
class Deployment:
    """Who runs hosts: the Ray namespace and the cluster (its GCS address). For a cluster a
    `foundry serve` started on its own machine, also that machine and the pid of the cluster's head
    (GCS) process, which tell for sure whether that cluster still exists."""

    namespace: str
    cluster: str
    host: str | None = field(default=None, compare=False)
    gcs_pid: int | None = field(default=None, compare=False)

    def describe(self) -> str:
        return f"Ray namespace {self.namespace!r} of the cluster at {self.cluster}"


#: Whether the hosts of a deployment (the record's) are known to be gone for good; see the module doc.
HolderGone = Callable[[Deployment], bool]


@dataclass
class HostLocks:
    """The open lock files of a host process (kept open: closing one would release it), and the
    thread that renews the deployment's claim."""

    deployment: IO[str]
    process: IO[str]
    _stop: threading.Event = field(default_factory=threading.Event)

    def renew_claim(self, data_dir: Path, ours: Deployment) -> None:
        """Touch the deployment record every `HEARTBEAT_S` while these locks are held."""

        def renew() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                if _record(data_dir) == ours:
                    try:
                        os.utime(data_dir / DEPLOYMENT_RECORD)
                    except OSError as exc:
                        log.warning("could not renew the claim on %s: %s", data_dir, exc)

        threading.Thread(target=renew, name="deployment-claim", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.process.close()
        self.deployment.close()


def hold_host_lock(
    data_dir: Path, process: str, ours: Deployment, holder_gone: HolderGone | None = None
) -> HostLocks:
    """Lock ``data_dir`` for ``ours`` and ``process``'s files in it, for the life of the caller, or
    raise `HostsConflict` naming who holds them."""
    deployment = _hold_deployment(data_dir, ours, holder_gone)
    try:
        locks = HostLocks(deployment, _hold_process(data_dir, process, ours))
    except BaseException:
        deployment.close()
        raise
    locks.renew_claim(data_dir, ours)
    return locks


def foreign_holder(data_dir: Path, ours: Deployment, holder_gone: HolderGone | None = None) -> str | None:
    """Why hosts of ``ours`` cannot run on ``data_dir``: hosts of another deployment hold it on this
    node, or their claim on it still holds while they may be restarting (None when free). For an API
    process to ask before it writes anything there."""
    path = data_dir / DEPLOYMENT_LOCK
    if not path.exists():
        return None
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            live = False
        except BlockingIOError:
            live = True
        holder = _record(data_dir)
    if holder is None or holder == ours:
        return None
    if live:
        return _refusal(data_dir, holder, ours)
    if _claim_lapsed(data_dir, holder, holder_gone):
        return None
    return _restarting_refusal(data_dir, holder, ours)


def _hold_deployment(data_dir: Path, ours: Deployment, holder_gone: HolderGone | None) -> IO[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / DEPLOYMENT_LOCK).open("a+")
    started = time.monotonic()
    lapsed: bool | None = None  # asked once: it may cost a connection attempt
    while True:
        free = False
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            free = True
        except BlockingIOError:
            pass  # live hosts hold it: join them if they are of this deployment
        holder = _record(data_dir)
        if free:
            if holder is not None and holder != ours and lapsed is None:
                lapsed = _claim_lapsed(data_dir, holder, holder_gone)
            if holder is None or holder == ours or lapsed:
                _write_record(data_dir, ours)  # nobody runs on it: this deployment takes it
                holder = ours
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
            else:
                # Their hosts may be restarting: let them take it back meanwhile.
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        if holder == ours:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                pass  # held exclusively for an instant (another host taking it over, a look)
        if time.monotonic() - started >= OTHER_WAIT_S:
            handle.close()
            refusal = _refusal if not free or holder is None else _restarting_refusal
            raise HostsConflict(refusal(data_dir, holder, ours))
        time.sleep(0.1)


def _claim_lapsed(data_dir: Path, holder: Deployment, holder_gone: HolderGone | None) -> bool:
    """Whether a deployment whose hosts hold no lock lost its claim: it is known to be gone, or it
    gave no sign of life for `CLAIM_LAPSES_S`."""
    if _claim_age(data_dir) >= CLAIM_LAPSES_S:
        return True
    return holder_gone is not None and holder_gone(holder)


def _claim_age(data_dir: Path) -> float:
    try:
        return time.time() - (data_dir / DEPLOYMENT_RECORD).stat().st_mtime
    except OSError:
        return float("inf")


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


def _restarting_refusal(data_dir: Path, holder: Deployment | None, ours: Deployment) -> str:
    theirs = holder.describe() if holder is not None else "another deployment"
    return (
        f"the data directory {data_dir} {REFUSAL_MARK} the host processes of {theirs}: none runs at "
        "this moment, but that deployment is not known to be gone and Ray may be restarting them "
        f"(its claim lapses {CLAIM_LAPSES_S:g} s after their last sign of life, "
        f"{_claim_age(data_dir):.0f} s ago); the hosts of {ours.describe()} would run the same "
        "databases and sandboxes twice. Stop that deployment, or give this one another FOUNDRY_DATA_DIR"
    )


def _write_record(data_dir: Path, ours: Deployment) -> None:
    path = data_dir / DEPLOYMENT_RECORD
    tmp = path.with_suffix(".tmp")
    record: dict[str, object] = {"namespace": ours.namespace, "cluster": ours.cluster}
    if ours.gcs_pid is not None:
        record |= {"host": ours.host, "gcsPid": ours.gcs_pid}
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, path)


def _record(data_dir: Path) -> Deployment | None:
    try:
        record = json.loads((data_dir / DEPLOYMENT_RECORD).read_text())
        pid = record.get("gcsPid")
        return Deployment(
            str(record["namespace"]),
            str(record["cluster"]),
            host=str(record["host"]) if record.get("host") else None,
            gcs_pid=pid if isinstance(pid, int) else None,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not written yet (hosts of the deployment starting): the caller looks again


def _holder(handle: IO[str]) -> dict[str, object]:
    handle.seek(0)
    try:
        record = json.loads(handle.read() or "{}")
    except ValueError:
        return {}  # the holder has not written its record yet: the refusal says "?"
    return record if isinstance(record, dict) else {}
