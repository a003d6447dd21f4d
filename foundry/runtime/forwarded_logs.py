"""Wait, at a clean stop, until the last lines of every host process have reached this process.

Hosts log to their worker's stderr, and Ray forwards those lines to the driver: its log monitor polls
the worker's file (every 0.1 s) and publishes through the GCS to this process's print thread. A host's
final lines (what it stopped, what failed while closing) are written a few milliseconds before
``ray.shutdown`` ends that thread, so without waiting they were lost now and then: the operator never
read that the sandboxes were stopped. Each host process ends its shutdown with `CLOSED_MARKER`; the
log monitor reads a file in order, so once that line is here every earlier line of the process is too.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

#: The last line a host process logs (followed by its name); see `HostProcess.shutdown`.
CLOSED_MARKER = "host process closed:"
_HANDLER_NAME = "foundry_forwarded_log_watch"


class ForwardedLogWatch:
    """Notes which processes' closing line has been forwarded to this driver."""

    def __init__(self) -> None:
        #: As Ray delivers them: the pid of a worker's line arrives as text.
        self._closed_pids: set[str] = set()
        self._lock = threading.Lock()
        self._installed = False

    def install(self) -> None:
        """Listen to the lines Ray forwards (call after ``ray.init`` with ``log_to_driver``)."""
        from ray._private.ray_logging import global_worker_stdstream_dispatcher

        if not self._installed:
            global_worker_stdstream_dispatcher.add_handler(_HANDLER_NAME, self._seen)
            self._installed = True

    def uninstall(self) -> None:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher

        if self._installed:
            global_worker_stdstream_dispatcher.remove_handler(_HANDLER_NAME)
            self._installed = False

    def _seen(self, data: dict[str, Any]) -> None:
        # Runs on Ray's print thread for every forwarded batch: cheap, and never raises into Ray.
        if any(CLOSED_MARKER in line for line in data.get("lines", ())):
            with self._lock:
                self._closed_pids.add(str(data.get("pid")))

    async def wait_for(self, pids: Iterable[int], timeout: float) -> None:
        """Return once each process's closing line has arrived, or after ``timeout`` (logged)."""
        wanted = {str(pid) for pid in pids}
        if not self._installed or not wanted:
            return
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                missing = wanted - self._closed_pids
            if not missing:
                return
            if time.monotonic() >= deadline:
                log.warning(
                    "the last log lines of host processes %s did not arrive within %.0fs; "
                    "read them in Ray's worker log files",
                    sorted(missing),
                    timeout,
                )
                return
            await asyncio.sleep(0.02)
