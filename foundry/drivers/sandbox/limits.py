"""Resource limits of a local sandbox: memory, processes, CPU time, disk and file size.

Two mechanisms, because neither is available everywhere:

* **rlimits** (the portable floor): the launcher (`foundry.drivers.sandbox.launch`) sets them on
  itself inside the jail before it starts the server, so the server and every agent and command
  inherit them: ``RLIMIT_NPROC`` (a fork bomb stops at ``max_processes``), ``RLIMIT_FSIZE`` (no single
  file larger than the disk limit), ``RLIMIT_CPU`` (per process) and ``RLIMIT_DATA`` (per process
  memory, only when no memory cgroup is available: unlike ``RLIMIT_AS`` it leaves the large address
  space reservations of JavaScript runtimes alone). The kernel does not apply ``RLIMIT_NPROC`` to
  root, so it protects nothing when Foundry runs as root; cgroups do.
* **cgroups (v1)** where Foundry may create them (it runs as root, or was delegated the hierarchy):
  one ``pids`` and one ``memory`` cgroup per sandbox, below the cgroups Foundry itself runs in. They
  cap the sandbox as a whole, count every process whatever its uid, and tell afterwards that the cap
  was hit (``pids.events``, ``memory.oom_control``).

Disk usage of the sandbox directory is measured by the provider's watchdog (`watchdog`); a limit hit
stops the sandbox with an error that names the limit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "RLIMITS_ENV",
    "Cgroups",
    "SandboxLimits",
    "apply_rlimits",
    "encode_rlimits",
    "limits_mechanism",
]

log = logging.getLogger(__name__)

#: The launcher's environment variable carrying the rlimits to set (taken out before the server runs).
RLIMITS_ENV = "FOUNDRY_SANDBOX_RLIMITS"
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_MB = 1024 * 1024
_RLIMITS = {
    "nproc": resource.RLIMIT_NPROC,
    "fsize": resource.RLIMIT_FSIZE,
    "cpu": resource.RLIMIT_CPU,
    "data": resource.RLIMIT_DATA,
}


@dataclass(frozen=True)
class SandboxLimits:
    """What one sandbox may use; 0 turns a limit off. Setting names are in the error messages.

    Attributes:
        memory_mb: memory of the whole sandbox (cgroup), else of each process (``RLIMIT_DATA``).
        max_processes: processes (and threads) of the sandbox at once.
        cpu_seconds: CPU time of each process (``RLIMIT_CPU``).
        disk_mb: disk usage of the sandbox directory (checked every ``check_interval_s``); also the
            largest file any process may write.
        max_files: files and directories in the sandbox directory (checked with ``disk_mb``): a
            file system's inodes run out long before its bytes with empty files.
        check_interval_s: how often the watchdog measures the sandbox.
    """

    memory_mb: int = 4096
    max_processes: int = 512
    cpu_seconds: int = 4 * 3600
    disk_mb: int = 20 * 1024
    max_files: int = 1_000_000
    check_interval_s: float = 2.0

    def named(self, field: str) -> str:
        """``sandbox.<field> = <value>``: how an error names the limit that was hit."""
        return f"sandbox.{field} = {getattr(self, field)}"


def encode_rlimits(limits: SandboxLimits, *, memory_by_cgroup: bool) -> str:
    """The launcher's rlimit setting (``name=value,...``) for ``limits``."""
    values = {
        "nproc": limits.max_processes,
        "fsize": limits.disk_mb * _MB,
        "cpu": limits.cpu_seconds,
        "data": 0 if memory_by_cgroup else limits.memory_mb * _MB,
    }
    return ",".join(f"{name}={value}" for name, value in values.items() if value > 0)


def apply_rlimits(encoded: str) -> None:
    """Set the rlimits `encode_rlimits` described on this process (soft = hard, so that nothing in
    the sandbox can raise them again). Raises ValueError for a malformed setting."""
    for item in filter(None, encoded.split(",")):
        name, _, value = item.partition("=")
        limit = int(value)
        resource.setrlimit(_RLIMITS[name], (limit, limit))


def _own_cgroup(controller: str) -> Path | None:
    """The directory of the ``controller`` cgroup this process runs in (cgroup v1), if mounted."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            directory = _CGROUP_ROOT / controller / path.lstrip("/")
            return directory if directory.is_dir() else None
    return None


class Cgroups:
    """The ``pids`` and ``memory`` cgroups of one sandbox, where this machine lets Foundry make them.

    Blocking (file system): call from a thread in async code.
    """

    def __init__(self, group: str, sandbox_id: str, limits: SandboxLimits) -> None:
        self.limits = limits
        self.dirs: dict[str, Path] = {}
        wanted = {"pids": limits.max_processes, "memory": limits.memory_mb}
        for controller, value in wanted.items():
            if value <= 0:
                continue
            parent = _own_cgroup(controller)
            if parent is None:
                continue
            directory = parent / group / sandbox_id
            try:
                self._make(directory)
                if controller == "pids":
                    (directory / "pids.max").write_text(str(value))
                else:
                    (directory / "memory.limit_in_bytes").write_text(str(value * _MB))
                    # The jail's own tmpfs lives in memory: it is charged here too.
                    with contextlib.suppress(OSError):  # absent when the kernel has no swap accounting
                        (directory / "memory.memsw.limit_in_bytes").write_text(str(value * _MB))
            except OSError as exc:
                log.info("no %s cgroup for sandbox %s (%s): using rlimits only", controller, sandbox_id, exc)
                continue
            self.dirs[controller] = directory

    @staticmethod
    def _make(directory: Path) -> None:
        if directory.exists():
            # Left by an earlier run that died: processes in it are that sandbox's leftovers.
            Cgroups._kill_members(directory)
            with contextlib.suppress(OSError):
                directory.rmdir()
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def memory(self) -> bool:
        return "memory" in self.dirs

    def enter_files(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes its pid to, to enter these cgroups."""
        return [str(directory / "cgroup.procs") for directory in self.dirs.values()]

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run by a shell that first moves itself into these cgroups (then ``exec``s it), so
        that every process of the sandbox starts inside them. Unchanged when there are none."""
        files = self.enter_files()
        if not files:
            return argv
        script = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
        return ["/bin/sh", "-c", script, "sh", *files, "--", *argv]

    def hit(self) -> str | None:
        """The limit that was hit, named for the user, or None."""
        pids = self.dirs.get("pids")
        if pids is not None and _counter(pids / "pids.events", "max") > 0:
            return (
                f"it reached its process limit ({self.limits.named('max_processes')}): "
                "a program started processes without end (a fork bomb?)"
            )
        memory = self.dirs.get("memory")
        if memory is not None and _counter(memory / "memory.oom_control", "oom_kill") > 0:
            limit = self.limits.named("memory_mb")
            return f"it ran out of memory: a process was killed at its memory limit ({limit})"
        return None

    def processes(self) -> int:
        """How many processes the sandbox runs (its ``pids`` cgroup), or -1 when unknown."""
        pids = self.dirs.get("pids")
        if pids is None:
            return -1
        try:
            return int((pids / "pids.current").read_text())
        except (OSError, ValueError):
            return -1

    def remove(self) -> None:
        """Kill what is left in the cgroups and remove them (they must be empty to go)."""
        for directory in self.dirs.values():
            self._kill_members(directory)
            for _ in range(50):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    # Killed processes take a moment to leave the cgroup.
                    self._kill_members(directory)
                    time.sleep(0.02)
            else:
                log.warning("could not remove the sandbox cgroup %s", directory)
            with contextlib.suppress(OSError):
                directory.parent.rmdir()  # the provider's group, once its last sandbox is gone

    @staticmethod
    def _kill_members(directory: Path) -> None:
        try:
            pids = [int(pid) for pid in (directory / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def limits_mechanism(group: str, limits: SandboxLimits) -> str:
    """How limits are enforced on this machine, for ``/readyz`` (creates and removes a probe cgroup;
    blocking)."""
    probe = Cgroups(group, f"probe-{os.getpid()}", limits)
    found = sorted(probe.dirs)
    probe.remove()
    if found:
        return f"{' and '.join(found)} cgroups per sandbox, plus rlimits inside the jail"
    return "rlimits inside the jail only (no cgroup can be created here)"


def _counter(path: Path, name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return int(value)
    except (OSError, ValueError) as exc:
        log.debug("cannot read %s: %s", path, exc)
    return 0
