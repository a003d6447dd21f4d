"""Lines Ray's own daemons forward to this process go through Foundry's logging.

Ray prints what its raylet forwards to the driver (e.g. "Task HostProcess.send failed. There are 3
retries remaining", after a host process died) as plain ``(raylet) …`` text beside Foundry's lines:
with ``log_format = "json"`` the operator's log was no longer JSON only. Host processes' own lines are
Foundry's already and pass through unchanged, each whole: Ray prints them from a thread of its own,
a line and its newline in two writes, while this process's logging writes its own records to the
same output; unguarded, a record landed inside a forwarded line (two JSON records on one line, or one
cut in two). They are printed under the logging handler's lock and flushed before it is released.
Of the autoscaler's lines only its events pass, as in Ray's own printer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

#: Ray's names for the forwarded lines of its own processes (not of workers).
_DAEMONS = frozenset({"raylet", "autoscaler", "gcs_server"})


def route_daemon_lines_to_logging() -> None:
    """Call once Ray is imported (after ``ray.init`` with ``log_to_driver``); idempotent."""
    import ray._private.worker as ray_worker

    printer = ray_worker.print_worker_logs
    if getattr(printer, "foundry_routed", False):
        return

    def print_worker_logs(data: dict[str, Any], print_file: Any, ignore_prefix: bool = False) -> None:
        source = str(data.get("pid"))
        if source not in _DAEMONS:
            with _output_lock():
                printer(data, print_file, ignore_prefix)
                print_file.flush()
            return
        logger = logging.getLogger(f"ray.{source}")
        level = logging.WARNING if data.get("is_err") else logging.INFO
        lines = data.get("lines", [])
        if source == "autoscaler":
            # The monitor's log is mostly a status dump every few seconds; Ray's own printer keeps
            # only its events (a node added or lost), and so does this.
            try:
                lines = list(ray_worker.filter_autoscaler_events(lines))
            except Exception:  # Ray's filter asks the GCS which autoscaler runs; it may be gone
                log.warning("could not filter %d autoscaler lines; dropped", len(lines), exc_info=True)
                lines = []
        for line in lines:
            if line.strip():
                logger.log(level, "%s", line.rstrip())

    print_worker_logs.foundry_routed = True  # type: ignore[attr-defined]
    ray_worker.print_worker_logs = print_worker_logs


_FALLBACK_LOCK = threading.RLock()


@contextlib.contextmanager
def _output_lock() -> Iterator[None]:
    """Held while this process's log handler writes a record (`foundry.logging.configure_logging`)."""
    handler = next((h for h in logging.getLogger().handlers if getattr(h, "_foundry", False)), None)
    lock = handler.lock if handler is not None and handler.lock is not None else _FALLBACK_LOCK
    with lock:
        yield
