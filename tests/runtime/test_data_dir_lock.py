"""One `foundry serve` owns a data directory: a second one waits a little for the first to end (a
restart right after a kill finds it still stopping), then is refused naming it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from foundry import data_dir_lock
from foundry.data_dir_lock import DataDirInUse, lock_data_dir, release_data_dir

HOLDER = """
import sys, time
from pathlib import Path
from foundry.data_dir_lock import lock_data_dir
lock_data_dir(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder(data_dir: Path, seconds: float) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_server_still_stopping_is_waited_for(tmp_path: Path) -> None:
    holder = _holder(tmp_path, 1.5)
    started = time.monotonic()
    try:
        lock_data_dir(tmp_path)
        assert 0.5 < time.monotonic() - started < 10
        assert (tmp_path / ".serve.lock").read_text().strip().isdigit()
    finally:
        release_data_dir()
        holder.kill()
        holder.wait()


def test_a_server_that_keeps_running_refuses_the_second_one_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data_dir_lock, "HOLDER_EXIT_WAIT_S", 1.0)
    holder = _holder(tmp_path, 60)
    try:
        with pytest.raises(DataDirInUse, match=f"in use by another foundry serve \\(pid {holder.pid}\\)"):
            lock_data_dir(tmp_path)
    finally:
        holder.kill()
        holder.wait()
