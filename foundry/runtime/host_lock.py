"""One running copy of each host process per data directory.

A host process opens its hosts' databases, inboxes and sandboxes in the data directory of the node it
runs on. Two copies of it on the same files (a joined API process in another Ray namespace, a second
cluster pointed at the same volume) record each other's work twice and reap each other's sandboxes
as leftovers. Each host process therefore holds an exclusive lock on
``<data_dir>/.processes/<name>.lock`` for as long as it runs (the kernel releases it when the process
ends, even on ``kill -9``); a second copy refuses to start, naming the first.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO

#: How long a host process waits for a copy of itself in its own namespace to finish exiting (Ray
#: starts the next incarnation only once the last one is gone; this covers a slow exit).
SAME_NAMESPACE_WAIT_S = 30.0
#: …and for any other holder: an API process's `foreign_holder` holds the lock for an instant.
OTHER_WAIT_S = 2.0
#: Words every refusal contains, so that the API process that started the copy can recognise it in
#: Ray's report of the failed start.
REFUSAL_MARK = "is already served by"


class HostsConflict(Exception):
    """Another running copy of this host process holds its data directory."""


def hold_host_lock(data_dir: Path, process: str, namespace: str) -> IO[str]:
    """Lock ``process``'s files in ``data_dir`` for the life of the caller (keep the returned file
    open), or raise `HostsConflict` naming the copy that holds them."""
    folder = data_dir / ".processes"
    folder.mkdir(parents=True, exist_ok=True)
    handle = (folder / f"{process}.lock").open("a+")
    started = time.monotonic()
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = _holder(handle)
            patience = SAME_NAMESPACE_WAIT_S if holder.get("namespace") == namespace else OTHER_WAIT_S
            if time.monotonic() - started < patience:
                time.sleep(0.2)  # this process's previous incarnation still exiting, or a quick look
                continue
            handle.close()
            raise HostsConflict(
                f"the data directory {data_dir} {REFUSAL_MARK} host process {process} of Ray namespace "
                f"{holder.get('namespace', '?')!r} (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}): a second copy in namespace {namespace!r} would run the "
                "same databases and sandboxes twice. Give every API process of a deployment the same "
                "FOUNDRY_RUNTIME__NAMESPACE, or another FOUNDRY_DATA_DIR"
            ) from None
    handle.seek(0)
    handle.truncate()
    record = {"pid": os.getpid(), "namespace": namespace, "host": socket.gethostname()}
    handle.write(json.dumps(record) + "\n")
    handle.flush()
    return handle


def foreign_holder(data_dir: Path, processes: list[str], namespace: str) -> str | None:
    """Why hosts started in ``namespace`` would run twice on ``data_dir``: a host process of another
    namespace runs on this node's copy of it (None when none does).

    For an API process to ask before it writes anything there (the hosts' secrets file): the hosts
    themselves refuse to start either way, but only on their node.
    """
    for process in processes:
        path = data_dir / ".processes" / f"{process}.lock"
        try:
            handle = path.open("r")
        except FileNotFoundError:
            continue
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                continue  # nobody holds it
            except BlockingIOError:
                holder = _holder(handle)
        if holder.get("namespace") not in (None, namespace):
            return (
                f"the data directory {data_dir} {REFUSAL_MARK} host process {process} of Ray namespace "
                f"{holder.get('namespace')!r} (pid {holder.get('pid', '?')}), not of this process's "
                f"namespace {namespace!r}: its hosts would run the same databases and sandboxes twice. "
                "Give every API process of a deployment the same FOUNDRY_RUNTIME__NAMESPACE, or another "
                "FOUNDRY_DATA_DIR"
            )
    return None


def _holder(handle: IO[str]) -> dict[str, object]:
    handle.seek(0)
    try:
        record = json.loads(handle.read() or "{}")
    except ValueError:
        return {}  # the holder has not written its record yet: the refusal says "?"
    return record if isinstance(record, dict) else {}
