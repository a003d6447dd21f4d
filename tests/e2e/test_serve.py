"""`foundry serve` as a newcomer runs it: a real process, a local Ray, health and readiness."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from foundry.drivers.sandbox.spawn import descendants
from tests.ports import free_port

pytestmark = pytest.mark.e2e


def log_lines(path: Path) -> list[str]:
    """The server's complete JSON log lines (its output also holds Uvicorn's and Ray's start-up
    banners; the last line may still be being written)."""
    text = path.read_text()
    return [line for line in text[: text.rfind("\n") + 1].splitlines() if line.startswith("{")]


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


#: Configured secrets that must never appear in the output (mock mode ignores the GitHub ones).
SECRETS = {
    "FOUNDRY_SECRET_KEY": "s3cret-key-for-cookies-0123456789",
    "FOUNDRY_METRICS_TOKEN": "metrics-token-123",
    "FOUNDRY_SANDBOX__AGENT_ENV": json.dumps({"ANTHROPIC_API_KEY": "sk-ant-never-in-logs-42"}),
}


def start_serve(
    env: dict[str, str], log_path: Path, *, nofile: tuple[int, int] | None = None
) -> subprocess.Popen[bytes]:
    """`foundry serve` as an operator starts it, its output in ``log_path`` (``nofile``: the soft and
    hard open-file limits it is started with, as after a login shell's ``ulimit -n 1024``)."""

    def limited() -> None:  # pragma: no cover - runs in the child before exec
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    with log_path.open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "foundry", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=limited,
        )


def actors_ls(env: dict[str, str]) -> dict[str, Any]:
    """What `foundry actors ls` prints for the server of ``env`` (it must succeed)."""
    listing = subprocess.run(
        [sys.executable, "-m", "foundry", "actors", "ls"], env=env, capture_output=True, text=True, timeout=60
    )
    assert listing.returncode == 0, listing.stderr[-2000:]
    hosts: dict[str, Any] = json.loads(listing.stdout)
    return hosts


def stop_serve(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Stop `foundry serve` as an operator does (SIGTERM to its group); SIGKILL after ``timeout``."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def soft_open_files(pid: int) -> int:
    line = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines() if "open files" in line)
    return int(line.split()[3])


def wait_ready(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> httpx.Response:
    """The first 200 of ``/readyz`` (within 90 s, while the server runs)."""
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, log_path.read_text()[-3000:]
        try:
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            if ready.status_code == 200:
                return ready
        except httpx.TransportError:
            pass
        time.sleep(0.3)


def test_serve_answers_health_and_readiness(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "FOUNDRY_PORT": str(port),
        "FOUNDRY_DATA_DIR": str(tmp_path / "data"),
        "FOUNDRY_LOG_FORMAT": "json",
        **SECRETS,
    }
    (tmp_path / "data").mkdir(mode=0o755)  # as an operator might have made it
    # Started with a soft limit of 1,024 (a login shell's): raised to the hard limit (a hard limit
    # under 4,096 is refused, see `tests/config/test_cli_startup.py`).
    hard_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    proc = start_serve(env, tmp_path / "serve.log", nofile=(1024, hard_limit))
    try:
        ready = wait_ready(proc, port, tmp_path / "serve.log")
        assert ready.json()["checks"]["runtime"]["ok"] is True
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        assert (tmp_path / "data").is_dir()
        # A second server on the same data directory is refused at once, naming the holder: it would
        # have started its own hosts on the same files and reaped this one's sandboxes.
        address_file = (tmp_path / "data" / "ray-address").read_text()
        # The local cluster's head process is recorded with its address, and the hosts' claim on the
        # data directory names it too: once it is gone the next start may take over at once, even
        # when its old port has been taken by something else since.
        head_pid = json.loads(address_file)["gcsPid"]
        assert Path(f"/proc/{head_pid}/comm").read_text().strip() == "gcs_server"
        assert json.loads((tmp_path / "data" / ".deployment.json").read_text())["gcsPid"] == head_pid
        second = subprocess.run(
            [sys.executable, "-m", "foundry", "serve"],
            env={**env, "FOUNDRY_PORT": str(free_port())},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stderr[-2000:]
        holder = (tmp_path / "data" / ".serve.lock").read_text().strip()
        assert f"is in use by another foundry serve (pid {holder})" in second.stderr, second.stderr
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
        assert (tmp_path / "data" / "ray-address").read_text() == address_file
        # An operator can see the hosts of the running server.
        hosts = actors_ls(env)
        assert hosts["foundry.user.0"]["running"] is True
        assert hosts["foundry.organization.0"]["running"] is True
        # The hosts run at normal priority (Ray's default for workers is nice 15, which starved them
        # beside any busy process); sandboxes lower their own.
        assert os.getpriority(os.PRIO_PROCESS, hosts["foundry.organization.0"]["pid"]) == 0
        # A host process that does not answer (a node away, a hung process) is listed as such, and
        # does not hide the others: the listing used to hang with no output.
        os.kill(hosts["foundry.task.0"]["pid"], signal.SIGSTOP)
        try:
            listed = actors_ls(env)
            # Readiness says why, too (a timeout used to give "actor runtime not answering: ").
            unready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=30)
        finally:
            os.kill(hosts["foundry.task.0"]["pid"], signal.SIGCONT)
        assert unready.status_code == 503
        # …naming the process that does not answer (the operator's next look is its stack).
        assert re.search(
            r"host process foundry\.\w+ gave no answer within", unready.json()["checks"]["runtime"]["detail"]
        ), unready.json()
        assert listed["foundry.task.0"]["running"] is False
        assert "no answer" in listed["foundry.task.0"]["unavailable"]
        assert listed["foundry.organization.0"]["running"] is True
        # Started with a login shell's 1,024 open files, the server (a socket per browser and per
        # request) and the hosts (about ten per active task) may use up to the hard limit.
        server = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
        for pid in (proc.pid, server, hosts["foundry.organization.0"]["pid"], hosts["foundry.task.0"]["pid"]):
            assert soft_open_files(pid) >= hard_limit, pid
        # Nothing of Foundry or of its Ray listens beyond this machine's loopback.
        listening = listening_addresses(proc.pid)
        assert any(name in ("gcs_server", "raylet") for name in listening.values()), listening
        exposed = {a: name for a, name in listening.items() if not a.startswith("127.0.0.1:")}
        assert exposed == {}
        token = Path.home() / ".ray" / "auth_token"
        if token.exists():
            assert token.stat().st_mode & 0o077 == 0
        # Every process's log reaches the operator, and one request id follows a task's creation
        # from the HTTP request through the organization's process to the task's and the sandbox's.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert client.post("/v1/auth/mock/sign-in", json={"login": "alice"}).status_code == 200
            created = None
            deadline = time.monotonic() + 60
            while created is None:
                response = client.post(
                    "/v1/organizations/acme/tasks",
                    json={"repoId": "910001", "prompt": "hello"},
                    headers={"X-Request-Id": "trace-me-7"},
                )
                if response.status_code == 201:
                    created = response.json()
                else:  # 404 until the organization's first sync is done
                    assert response.status_code == 404, response.text
                    assert time.monotonic() < deadline, "the organization never synced"
                    time.sleep(0.3)
            assert response.headers["x-request-id"] == "trace-me-7"
            # Metrics span every process: the API's and each host process's, labelled with it.
            scraped = client.get("/metrics", headers={"Authorization": "Bearer metrics-token-123"})
            assert scraped.status_code == 200, scraped.text
            by_process: dict[str, set[str]] = {}
            for family in text_string_to_metric_families(scraped.text):
                for sample in family.samples:
                    by_process.setdefault(sample.labels.get("process", "?"), set()).add(sample.name)
            assert "foundry_http_requests_total" in by_process["api"]
            assert "foundry_commands_total" in by_process["main"]
            assert {"foundry_instances_awake", "foundry_host_process_restarts_total"} <= by_process["tasks"]
            # An id that could forge log lines is replaced by a fresh one.
            forged = client.get("/healthz", headers={"X-Request-Id": 'x" rid=admin'})
            assert forged.headers["x-request-id"] not in ("", 'x" rid=admin')
        # The data (databases, transcripts, checkouts) is this user's alone, whatever the umask was.
        data = tmp_path / "data"
        assert data.stat().st_mode & 0o777 == 0o700
        databases = sorted(data.rglob("*.sqlite3"))
        assert databases
        assert [p for p in databases if p.stat().st_mode & 0o077] == []
        deadline = time.monotonic() + 60
        while True:
            lines = [json.loads(line) for line in log_lines(tmp_path / "serve.log")]
            traced = {(e["process"], e["logger"]) for e in lines if e.get("request_id") == "trace-me-7"}
            processes = {process for process, _ in traced}
            if {"api", "main", "tasks"} <= processes or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert {"api", "main", "tasks"} <= processes, traced
        assert "\x1b[" not in (tmp_path / "serve.log").read_text()  # no terminal colour codes
        assert any(
            e["msg"].startswith("host foundry.task.0 started") and e["process"] == "tasks" for e in lines
        )
        everything = (tmp_path / "serve.log").read_text()
        for name, value in (("secret key", "s3cret-key-for-cookies"), ("agent key", "sk-ant-never-in-logs")):
            assert value not in everything, f"the {name} is in the log"
    finally:
        stop_serve(proc)
    # An orderly stop reads as one: status 0, and no crash-like stack dump in the operator's log.
    assert proc.returncode == 0
    assert "SIGTERM received" not in (tmp_path / "serve.log").read_text()
    # Asked for JSON, the operator gets JSON only: Ray's, uvicorn's and the libraries' warnings too.
    other = [
        line
        for line in (tmp_path / "serve.log").read_text().splitlines()
        if line and not line.startswith("{")
    ]
    assert other == []


def test_a_dead_raylet_stops_the_server_with_a_failure_status_and_leaves_nothing(tmp_path: Path) -> None:
    """Ray does not restart a local raylet: the server used to stay up, unready, timing out every
    request. It now stops in order and exits 1, naming the cause, for the service manager to start
    it again."""
    port = free_port()
    env = {**os.environ, "FOUNDRY_PORT": str(port), "FOUNDRY_DATA_DIR": str(tmp_path / "data")}
    log_path = tmp_path / "serve.log"
    proc = start_serve(env, log_path)
    try:
        wait_ready(proc, port, log_path)
        tree = descendants(proc.pid)
        (raylet,) = [p for p in tree if Path(f"/proc/{p}/comm").read_text().strip() == "raylet"]
        os.kill(raylet, signal.SIGKILL)
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log_path.read_text()
    assert status == 1, output[-3000:]
    assert f"the local Ray cluster lost its raylet (pid {raylet}" in output
    assert [p for p in tree if _alive(p)] == []


def _alive(pid: int) -> bool:
    """Running (a zombie has exited; only its parent's reaping is left)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
