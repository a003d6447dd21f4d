"""Run ``foundry serve`` in a child process of its own session, so a stop signal reaches it alone.

A local Ray's daemons (GCS, raylet) are children of the process that calls ``ray.init`` and share its
process group. A terminal's Ctrl-C, ``kill -- -<pgid>`` or a service manager that signals the whole
group would stop them together with the server: the hosts die before they can stop their sandbox
servers, and the driver itself is terminated by Ray as soon as its raylet is gone, half-way through
its shutdown. So the command the operator runs is a small supervisor: it starts the real server in a
new session, forwards SIGINT/SIGTERM/SIGHUP to it as one SIGINT, waits, and exits with its status.
The server shuts down in order (hosts close and stop their sandboxes, then Ray), and if the supervisor
itself is killed, the kernel sends the server SIGTERM (``PR_SET_PDEATHSIG``), so nothing is orphaned.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from foundry.runtime.ray_last_words import LOG_DIR_FILE_ENV, last_words

log = logging.getLogger(__name__)

#: Set in the server's environment so that it serves instead of supervising again.
CHILD_ENV = "FOUNDRY_SERVE_SUPERVISED"
_PR_SET_PDEATHSIG = 1


def is_supervised() -> bool:
    """True in the server process started by `supervise`."""
    return os.environ.get(CHILD_ENV) == "1"


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child before exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(argv: list[str]) -> int:
    """Run ``python -m foundry <argv>`` as the supervised server; return its exit status.

    A stop that was asked for and completed is 0 (the server re-raises the stop signal after its
    graceful shutdown, as uvicorn does); otherwise the server's exit code, or 128 + the number of the
    signal that ended it (what a shell reports).
    """
    fd, log_dir_file = tempfile.mkstemp(prefix="foundry-serve-", suffix=".ray-logs")
    os.close(fd)
    try:
        return _run(argv, Path(log_dir_file))
    finally:
        Path(log_dir_file).unlink(missing_ok=True)


def _run(argv: list[str], log_dir_file: Path) -> int:
    child = subprocess.Popen(
        [sys.executable, "-m", "foundry", *argv],
        env={**os.environ, CHILD_ENV: "1", LOG_DIR_FILE_ENV: str(log_dir_file)},
        start_new_session=True,
        # Only a prctl call between fork and exec: safe even though the parent has threads.
        preexec_fn=_die_with_parent,
    )
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            log.info(
                "received %s; the server (pid %d) is already stopping", signal.Signals(signum).name, child.pid
            )
            return
        stopping = True
        log.info("received %s; stopping the server (pid %d)", signal.Signals(signum).name, child.pid)
        try:
            # SIGINT: the same orderly shutdown as SIGTERM for the server, but Ray's crash handler
            # in its process (which catches SIGTERM) does not print a stack dump that reads like a crash.
            child.send_signal(signal.SIGINT)
        except ProcessLookupError:
            log.info("the server (pid %d) had already exited", child.pid)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    status = child.wait()
    clean = status in (0, -signal.SIGINT, -signal.SIGTERM)
    if not stopping:
        _say_why(child.pid, status, log_dir_file)
    elif not clean:
        log.error("the server (pid %d) %s while stopping", child.pid, _how(status))
    _end_session_leftovers(child.pid)
    if stopping and clean:
        return 0
    if status < 0:
        return 128 - status
    return status


def _how(status: int) -> str:
    return f"was killed by {signal.Signals(-status).name}" if status < 0 else f"exited with status {status}"


def _say_why(pid: int, status: int, log_dir_file: Path) -> None:
    """The server ended without being asked to through this command: say how, and why when Ray
    ended it (Ray's core worker exits without a word of the server's when its raylet dies, see
    `ray_last_words`). A server that stopped cleanly was signalled directly (not through this
    command): said too, since a service manager then sees a clean exit and starts nothing again."""
    how = _how(status)
    words = last_words(log_dir_file, pid)
    if words is not None:
        log.error("the server (pid %d) %s; Ray ended it: %s", pid, how, words)
    elif status in (0, -signal.SIGINT, -signal.SIGTERM):
        log.warning(
            "the server (pid %d) stopped (%s) without this command being asked to: a signal sent to the "
            "server itself? Stop Foundry by signalling this command (pid %d)",
            pid,
            how,
            os.getpid(),
        )
    elif status < 0:
        log.error("the server (pid %d) %s (by another process, or the kernel when out of memory)", pid, how)
    else:
        log.error("the server (pid %d) %s", pid, how)


#: How long what is left of the server's session gets to exit after SIGTERM before SIGKILL.
LEFTOVER_GRACE_S = 3.0


def session_members(sid: int) -> list[int]:
    """Pids of the live processes of session ``sid`` (from ``/proc``; zombies excluded)."""
    members: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # Fields after the command name (which may hold spaces and parentheses): state, ppid, pgrp, session.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] != b"Z":
            members.append(int(entry))
    return members


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            continue  # exited meanwhile


def _end_session_leftovers(sid: int) -> None:
    """Stop whatever is left in the server's session once the server has exited.

    A server that stops normally leaves nothing: `ray.shutdown` ends Ray's daemons and workers. But Ray
    can abort the process inside `ray.shutdown` (measured: SIGABRT in its core worker, rarely), and a
    server that crashed never gets there; then GCS, raylet, their helpers and the hosts' worker
    processes would run on with nobody to stop them. They all stay in the server's session (the
    workers in process groups of their own, so a process-group kill would miss them); sandboxes are
    in sessions of their own and are stopped by the hosts, or swept at the next start.
    """
    left = session_members(sid)
    if not left:
        return  # the usual case
    log.warning("the server (pid %d) left %d processes in its session; stopping them", sid, len(left))
    _signal_all(left, signal.SIGTERM)
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while time.monotonic() < deadline:
        left = session_members(sid)
        if not left:
            return
        time.sleep(0.1)
    log.warning("killing %d processes of the server's session that outlived SIGTERM: %s", len(left), left)
    _signal_all(left, signal.SIGKILL)
    # SIGKILL is delivered asynchronously: on a loaded machine a killed process can still be running
    # for a moment. Return only once they are gone, so that whoever restarts the server next never
    # finds the old one's processes still holding ports and files.
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = session_members(sid)
    if left:
        log.error("processes of the server's session survived SIGKILL: %s", left)
