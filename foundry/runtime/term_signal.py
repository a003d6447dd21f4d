"""SIGTERM to a host process: close its hosts, then exit so that Ray starts the process again.

Ray's worker turns SIGTERM into a graceful exit that first waits for every running call to return. A
host process always has calls that never return (each API process's event stream), so it used to hang
for good: alive, answering nothing, and never restarted, because Ray only restarts a process that
died. Python lets only the main thread set a signal handler, and Ray runs an actor's code on another
thread; `faulthandler.register` installs a C-level handler from any thread. Ours writes to a pipe
that the process's event loop reads, and the loop does the rest: close every host (as a cluster stop
does), then end the process with a failure status, which Ray answers with a restart.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import IO, Any

log = logging.getLogger(__name__)

#: How long the hosts get to close before the process ends regardless.
CLOSE_TIMEOUT_S = 20.0
#: The status the process ends with: anything but a clean exit makes Ray restart it.
EXIT_STATUS = 1


class TermSignal:
    """Runs ``close`` and ends the process when it receives SIGTERM (see the module docstring)."""

    def __init__(self, process: str, close: Callable[[], Awaitable[Any]]) -> None:
        self.process = process
        self._close = close
        self._pipe: IO[str] | None = None
        self._read_fd = -1
        self._ending: asyncio.Task[None] | None = None

    def install(self) -> None:
        """Take over SIGTERM for this process; call on its event loop."""
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        self._read_fd = read_fd
        # Kept open for the life of the process: faulthandler writes the traceback of the signalled
        # thread to it, which is what wakes the loop (the text itself is not used).
        self._pipe = os.fdopen(write_fd, "w")
        faulthandler.register(signal.SIGTERM, file=self._pipe, all_threads=False, chain=False)
        loop.add_reader(read_fd, self._signalled)

    def _signalled(self) -> None:
        try:
            while os.read(self._read_fd, 65536):
                pass
        except BlockingIOError:
            pass  # all read
        if self._ending is None:
            self._ending = asyncio.create_task(self._end(), name=f"sigterm:{self.process}")

    async def _end(self) -> None:
        log.warning(
            "host process %s received SIGTERM: closing its hosts, then exiting so that Ray starts it again "
            "(pid %d)",
            self.process,
            os.getpid(),
        )
        try:
            await asyncio.wait_for(self._close(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.error(
                "host process %s did not close within %.0f s of SIGTERM; exiting anyway",
                self.process,
                CLOSE_TIMEOUT_S,
            )
        except Exception:
            log.exception("host process %s failed while closing after SIGTERM; exiting anyway", self.process)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError) as exc:  # a closed stream: nowhere left to say it
                print(f"could not flush {stream!r}: {exc}", file=sys.__stderr__)
        os._exit(EXIT_STATUS)
