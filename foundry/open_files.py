"""The open-file limit of Foundry's processes.

A busy task host holds about ten descriptors per active task (SQLite files and their write-ahead
logs, sandbox-agent connections, event streams): some 4,700 at 475 active tasks. Many systems start
processes with a soft limit of 1,024, which such a host reaches at about a hundred active tasks, and
then fails everywhere at once ("Too many open files": tasks in error, a queue that stalls). So the
soft limit is raised to the hard one at start (Ray's daemons and host processes inherit it from
``foundry serve``), the hard one too where the process may (root), and ``foundry serve`` refuses to
start below `MINIMUM`: a clear line at start instead of breakage under load.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

#: Below this ``foundry serve`` refuses to start (a few hundred active tasks).
MINIMUM = 4_096
#: Below this (about 800 active tasks) the operator is told at start to raise the hard limit.
ENOUGH = 8_192
#: What the hard limit is raised to where the process may raise it.
_WANTED_HARD = 1_048_576


def raise_open_file_limit() -> int:
    """Raise this process's open-file limit as far as it may; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < _WANTED_HARD:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, _WANTED_HARD))
            hard = _WANTED_HARD
        except (ValueError, OSError):
            pass  # only a privileged process may raise its hard limit: the usual case
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, _WANTED_HARD)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, wanted, exc)
    if MINIMUM <= soft < ENOUGH:
        log.warning(
            "the open-file limit is %d; a busy Foundry holds about ten files per active task: raise the "
            "hard limit (`ulimit -Hn`, or LimitNOFILE= in a systemd unit) to %d or more",
            soft,
            ENOUGH,
        )
    return soft


def open_file_refusal(soft: int) -> str | None:
    """The one-line refusal when ``soft`` (after `raise_open_file_limit`) is too low to serve."""
    if soft >= MINIMUM:
        return None
    return (
        f"the open-file limit is {soft} and cannot be raised by this process: Foundry holds about ten "
        f"files per active task and needs at least {MINIMUM}; raise the hard limit (`ulimit -Hn "
        f"{ENOUGH * 8}` before starting, or LimitNOFILE= in a systemd unit, --ulimit nofile= in Docker)"
    )
