"""The operator's command line, run as a real process."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path


def _foundry(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FOUNDRY_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "foundry", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_db_check_passes_for_every_role(tmp_path: Path) -> None:
    result = _foundry("db", "check", data_dir=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "organization: ok" in result.stdout
    assert "user: ok" in result.stdout


def test_db_upgrade_migrates_existing_actor_files(tmp_path: Path) -> None:
    old = tmp_path / "audit-log" / "00" / "acme.sqlite3"
    old.parent.mkdir(parents=True)
    old.touch()  # an empty file: no schema yet
    result = _foundry("db", "upgrade", "--role", "audit-log", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "audit-log: 1 databases, 1 migrated" in result.stdout
    again = _foundry("db", "upgrade", "--role", "audit-log", data_dir=tmp_path)
    assert "audit-log: 1 databases, 0 migrated" in again.stdout


def test_db_upgrade_refuses_what_it_must_not_touch_in_one_line(tmp_path: Path) -> None:
    missing = _foundry("db", "upgrade", data_dir=tmp_path / "mistyped")
    assert missing.returncode == 1
    assert (
        missing.stderr.strip()
        == f"Error: no data directory at {tmp_path / 'mistyped'} (set FOUNDRY_DATA_DIR)"
    )
    # A database a newer Foundry migrated: named, not a traceback (and nothing else touched).
    newer = tmp_path / "audit-log" / "00" / "acme.sqlite3"
    newer.parent.mkdir(parents=True)
    newer.touch()
    assert _foundry("db", "upgrade", "--role", "audit-log", data_dir=tmp_path).returncode == 0
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    result = _foundry("db", "upgrade", "--role", "audit-log", data_dir=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{newer} has schema revision '0099', which this Foundry does not know" in result.stderr
    # A running server holds the directory: its hosts migrate at wake, never beside this command.
    lock = tmp_path / ".serve.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import fcntl,time; f=open({str(lock)!r},'w'); f.write('4242'); f.flush(); "
            "fcntl.flock(f, fcntl.LOCK_EX); time.sleep(30)",
        ],
    )
    try:
        for _ in range(100):
            if lock.exists() and lock.read_text():
                break
            time.sleep(0.05)
        busy = _foundry("db", "upgrade", data_dir=tmp_path)
        assert busy.returncode == 1
        assert "is in use by another foundry serve (pid 4242)" in busy.stderr, busy.stderr
    finally:
        holder.kill()
        holder.wait()


def test_unknown_role_is_a_clear_error(tmp_path: Path) -> None:
    result = _foundry("db", "upgrade", "--role", "billing", data_dir=tmp_path)
    assert result.returncode == 2
    assert "unknown role 'billing'" in result.stderr


def test_retry_dead_refuses_a_bad_key_before_looking_for_a_cluster(tmp_path: Path) -> None:
    result = _foundry("actors", "retry-dead", "--role", "task", "--key", "../etc", data_dir=tmp_path)
    assert result.returncode == 2
    assert "actor key" in result.stderr


def test_actors_ls_without_a_running_foundry_for_this_data_dir_says_so(tmp_path: Path) -> None:
    # Another Foundry's Ray may be running on this machine (other tests start them): the command must
    # not join that one and report its hosts as if they were this Foundry's.
    result = _foundry("actors", "ls", data_dir=tmp_path)
    assert result.returncode == 1
    assert "no running Foundry found for data dir" in result.stderr
