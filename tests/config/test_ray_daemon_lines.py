"""Lines Ray's daemons forward to the API process: they reach Foundry's log, but the autoscaler's
periodic status dump does not (only its events, as Ray's own printer does)."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import ray._private.worker as ray_worker
import ray.autoscaler.v2.utils as autoscaler_utils
from ray._private import ray_constants

from foundry.runtime.ray_daemon_lines import route_daemon_lines_to_logging

STATUS_DUMP = [
    "2026-12-03 20:08:25,727\tINFO autoscaler.py:147 -- The autoscaler took 0.0 seconds to fetch the list.",
    "======== Autoscaler status: 2026-12-03 20:08:25.727782 ========",
    "Node status",
    " 0B/21.21GiB memory",
    "Pending Demands:",
]


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_worker, "print_worker_logs", ray_worker.print_worker_logs)
    monkeypatch.setattr(autoscaler_utils, "cached_is_autoscaler_v2", False)  # this Ray's monitor: v1
    route_daemon_lines_to_logging()


def test_the_autoscaler_status_dump_is_not_logged_but_its_events_are(
    routed: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    event = f"20:09:00,000\tINFO -- {ray_constants.LOG_PREFIX_EVENT_SUMMARY}Removing 1 nodes of type w."
    ray_worker.print_worker_logs(
        {"pid": "autoscaler", "is_err": False, "lines": [*STATUS_DUMP, event]}, io.StringIO()
    )
    logged = [r.getMessage() for r in caplog.records if r.name == "ray.autoscaler"]
    assert "Removing 1 nodes of type w." in logged
    assert not [line for line in logged if "Autoscaler status" in line or "memory" in line or "fetch" in line]


def test_the_raylets_lines_are_all_logged(routed: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    line = "Task HostProcess.send failed. There are 3 retries remaining"
    ray_worker.print_worker_logs({"pid": "raylet", "is_err": True, "lines": [line]}, io.StringIO())
    assert [(r.getMessage(), r.levelno) for r in caplog.records if r.name == "ray.raylet"] == [
        (line, logging.WARNING)
    ]


INTERLEAVE = """
import json, logging, sys, threading
import ray._private.worker as ray_worker
from foundry.logging import configure_logging
from foundry.runtime.ray_daemon_lines import route_daemon_lines_to_logging

configure_logging("INFO", "json", process="api")
route_daemon_lines_to_logging()
host_line = json.dumps({"level": "INFO", "process": "tasks", "message": "x" * 300})

def forward():
    for _ in range(400):
        data = {"pid": 4242, "is_err": True, "lines": [host_line] * 5, "ip": "a", "localhost": "a"}
        ray_worker.print_worker_logs(data, sys.stderr, True)

forwarder = threading.Thread(target=forward)
forwarder.start()
for n in range(4000):
    logging.getLogger("api").info("own record %d %s", n, "y" * 200)
forwarder.join()
"""


def test_forwarded_host_lines_and_own_records_never_share_a_line(tmp_path: Path) -> None:
    # Ray prints a host's line and its newline in two writes from a thread of its own: the API
    # process's own records used to land between them (two JSON records on one line, or one cut).
    out = tmp_path / "serve.log"
    with out.open("w") as stderr:
        subprocess.run([sys.executable, "-c", INTERLEAVE], stderr=stderr, check=True, timeout=120)
    lines = out.read_text().splitlines()
    broken = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            broken.append(line[:120])
    assert len(lines) == 400 * 5 + 4000
    assert broken == []
