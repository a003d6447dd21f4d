"""One `foundry serve` owns a data directory.

A second server started on the same directory (an operator's second terminal, a service manager
starting the new one while the old one still stops) would start its own Ray and hosts on the same
SQLite files and inboxes, reap the first one's live sandboxes as leftovers and overwrite the
``ray-address`` file. The server that starts the hosts takes an exclusive lock on
``<data_dir>/.serve.lock`` for as long as it runs (the kernel releases it when the process ends, even
on ``kill -9``); another one waits `HOLDER_EXIT_WAIT_S` for it to end (a restart right after a
``kill -9`` of the supervisor finds its server still stopping), then is refused, naming the holder.
An API process that joins the first one's cluster (``runtime.ray_address``) starts no hosts and
takes no lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

LOCK_FILE = ".serve.lock"
#: How long a second server waits for the holder to end before it is refused.
HOLDER_EXIT_WAIT_S = 15.0

#: The open lock file of this process (kept open: closing it would release the lock).
_held: IO[str] | None = None


class DataDirInUse(Exception):
    """Another running server holds the data directory's lock."""


def lock_data_dir(data_dir: Path) -> None:
    """Take the data directory's lock for the life of this process, or raise `DataDirInUse`."""
    global _held
    if _held is not None:
        return
    path = data_dir / LOCK_FILE
    handle = path.open("a+")
    deadline = time.monotonic() + HOLDER_EXIT_WAIT_S
    warned = False
    while not _try_lock(handle):
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        if time.monotonic() >= deadline:
            handle.close()
            raise DataDirInUse(
                f"data directory {data_dir} is in use by another foundry serve (pid {holder}); stop "
                "that one first, or give this one its own FOUNDRY_DATA_DIR (a second API process "
                "joins the first one's cluster with FOUNDRY_RUNTIME__RAY_ADDRESS instead)"
            )
        if not warned:
            warned = True
            log.warning(
                "data directory %s is held by another foundry serve (pid %s); waiting up to %.0f s "
                "for it to end",
                data_dir,
                holder,
                HOLDER_EXIT_WAIT_S,
            )
        time.sleep(0.25)
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held = handle


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def release_data_dir() -> None:
    """Give the lock back (a command that needed the directory to itself for a while)."""
    global _held
    if _held is not None:
        _held.close()
        _held = None


def keep_private(data_dir: Path) -> None:
    """Make the data directory (databases, transcripts, checkouts, keys) Foundry's user's alone.

    Everything this process and its children create is owner-only (umask 077), and the directory
    itself is 0700, which also closes what an older run or a permissive umask left readable inside.
    """
    os.umask(0o077)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        data_dir.chmod(0o700)
    except OSError as exc:  # not ours (a mounted volume, say): say so, the files are still 0600
        log.warning("could not make %s private (mode 0700): %s", data_dir, exc)
