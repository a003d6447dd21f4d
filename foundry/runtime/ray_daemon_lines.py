"""Lines Ray's own daemons forward to this process go through Foundry's logging.

Ray prints what its raylet forwards to the driver (e.g. "Task HostProcess.send failed. There are 3
retries remaining", after a host process died) as plain ``(raylet) …`` text beside Foundry's lines:
with ``log_format = "json"`` the operator's log was no longer JSON only. Host processes' own lines are
Foundry's already and pass through unchanged. Of the autoscaler's lines only its events pass, as in
Ray's own printer.
"""

from __future__ import annotations

import logging
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
            printer(data, print_file, ignore_prefix)
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
