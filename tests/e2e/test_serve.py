"""`foundry serve` as a newcomer runs it: a real process, a local Ray, health and readiness."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from foundry.drivers.sandbox.spawn import descendants

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening_addresses(root: int) -> dict[str, str]:
    """``address:port`` → process name, for every TCP socket listening in ``root``'s process tree."""
    listening: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                listening[fields[9]] = fields[1]  # inode → hex address:port
    found: dict[str, str] = {}
    for pid in [root, *descendants(root)]:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue  # exited meanwhile
        for link in links:
            inode = link.removeprefix("socket:[").removesuffix("]")
            if link.startswith("socket:[") and inode in listening:
                found[_address(listening[inode])] = name
    return found


def _address(hex_address: str) -> str:
    """``/proc/net/tcp*``'s ``HEX:PORT`` (32-bit words in host order) as ``host:port``."""
    address, port = hex_address.split(":")
    words = bytes.fromhex(address)
    raw = b"".join(words[i : i + 4][::-1] for i in range(0, len(words), 4))
    if raw[:12] == b"\0" * 10 + b"\xff" * 2:
        raw = raw[12:]  # an IPv4-mapped IPv6 address: the socket is IPv4's
    host = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
    return f"{host}:{int(port, 16)}"


def test_serve_answers_health_and_readiness(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "FOUNDRY_PORT": str(port), "FOUNDRY_DATA_DIR": str(tmp_path / "data")}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "foundry", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        ready = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        assert ready is not None
        assert ready.status_code == 200, (tmp_path / "serve.log").read_text()[-3000:]
        assert ready.json()["checks"]["runtime"]["ok"] is True
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        assert (tmp_path / "data").is_dir()
        # An operator can see the hosts of the running server.
        listing = subprocess.run(
            [sys.executable, "-m", "foundry", "actors", "ls"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listing.returncode == 0, listing.stderr[-2000:]
        hosts = json.loads(listing.stdout)
        assert hosts["foundry.user.0"]["running"] is True
        assert hosts["foundry.organization.0"]["running"] is True
        # Nothing of Foundry or of its Ray listens beyond this machine's loopback.
        listening = listening_addresses(proc.pid)
        assert any(name in ("gcs_server", "raylet") for name in listening.values()), listening
        exposed = {a: name for a, name in listening.items() if not a.startswith("127.0.0.1:")}
        assert exposed == {}
        token = Path.home() / ".ray" / "auth_token"
        if token.exists():
            assert token.stat().st_mode & 0o077 == 0
        # Every process's log reaches the operator: the hosts' lines appear in the server's output.
        deadline = time.monotonic() + 30
        while "host foundry.task.0 started" not in (tmp_path / "serve.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
