"""What a server leaves in its session when it dies is stopped by the supervisor, group by group.

Ray's worker processes sit in process groups of their own inside the server's session, so a
process-group kill misses them; a server that dies without `ray.shutdown` must not leave them behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from foundry.supervise import _end_session_leftovers, _say_why, session_members

# A "server" that starts one child in its own process group (as Ray starts its workers), one that
# ignores SIGTERM, and then exits as a crashed server would.
_SERVER = textwrap.dedent(
    """
    import os, subprocess, sys
    worker = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], process_group=0
    )
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
         "open(sys.argv[1], 'w').close(); time.sleep(600)", sys.argv[2]]
    )
    print(worker.pid, stubborn.pid, flush=True)
    os._exit(0)
    """
)


def test_processes_left_in_a_dead_servers_session_are_stopped(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, "x", str(ready)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert server.stdout is not None
    worker, stubborn = (int(p) for p in server.stdout.readline().split())
    server.wait(timeout=30)
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        assert set(session_members(server.pid)) == {worker, stubborn}
        assert os.getpgid(worker) == worker  # its own group: a killpg of the server's would miss it
        started = time.monotonic()
        _end_session_leftovers(server.pid)
        assert session_members(server.pid) == []
        assert time.monotonic() - started < 10
    finally:
        for pid in (worker, stubborn):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_every_end_the_supervisor_did_not_ask_for_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server signalled directly (not through the command) used to stop with exit 0 and no line:
    a service manager would see a clean stop. Each way of ending is named."""
    nothing = tmp_path / "not-handed"
    with caplog.at_level(logging.WARNING, logger="foundry.supervise"):
        _say_why(11, 0, nothing)
        _say_why(12, -signal.SIGTERM, nothing)
        _say_why(13, -signal.SIGKILL, nothing)
        _say_why(14, 3, nothing)
    said = [r.getMessage() for r in caplog.records]
    assert "the server (pid 11) stopped (exited with status 0) without this command being asked" in said[0]
    assert "the server (pid 12) stopped (was killed by SIGTERM) without this command" in said[1]
    assert said[2].startswith("the server (pid 13) was killed by SIGKILL (by another process")
    assert said[3] == "the server (pid 14) exited with status 3"
