"""`foundry serve` owns every sandbox process it starts: a clean stop stops them, and a restart after
``kill -9`` of the whole server kills what the dead one left behind (then the session carries on).

The server runs as a real process; the sandboxes are real ``sandbox-agent`` servers with the demo agent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ports import free_port
from tests.procs import alive

pytestmark = pytest.mark.e2e

ACME_ROCKET = "910001"


def sandbox_processes(root: Path) -> dict[int, str]:
    """Live processes whose HOME is a sandbox directory under ``root`` (pid → command name)."""
    found: dict[int, str] = {}
    prefix = f"{root.resolve()}/".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if state != "Z" and any(item.startswith(b"HOME=" + prefix) for item in environ):
            found[int(entry.name)] = name
    return found


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.2)


@contextmanager
def serve(
    data_dir: Path, log_path: Path, backend: str, isolation: str = "bwrap"
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = {
        **os.environ,
        "FOUNDRY_SANDBOX__ISOLATION": isolation,
        "FOUNDRY_PORT": str(port),
        "FOUNDRY_DATA_DIR": str(data_dir),
        "FOUNDRY_RUNTIME__BACKEND": backend,
        "FOUNDRY_SANDBOX__AGENT_ENV": json.dumps({"FOUNDRY_DEMO_AGENT_DELAY": "0.005"}),
    }
    log = log_path.open("a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "foundry", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # A local Ray takes a while to start on a busy 2-core machine.
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.3)
        yield proc, url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@contextmanager
def signed_in(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/v1/auth/mock/sign-in", json={"login": "alice"}).status_code == 200
        wait_for(lambda: client.get("/v1/organizations/acme").status_code == 200, 60, "the organization")
        yield client


def create_task(client: httpx.Client, prompt: str) -> dict[str, Any]:
    """Create a task once the organization's repositories are synced (404 until then)."""

    def attempt() -> dict[str, Any] | None:
        response = client.post("/v1/organizations/acme/tasks", json={"repoId": ACME_ROCKET, "prompt": prompt})
        if response.status_code == 404:
            return None
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    result: dict[str, Any] = wait_for(attempt, 60, "the repositories to be synced")
    return result


def idle(client: httpx.Client, task_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        detail: dict[str, Any] = client.get(f"/v1/organizations/acme/tasks/{task_id}").json()
        session = detail["sessions"][0]
        assert session["status"] != "error", detail
        ok = detail["status"] == "idle" and session["status"] == "idle" and session["queuedMessages"] == 0
        return detail if ok else None

    result: dict[str, Any] = wait_for(check, 90, f"task {task_id} to be idle")
    return result


@pytest.mark.timeout(600)
@pytest.mark.parametrize("isolation", ["bwrap", "none"])
def test_a_killed_server_leaves_no_sandbox_running_and_the_session_carries_on(
    tmp_path: Path, isolation: str
) -> None:
    """Jailed, the sandboxes die with the server (bubblewrap's ``--die-with-parent``); unjailed they
    survive it, and the next start reaps them. Either way the session carries on afterwards."""
    data = tmp_path / "data"
    root = data / "sandboxes"
    log = tmp_path / "serve.log"
    with serve(data, log, "inprocess", isolation) as (proc, url), signed_in(url) as client:
        created = create_task(client, "First note")
        task_id, session_id = created["taskId"], created["sessionId"]
        idle(client, task_id)
        leftovers = sandbox_processes(root)
        assert "sandbox-agent" in leftovers.values(), leftovers
        proc.send_signal(signal.SIGKILL)  # the server only: its sandboxes run in their own sessions
        proc.wait(timeout=30)
    if isolation == "bwrap":
        wait_for(lambda: not alive(list(leftovers)), 10, f"the jails {leftovers} to die with the server")
    else:
        assert alive(list(leftovers)) == list(leftovers), (
            "the sandboxes died with the server (nothing to reap)"
        )
    try:
        with serve(data, log, "inprocess", isolation) as (_, url), signed_in(url) as client:
            wait_for(lambda: not alive(list(leftovers)), 30, f"leftovers {leftovers} to be reaped")
            response = client.post(
                f"/v1/organizations/acme/tasks/{task_id}/sessions/{session_id}/messages",
                json={"text": "Second note"},
            )
            assert response.status_code == 202, response.text
            time.sleep(0.5)
            idle(client, task_id)
            events = client.get(
                f"/v1/organizations/acme/tasks/{task_id}/sessions/{session_id}/events"
            ).json()["events"]
            assert [e["event"] for e in events].count("turnEnded") == 2
            assert any(e["event"] == "agentRestarted" for e in events)
        assert not sandbox_processes(root), "a clean stop left sandbox processes behind"
    finally:
        for pid in alive(list(leftovers)):  # never leave them running, even when the test fails
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(600)
def test_a_clean_stop_on_ray_leaves_no_sandbox_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    root = data / "sandboxes"
    with serve(data, tmp_path / "serve.log", "ray") as (proc, url), signed_in(url) as client:
        created = create_task(client, "A note on Ray")
        idle(client, created["taskId"])
        running = sandbox_processes(root)
        assert "sandbox-agent" in running.values(), running
        # What a terminal's Ctrl-C or a service manager does: signal the whole process group, which
        # a local Ray's daemons would share with the server if it were not supervised.
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=120)
        log_text = (tmp_path / "serve.log").read_text()
        # The hosts' last lines, logged a moment before Ray's log forwarding ends, reach the operator.
        assert "stopped its sandboxes" in log_text, log_text[-3000:]
        assert "host process closed: tasks" in log_text, log_text[-3000:]
        assert "did not arrive" not in log_text, log_text[-3000:]
        # Ray's core worker now and then aborts inside `ray.shutdown` (exit 128 + SIGABRT) after
        # everything else has stopped; any other non-zero status is a failed stop.
        assert code in (0, 128 + signal.SIGABRT), (code, log_text[-3000:])
    try:
        assert not alive(list(running)), f"{sandbox_processes(root)} outlived `foundry serve`"
    finally:
        for pid in alive(list(running)):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(600)
def test_killing_the_command_on_ray_still_stops_the_server_and_its_sandboxes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    root = data / "sandboxes"
    with serve(data, tmp_path / "serve.log", "ray") as (proc, url), signed_in(url) as client:
        created = create_task(client, "A note on Ray")
        idle(client, created["taskId"])
        running = sandbox_processes(root)
        assert "sandbox-agent" in running.values(), running
        proc.send_signal(signal.SIGKILL)  # the command the operator ran, not the server it started
        proc.wait(timeout=30)
        try:
            wait_for(lambda: not alive(list(running)), 90, f"sandbox processes {running} to stop")
            wait_for(lambda: _refused(url), 60, "the server to stop listening")
        finally:
            for pid in alive(list(running)):
                os.kill(pid, signal.SIGKILL)


def _refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=2)
    except httpx.TransportError:
        return True
    return False
