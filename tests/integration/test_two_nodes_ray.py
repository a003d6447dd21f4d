"""A real two-node Ray cluster: host processes on the nodes holding their data, and the worker node
killed in the middle of a burst of commands (`two_nodes` runs it in a process of its own)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.two_nodes import HEAD_LABEL, WORKER_LABEL

pytestmark = pytest.mark.ray

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_a_worker_node_killed_mid_burst_fails_calls_fast_by_name_and_loses_nothing(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.two_nodes", str(tmp_path), "--commands", "450"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    # Each host process ran on the node labelled with its data, before and after the node's return.
    assert result["placed"] == {"counter": WORKER_LABEL, "organization": HEAD_LABEL}
    assert result["placed_after"] == WORKER_LABEL
    # Commands sent while the node was away failed, fast, with an error naming the node...
    assert result["commands_failed"] > 0, result["phases"]
    assert all(f"foundry-data={WORKER_LABEL}" in e for e in result["error_samples"]), result["error_samples"]
    assert result["error_s_max"] <= 5, result["phases"]
    # ...and every acknowledged one was applied exactly once, with the node's data intact.
    assert result["acked_not_applied"] == 0
    assert result["applied_twice"] == 0
    assert result["commands_acked"] + result["commands_failed"] == 450
    assert result["node_restart_recovery_s"] is not None
    assert result["node_restart_recovery_s"] <= 5, result
