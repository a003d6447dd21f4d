"""Run an ACP agent and stop it once its stdin is closed.

sandbox-agent ends an ACP server by closing the agent's stdin (its ``DELETE`` never stops the
process itself), and an ACP agent on stdio is expected to exit then. Claude Code's and Codex's
adapters do not: they keep running, with Claude Code's own process under them, until the whole
sandbox stops, so every closed or restarted session would leave an agent behind. Their launchers
therefore run them as ``python -I -m foundry.drivers.sandbox.eof_guard <program> <args…>``:

* the agent runs in a process group of its own, its stdout and stderr are this process's own, and
  what arrives on this process's stdin is copied to the agent's;
* when this stdin reaches EOF, the agent's stdin is closed too; an agent still running
  ``GRACE_S`` seconds later gets SIGTERM, then SIGKILL, for its whole process group;
* SIGTERM/SIGINT/SIGHUP are passed on to the agent's group, and when the agent exits, whatever it
  left in its group is killed; this process exits as the agent did.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

__all__ = ["GRACE_S", "main"]

#: Seconds an agent has to exit by itself once its stdin is closed.
GRACE_S = 3.0
_TERM_S = 5.0


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_stdin(child: subprocess.Popen[bytes]) -> None:
    """Copy stdin to the agent's until EOF, then close it and stop the agent if it lingers."""
    assert child.stdin is not None
    target = child.stdin.fileno()
    try:
        while data := os.read(sys.stdin.fileno(), 65536):
            _write_all(target, data)
    except OSError:
        pass  # the agent closed its stdin or exited: there is no one left to copy to
    with contextlib.suppress(OSError):
        child.stdin.close()
    deadline = time.monotonic() + GRACE_S
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if child.poll() is None:
        _signal_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + _TERM_S
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        _signal_group(child.pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m foundry.drivers.sandbox.eof_guard <program> [args…]", file=sys.stderr)
        return 64
    try:
        child = subprocess.Popen(argv, stdin=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        print(f"eof_guard: cannot run {argv[0]}: {exc}", file=sys.stderr)
        return 127
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda received, _frame: _signal_group(child.pid, received))
    threading.Thread(target=_copy_stdin, args=(child,), name="stdin", daemon=True).start()
    returncode = child.wait()
    # Its own children (Claude Code under its adapter) must not outlive it.
    _signal_group(child.pid, signal.SIGKILL)
    return 128 - returncode if returncode < 0 else returncode


if __name__ == "__main__":
    # os._exit: the stdin thread may be blocked in a read that nothing else will end.
    sys.stdout.flush()
    os._exit(main(sys.argv[1:]))
