"""Helpers of the browser tests: a real ``foundry serve`` process, and a TCP proxy in front of it
whose connections the tests can cut (a network drop, as the browser sees it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "foundry" / "dashboard" / "dist"
AXE = ROOT / "foundry" / "dashboard" / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM = "/usr/bin/chromium"


class Server:
    """``foundry serve`` in mock mode (in-process actor runtime: fast to start) on a free port."""

    def __init__(self, data_dir: Path, agent_delay: str = "0.002", free_seats: int = 10) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / "serve.log"
        env = {
            **os.environ,
            "FOUNDRY_MODE": "mock",
            "FOUNDRY_PORT": str(self.port),
            "FOUNDRY_DATA_DIR": str(data_dir),
            "FOUNDRY_RUNTIME__BACKEND": "inprocess",
            "FOUNDRY_SANDBOX__AGENT_ENV": json.dumps({"FOUNDRY_DEMO_AGENT_DELAY": agent_delay}),
            "FOUNDRY_LOG_LEVEL": "WARNING",
            # Several members prompt in acme here; the free plan's one-seat limit is tested in
            # tests/billing, not by the dashboard flows.
            "FOUNDRY_STRIPE__FREE_SEATS": str(free_seats),
        }
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "foundry", "serve"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # The page's main thread is what the browser tests measure: the server, its sandboxes
            # and agents (which stream thousands of events) yield the CPU to the browser first.
            preexec_fn=lambda: os.nice(10),
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"foundry serve exited: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"foundry serve was not ready in {timeout}s: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()
        reap_sandboxes(self.data_dir)


def reap_sandboxes(data_dir: Path) -> list[int]:
    """Kills what is left of this server's sandboxes (``sandbox-agent`` and its agents run in
    sessions of their own, and ``foundry serve`` does not stop them when it exits); returns their
    pids. They are found by their ``HOME``, which the local provider sets to the sandbox directory."""
    marker = f"HOME={data_dir / 'sandboxes'}/".encode()
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if any(entry.startswith(marker) for entry in environ.split(b"\0")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
    return killed


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to the server. `cut()` aborts every open connection and refuses
    new ones until `restore()`: from the browser's side, the network went away and came back."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.blocked = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cuttable-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    def cut(self) -> None:
        def _cut() -> None:
            self.blocked = True
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()

        self._loop.call_soon_threadsafe(_cut)

    def restore(self) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "blocked", False)

    def close(self) -> None:
        async def shutdown() -> None:
            self.blocked = True
            for w in list(self._writers):
                w.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
