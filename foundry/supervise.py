"""Run ``foundry serve`` in a child process of its own session, so a stop signal reaches it alone.

A local Ray's daemons (GCS, raylet) are children of the process that calls ``ray.init`` and share its
process group. A terminal's Ctrl-C, ``kill -- -<pgid>`` or a service manager that signals the whole
group would stop them together with the server: the hosts die before they can stop their sandbox
servers, and the driver itself is terminated by Ray as soon as its raylet is gone, half-way through
its shutdown. So the command the operator runs is a small supervisor: it starts the real server in a
new session, forwards SIGINT/SIGTERM/SIGHUP to it as one SIGTERM, waits, and exits with its status.
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
from types import FrameType

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
    child = subprocess.Popen(
        [sys.executable, "-m", "foundry", *argv],
        env={**os.environ, CHILD_ENV: "1"},
        start_new_session=True,
        # Only a prctl call between fork and exec: safe even though the parent has threads.
        preexec_fn=_die_with_parent,
    )
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        log.info("received %s; stopping the server (pid %d)", signal.Signals(signum).name, child.pid)
        try:
            child.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            log.info("the server (pid %d) had already exited", child.pid)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    status = child.wait()
    if stopping and status in (0, -signal.SIGTERM):
        return 0
    if status < 0:
        return 128 - status
    return status
