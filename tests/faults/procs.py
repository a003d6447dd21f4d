"""Processes of one `foundry serve` under test: start, stop, and find what it spawned through /proc.

Everything here reads /proc directly (no Ray client), so the harness sees the product the way an
operator's `ps` does. A process is identified by (pid, start time) so a recycled pid is never
mistaken for one the server started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Ray titles an actor's worker process after the actor class, with the actor's name when it has
#: one: ``ray::HostProcess``, ``ray::foundry.tasks:HostProcess.__init__``, ``ray::HostProcess.send``.
HOST_CLASS = "HostProcess"


def is_host(proc: Proc) -> bool:
    first = proc.cmdline.split(" ", 1)[0]
    return first.startswith("ray::") and HOST_CLASS in first


@dataclass(frozen=True)
class Proc:
    """One live process as /proc shows it."""

    pid: int
    ppid: int
    start: int  # clock ticks since boot: (pid, start) names a process uniquely
    cmdline: str
    cwd: str

    @property
    def ident(self) -> tuple[int, int]:
        return (self.pid, self.start)


def _read_proc(pid: int) -> Proc | None:
    base = Path("/proc") / str(pid)
    try:
        stat = (base / "stat").read_text()
        # The command name may contain spaces and parentheses: split after the last ")".
        rest = stat[stat.rindex(")") + 2 :].split()
        ppid, start = int(rest[1]), int(rest[19])
        cmdline = (base / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        try:
            cwd = os.readlink(base / "cwd")
        except OSError:
            cwd = ""
    except (OSError, ValueError, IndexError):
        return None  # gone meanwhile, or not ours to read
    return Proc(pid, ppid, start, cmdline, cwd)


def all_procs() -> list[Proc]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            proc = _read_proc(int(entry))
            if proc is not None:
                out.append(proc)
    return out


def alive(ident: tuple[int, int]) -> bool:
    proc = _read_proc(ident[0])
    return proc is not None and proc.start == ident[1] and not _is_zombie(ident[0])


def _is_zombie(pid: int) -> bool:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].split()[0] in ("Z", "X")


def descendants(root: int, procs: list[Proc] | None = None) -> list[Proc]:
    """Every live process below ``root`` in the process tree (not ``root`` itself)."""
    procs = procs if procs is not None else all_procs()
    children: dict[int, list[Proc]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
    out: list[Proc] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child.pid)
    return out


def under(path: str, root: Path) -> bool:
    return path == str(root) or path.startswith(str(root) + os.sep)


@dataclass
class ServerProcess:
    """`foundry serve` as a real subprocess on its own data dir and port, restartable in place."""

    workdir: Path
    agent_delay: str = "0"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    #: Every process seen belonging to this server, across restarts: checked for leftovers at the end.
    seen: dict[tuple[int, int], str] = field(default_factory=dict)
    webhook_secret: str = "fault-harness-webhook-secret"
    starts: int = 0

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def sandbox_root(self) -> Path:
        return self.data_dir / "sandboxes"

    @property
    def log_path(self) -> Path:
        return self.workdir / "serve.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            "FOUNDRY_MODE": "mock",
            "FOUNDRY_PORT": str(self.port),
            "FOUNDRY_DATA_DIR": str(self.data_dir),
            "FOUNDRY_LOG_LEVEL": "INFO",
            # A namespace per server: other Foundry instances on this machine never share its hosts.
            "FOUNDRY_RUNTIME__NAMESPACE": f"faults-{self.port}",
            "FOUNDRY_RUNTIME__OBJECT_STORE_BYTES": str(96 * 1024 * 1024),
            "FOUNDRY_SANDBOX__AGENT_ENV": f'{{"FOUNDRY_DEMO_AGENT_DELAY": "{self.agent_delay}"}}',
            "FOUNDRY_GITHUB__WEBHOOK_SECRET": self.webhook_secret,
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n===== harness: start #{self.starts + 1} at {time.time():.3f} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "foundry", "serve"],
                env=self.env(),
                cwd=str(self.workdir),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1

    def wait_ready(self, timeout: float = 150.0) -> float:
        """Block until ``/readyz`` answers 200; returns the seconds it took. Raises with the log tail."""
        assert self.proc is not None
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"foundry serve exited with {self.proc.returncode}\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    self.snapshot_processes()
                    return time.monotonic() - began
            time.sleep(0.3)
        raise RuntimeError(f"foundry serve not ready after {timeout:.0f}s\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 45.0) -> tuple[int | None, float]:
        """Signal the server (SIGTERM: clean stop; SIGKILL: a crash of the whole server at once).

        ``foundry serve`` supervises the real server, which runs in a session of its own with the
        local Ray's daemons. A crash is SIGKILL of that session's process group (server, GCS, raylet)
        and of the command's own group; killing only the command would let the server shut down
        cleanly instead. Returns (exit code, seconds to exit). A clean stop that overruns ``timeout``
        is escalated to that SIGKILL and reported as exit code None.
        """
        assert self.proc is not None
        self.snapshot_processes()
        began = time.monotonic()
        if sig == signal.SIGKILL:
            self._kill_all()
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
        try:
            code: int | None = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill_all()
            self.proc.wait()
            code = None
        return code, time.monotonic() - began

    def _kill_all(self) -> None:
        assert self.proc is not None
        groups = [p.pid for p in all_procs() if p.ppid == self.proc.pid]  # the supervised server
        groups.append(self.proc.pid)
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    # -------------------------------------------------------------------------------- what it runs

    def owned(self) -> list[Proc]:
        """Live processes of this server: its process tree, plus anything working in its data dir
        (sandbox servers lead their own session and outlive a killed parent)."""
        procs = all_procs()
        mine: dict[int, Proc] = {}
        if self.proc is not None and self.proc.poll() is None:
            for p in descendants(self.proc.pid, procs):
                mine[p.pid] = p
        for p in procs:
            if under(p.cwd, self.data_dir) or str(self.data_dir) in p.cmdline:
                mine[p.pid] = p
        # The children of those (an agent started by an orphaned sandbox server, a Ray worker).
        for p in list(mine.values()):
            for child in descendants(p.pid, procs):
                mine[child.pid] = child
        return sorted(mine.values(), key=lambda p: p.pid)

    def snapshot_processes(self) -> list[Proc]:
        procs = self.owned()
        for p in procs:
            self.seen.setdefault(p.ident, p.cmdline[:160])
        return procs

    def hosts(self) -> list[Proc]:
        return [p for p in self.snapshot_processes() if is_host(p)]

    def other_ray_workers(self) -> list[Proc]:
        """Ray worker processes that are not hosts (idle pool workers and the like).

        Ray's per-node agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) are not workers:
        the raylet shares their fate, so killing one takes the whole local node down.
        """
        return [
            p
            for p in self.snapshot_processes()
            if p.cmdline.startswith("ray::") and not is_host(p) and "Agent" not in p.cmdline.split(" ")[0]
        ]

    def sandbox_servers(self) -> list[Proc]:
        return [
            p
            for p in self.snapshot_processes()
            if under(p.cwd, self.sandbox_root) and "sandbox-agent" in p.cmdline.split(" ")[0]
        ]

    def agents(self) -> list[Proc]:
        return [
            p
            for p in self.snapshot_processes()
            if under(p.cwd, self.sandbox_root) and "foundry.demo_agent" in p.cmdline
        ]

    def host_role(self, proc: Proc) -> str:
        """Which host a process is: from its title when Ray put the actor name there, else from the
        actor databases it has open (best effort)."""
        first = proc.cmdline.split(" ", 1)[0]
        if first.startswith("ray::foundry.") and ":" in first:
            return first[len("ray::") : first.index(":")]
        roles: set[str] = set()
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{proc.pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{proc.pid}/fd/{fd}")
                    if under(target, self.data_dir):
                        rel = Path(target).relative_to(self.data_dir).parts
                        if rel and rel[0] not in ("sandboxes", "mock-remotes"):
                            roles.add(rel[0])
        if any(p.ppid == proc.pid and under(p.cwd, self.sandbox_root) for p in all_procs()):
            roles.add("sandbox")
        return ",".join(sorted(roles)) or "unknown"

    def leftovers(self) -> list[dict[str, object]]:
        """Processes of this server still alive (call after the final clean stop)."""
        left: dict[tuple[int, int], str] = {}
        for ident, cmd in self.seen.items():
            if alive(ident):
                left[ident] = cmd
        for p in self.owned():
            left.setdefault(p.ident, p.cmdline[:160])
        return [{"pid": pid, "cmdline": cmd} for (pid, _), cmd in sorted(left.items())]

    def reap(self) -> int:
        """Kill whatever of this server is still alive (so one run never leaks into the next)."""
        killed = 0
        for _ in range(3):
            targets = [ident for ident in self.seen if alive(ident)] + [p.ident for p in self.owned()]
            if not targets:
                break
            for pid, _start in set(targets):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            time.sleep(0.3)
        return killed
