"""A host process's files are held by one running copy of it: a second copy in another Ray namespace
(a second set of hosts on the same databases and sandboxes) is refused, naming the first, and an
API process learns it before it writes anything to the data directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foundry.runtime.host_lock import HostsConflict, foreign_holder, hold_host_lock

HOLDER = """
import sys, time
from pathlib import Path
from foundry.runtime.host_lock import hold_host_lock
lock = hold_host_lock(Path(sys.argv[1]), "foundry.main", sys.argv[2])
print("held", flush=True)
time.sleep(600)
"""


def _holder(data_dir: Path, namespace: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir), namespace], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_copy_in_another_namespace_is_refused_naming_the_holder(tmp_path: Path) -> None:
    child = _holder(tmp_path, "foundry")
    try:
        started = time.monotonic()
        with pytest.raises(HostsConflict) as refused:
            hold_host_lock(tmp_path, "foundry.main", "otherns")
        assert time.monotonic() - started < 10
        assert f"pid {child.pid}" in str(refused.value)
        assert "'foundry'" in str(refused.value)
        assert "FOUNDRY_RUNTIME__NAMESPACE" in str(refused.value)
        # The API process's own look, before it writes the hosts' secrets: the same answer…
        reason = foreign_holder(tmp_path, ["foundry.main"], "otherns")
        assert reason is not None
        assert f"pid {child.pid}" in reason
        # …and none for the namespace that owns the hosts, or for a process nobody runs.
        assert foreign_holder(tmp_path, ["foundry.main", "foundry.tasks"], "foundry") is None
    finally:
        child.kill()
        child.wait()


def test_the_files_are_free_again_once_the_holder_is_killed(tmp_path: Path) -> None:
    child = _holder(tmp_path, "foundry")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    lock = hold_host_lock(tmp_path, "foundry.main", "otherns")  # e.g. the namespace was changed
    lock.close()
    assert foreign_holder(tmp_path, ["foundry.main"], "foundry") is None


def test_a_copy_in_the_same_namespace_waits_for_the_last_one_to_exit(tmp_path: Path) -> None:
    child = _holder(tmp_path, "foundry")
    try:
        killer = subprocess.Popen(["sh", "-c", f"sleep 1; kill -9 {child.pid}"])
        started = time.monotonic()
        lock = hold_host_lock(tmp_path, "foundry.main", "foundry")
        assert 0.5 < time.monotonic() - started < 20
        lock.close()
        killer.wait()
    finally:
        child.kill()
        child.wait()
