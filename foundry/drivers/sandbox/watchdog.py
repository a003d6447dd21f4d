"""The limits watchdog of a running local sandbox: measures it periodically and says which limit it
hit (the provider then stops the sandbox with that message, see `LocalSandboxProvider`).

What it checks: the cgroups' own records of a refused fork or an out-of-memory kill (`Cgroups.hit`),
the disk usage of the sandbox directory against ``disk_mb`` and its files against ``max_files``,
and — where no ``pids`` cgroup counts them — the number of the sandbox's processes against
``max_processes`` (``RLIMIT_NPROC`` then holds them back, but a fork bomb would keep the sandbox busy
forever).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from foundry.drivers.sandbox.limits import Cgroups, SandboxLimits
from foundry.drivers.sandbox.spawn import descendants

__all__ = ["disk_usage", "first_hit", "watch"]

log = logging.getLogger(__name__)

_MB = 1024 * 1024
#: A disk measurement may use at most this share of the watchdog's time (large checkouts are slow
#: to walk): the next one waits accordingly.
_DISK_DUTY = 0.1


def disk_usage(directory: Path) -> int:
    """Bytes allocated to the files under ``directory`` (see `usage`)."""
    return usage(directory)[0]


def usage(directory: Path) -> tuple[int, int]:
    """Bytes allocated to the files under ``directory``, and how many entries (each an inode) it
    holds; not following links, not leaving its file system. Files that vanish while walking are
    skipped."""
    try:
        device = os.lstat(directory).st_dev
    except OSError:
        return 0, 0
    total = 0
    count = 0
    todo = [str(directory)]
    while todo:
        current = todo.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        count += len(entries)
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += info.st_blocks * 512
            if stat.S_ISDIR(info.st_mode) and info.st_dev == device:
                todo.append(entry.path)
    return total, count


def first_hit(
    limits: SandboxLimits, cgroups: Cgroups, directory: Path, leader: int, *, measure_disk: bool
) -> str | None:
    """The first limit the sandbox hit, named for the user, or None. Blocking (file system)."""
    hit = cgroups.hit()
    if hit is not None:
        return hit
    # Without a pids cgroup, RLIMIT_NPROC holds the processes at the limit; reaching it is the hit.
    # (bubblewrap's own two processes sit outside the count's reach.)
    if (
        limits.max_processes > 0
        and "pids" not in cgroups.dirs
        and len(descendants(leader)) - 2 >= limits.max_processes
    ):
        return f"it reached its process limit ({limits.named('max_processes')})"
    if measure_disk and (limits.disk_mb > 0 or limits.max_files > 0):
        used, files = usage(directory)
        if limits.disk_mb > 0 and used >= limits.disk_mb * _MB:
            return f"its directory reached its disk limit ({limits.named('disk_mb')}; {used // _MB} MB used)"
        if limits.max_files > 0 and files >= limits.max_files:
            return f"its directory reached its file limit ({limits.named('max_files')}; {files} files)"
    return None


async def watch(
    sandbox_id: str,
    limits: SandboxLimits,
    cgroups: Cgroups,
    directory: Path,
    leader: int,
    on_hit: Callable[[str], Awaitable[None]],
) -> None:
    """Check the sandbox every ``check_interval_s`` until it hits a limit, then ``await on_hit(what)``
    once and return. Runs until cancelled otherwise."""
    disk_due = 0.0
    while True:
        now = time.monotonic()
        measure_disk = now >= disk_due
        hit = await asyncio.to_thread(
            first_hit, limits, cgroups, directory, leader, measure_disk=measure_disk
        )
        if measure_disk:
            took = time.monotonic() - now
            disk_due = now + max(limits.check_interval_s, took / _DISK_DUTY)
        if hit is not None:
            log.warning("sandbox hit a limit sandbox_id=%s: %s", sandbox_id, hit)
            await on_hit(hit)
            return
        await asyncio.sleep(limits.check_interval_s)
