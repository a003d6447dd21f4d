"""The supervisor says why Ray ended the server, from the lines Ray's core worker left in its log."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundry.runtime.ray_last_words import LOG_DIR_FILE_ENV, last_words, record_log_dir

# As Ray 2.x writes them (the first is the one a joined server left when its node's raylet died).
RAYLET_DEAD = (
    "[2026-12-03 15:43:47,199 W 5959 6823] raylet_ipc_client.cc:69: Exiting because the Raylet IPC "
    "connection failed and the local Raylet is dead. Status: IOError: Broken pipe"
)
ORDINARY = [
    "[2026-12-03 15:43:40,001 I 5959 5959] core_worker.cc:512: Initializing worker at address: 127.0.0.1:1",
    "[2026-12-03 15:43:41,002 W 5959 6001] gcs_client.cc:210: Failed to get cluster ID from GCS server",
    'error_message: "The actor is temporarily unavailable"',
]


def driver_log(logs: Path, pid: int, lines: list[str]) -> None:
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"python-core-driver-08000000ffffffff_{pid}.log").write_text("\n".join(lines) + "\n")


def test_the_reason_ray_gave_for_ending_the_server_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    logs = tmp_path / "session" / "logs"
    driver_log(logs, 5959, [*ORDINARY, RAYLET_DEAD])
    driver_log(logs, 6000, ["[2026-12-03 15:43:47,199 F 6000 6001] other.cc:1: Check failed: not ours"])
    handed = tmp_path / "handed"
    monkeypatch.setenv(LOG_DIR_FILE_ENV, str(handed))
    record_log_dir(str(logs))  # what the server does once it is connected
    words = last_words(handed, 5959)
    assert words is not None
    assert words.startswith("raylet_ipc_client.cc:69: Exiting because the Raylet IPC connection failed")
    assert "not ours" not in words
    assert "Failed to get cluster ID" not in words


def test_a_failed_check_is_said_and_a_quiet_log_says_nothing(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    driver_log(logs, 7, [*ORDINARY, "[2026-12-03 15:43:47,199 C 7 8] task_manager.cc:9: Check failed: x > 0"])
    driver_log(logs, 8, ORDINARY)
    handed = tmp_path / "handed"
    handed.write_text(str(logs))
    assert last_words(handed, 7) == "task_manager.cc:9: Check failed: x > 0"
    assert last_words(handed, 8) is None
    # The server ended before it connected to Ray: nothing was handed over.
    assert last_words(tmp_path / "never-written", 7) is None
    (tmp_path / "empty").write_text("")
    assert last_words(tmp_path / "empty", 7) is None
