"""Knowing which processes are ours: identity by pid + start time, and the on-disk process registry.

A pid alone names a process only while it lives: after it dies the kernel may hand the number to an
unrelated process. ``(pid, start time in clock ticks since boot, boot id)`` names one process for
good, so a restarted backend can tell its own leftover ``sandbox-agent`` from a stranger that reused
the pid, and kill only the former.

The registry is one small JSON file per running sandbox server in ``<root>/.processes/``, written
right after the spawn and removed once the server's whole process group is gone. A backend that was
killed (``kill -9``, a crash, a host restart) leaves its files behind; the next start reads them to
find and reap the leftovers (`LocalSandboxProvider.reap_leftovers`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: A process in a sandbox directory with no registry record is a leftover only once it is older than
#: this: a server being started right now is recorded a moment after its spawn.
UNRECORDED_GRACE_S = 10

__all__ = [
    "ProcessRecord",
    "Registry",
    "boot_id",
    "group_members",
    "kill_leftover",
    "processes_in",
    "reap_leftovers",
    "start_ticks",
]


def boot_id() -> str:
    """This boot's id: pids and start times restart from zero after a reboot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or ')'.
    return raw[raw.rfind(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None."""
    fields = _stat_fields(pid)
    # After the name, field 3 (state) is index 0, so field 22 is index 19.
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def _pgrp(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[2]) if fields is not None and len(fields) > 2 else None


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    return [pid for pid in _pids() if _pgrp(pid) == pgid]


def processes_in(directory: Path) -> list[int]:
    """Live processes started for the sandbox at ``directory``: their working directory is inside it
    *and* their ``HOME`` is it (as the provider sets it), so a person's shell that merely ``cd``-ed
    there is never mistaken for one."""
    marker = f"HOME={directory}".encode()
    found = []
    for pid in _pids():
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            if cwd != directory and directory not in cwd.parents:
                continue
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ:
            found.append(pid)
    return found


@dataclass(frozen=True)
class ProcessRecord:
    """One sandbox server as started: its pid (also its process group id), start time, boot."""

    sandbox_id: str
    owner: str
    pid: int
    start_ticks: int
    boot_id: str

    def is_running(self) -> bool:
        """True when the very process that was recorded still runs (not a reuse of its pid)."""
        return self.boot_id == boot_id() and start_ticks(self.pid) == self.start_ticks


def kill_leftover(record: ProcessRecord) -> list[int]:
    """SIGKILL what is left of a recorded server: its process group, agents included.

    Only processes that are provably ours are touched: the recorded leader (same start time), or,
    when the leader is gone, members of its process group started after it (the kernel never reuses
    a pid as a new group id while the old group still has members). Returns the pids signalled.
    """
    if record.boot_id != boot_id():
        return []  # everything it started died with the previous boot
    leader_ticks = start_ticks(record.pid)
    if leader_ticks is not None and leader_ticks != record.start_ticks:
        # The pid was reused, so our group is entirely gone: the kernel does not hand out a number
        # that is still some live process's group id.
        return []
    members = [
        pid
        for pid in group_members(record.pid)
        if (ticks := start_ticks(pid)) is not None and ticks >= record.start_ticks
    ]
    if leader_ticks == record.start_ticks and record.pid not in members:
        members.append(record.pid)
    for pid in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return members


class Registry:
    """``<root>/.processes/<sandbox_id>.json``: the sandbox servers started and not yet reaped.

    The directory name starts with a dot, which no sandbox id can, so it never collides with one.
    """

    def __init__(self, root: Path) -> None:
        self.directory = root / ".processes"

    def _path(self, sandbox_id: str) -> Path:
        return self.directory / f"{sandbox_id}.json"

    def write(self, record: ProcessRecord) -> None:
        """Record a just-started server (atomically: a crash never leaves half a file)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{record.sandbox_id}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(record)))
        tmp.replace(self._path(record.sandbox_id))

    def remove(self, sandbox_id: str, pid: int | None = None) -> None:
        """Forget a server whose process group is gone (only if it is still the recorded one)."""
        path = self._path(sandbox_id)
        if pid is not None:
            current = self.read(path)
            if current is not None and current.pid != pid:
                return
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def read(self, path: Path) -> ProcessRecord | None:
        try:
            data = json.loads(path.read_text())
            return ProcessRecord(
                str(data["sandbox_id"]),
                str(data.get("owner", "")),
                int(data["pid"]),
                int(data["start_ticks"]),
                str(data["boot_id"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable sandbox process record %s (%s); removing it", path, exc)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None

    def records(self) -> list[ProcessRecord]:
        if not self.directory.is_dir():
            return []
        out = []
        for path in sorted(self.directory.glob("*.json")):
            record = self.read(path)
            if record is not None:
                out.append(record)
        return out


def _uptime_ticks() -> int:
    with open("/proc/uptime") as handle:
        return int(float(handle.read().split()[0]) * os.sysconf("SC_CLK_TCK"))


def reap_leftovers(
    registry: Registry, root: Path, ours: set[str], belongs: Callable[[str], bool] | None
) -> list[str]:
    """Kill recorded servers not in ``ours`` (and unrecorded processes of sandboxes under ``root``).

    Blocking (reads ``/proc``): run it in a thread. ``belongs(owner)`` selects the records this
    caller is responsible for. Returns the sandbox ids reaped.
    """
    reaped: list[str] = []
    recorded: set[str] = set()
    for record in registry.records():
        recorded.add(record.sandbox_id)
        if record.sandbox_id in ours or (belongs is not None and not belongs(record.owner)):
            continue
        if kill_leftover(record):
            reaped.append(record.sandbox_id)
        registry.remove(record.sandbox_id, record.pid)
    if not root.is_dir():
        return reaped
    grace_ticks = UNRECORDED_GRACE_S * os.sysconf("SC_CLK_TCK")
    now_ticks = _uptime_ticks()
    for entry in root.iterdir():
        if entry.name.startswith(".") or entry.name in ours or entry.name in recorded:
            continue
        strays = [
            pid
            for pid in processes_in(entry)
            if (ticks := start_ticks(pid)) is not None and now_ticks - ticks > grace_ticks
        ]
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if strays:
            reaped.append(entry.name)
    return reaped
