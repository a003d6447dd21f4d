"""The open-file limit of Foundry's processes.

A busy task host holds about ten descriptors per active task (SQLite files and their write-ahead
logs, sandbox-agent connections, event streams): some 4,700 at 475 active tasks. Many systems start
processes with a soft limit of 1,024, which such a host would reach at about a hundred active tasks
and then fail in odd places. The hard limit is the operator's ceiling; the soft limit is raised to
it at start (Ray's daemons and host processes inherit it from ``foundry serve``).
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

#: Below this (about 800 active tasks) the operator is told at start to raise the hard limit.
ENOUGH = 8_192


def raise_open_file_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, wanted, exc)
    if soft < ENOUGH:
        log.warning(
            "the open-file limit is %d; a busy Foundry holds about ten files per active task: raise the "
            "hard limit (`ulimit -Hn`, or LimitNOFILE= in a systemd unit) to %d or more",
            soft,
            ENOUGH,
        )
    return soft
