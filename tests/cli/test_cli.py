"""The operator's command line, run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
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
