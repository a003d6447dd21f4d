"""Signals to the processes of `foundry serve`: a host process sent SIGTERM (an operator's `kill`, a
process manager) closes its hosts and comes back, instead of hanging with its calls unanswered; one
that is stopped fails the requests waiting for it; a server killed from outside is reported by its
supervisor."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_serve import actors_ls, log_lines, start_serve, stop_serve, wait_ready
from tests.ports import free_port

pytestmark = pytest.mark.e2e


def create_task(client: httpx.Client, prompt: str) -> str:
    """A task created through the API (retried while the organization's first sync runs)."""
    deadline = time.monotonic() + 60
    while True:
        response = client.post("/v1/organizations/acme/tasks", json={"repoId": "910001", "prompt": prompt})
        if response.status_code == 201:
            return str(response.json()["taskId"])
        assert response.status_code == 404, response.text  # not synced yet
        assert time.monotonic() < deadline, "the organization never synced"
        time.sleep(0.3)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_signals_to_the_processes_of_serve_end_in_answers_and_reports(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "FOUNDRY_PORT": str(port),
        "FOUNDRY_DATA_DIR": str(tmp_path / "data"),
        "FOUNDRY_LOG_FORMAT": "json",
    }
    proc = start_serve(env, tmp_path / "serve.log")
    try:
        wait_ready(proc, port, tmp_path / "serve.log")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert client.post("/v1/auth/mock/sign-in", json={"login": "alice"}).status_code == 200
            before = create_task(client, "written before the signal")
            hosts = actors_ls(env)
            old = hosts["foundry.task.0"]["pid"]
            other = hosts["foundry.organization.0"]["pid"]
            assert old != other
            signalled = time.monotonic()
            os.kill(old, signal.SIGTERM)
            # The process ends (it used to stay, answering nothing, forever)…
            while pid_alive(old):
                assert time.monotonic() - signalled < 30, "the signalled host process is still running"
                time.sleep(0.1)
            # …and Ray starts it again: the task written before is there, new ones are taken.
            wait_ready(proc, port, tmp_path / "serve.log")
            assert client.get(f"/v1/organizations/acme/tasks/{before}").status_code == 200
            after = create_task(client, "written after the signal")
            assert client.get(f"/v1/organizations/acme/tasks/{after}").status_code == 200
            assert time.monotonic() - signalled < 60
            hosts = actors_ls(env)
            cookies = client.cookies
            assert hosts["foundry.task.0"]["running"] is True
            assert hosts["foundry.task.0"]["pid"] not in (old, None)
            assert hosts["foundry.organization.0"]["pid"] == other  # the other process was left alone
        # The operator reads why the process went away and that it came back.
        deadline = time.monotonic() + 30
        while True:
            lines = [json.loads(line) for line in log_lines(tmp_path / "serve.log")]
            said = [e["msg"] for e in lines if e.get("process") == "tasks"]
            if any("restarted by Ray" in m for m in said) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert any(m.startswith("host process tasks received SIGTERM") for m in said), said[-10:]
        assert any("restarted by Ray" in m for m in said), said[-10:]
        # A host process that hangs (stopped, or its loop blocked) fails the requests that wait for
        # it within seconds, naming it: they used to wait for as long as it hung.
        stuck = hosts["foundry.task.0"]["pid"]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, cookies=cookies) as client:
            os.kill(stuck, signal.SIGSTOP)
            try:
                asked = time.monotonic()
                renamed = client.patch(f"/v1/organizations/acme/tasks/{before}", json={"title": "Renamed"})
                waited = time.monotonic() - asked
            finally:
                os.kill(stuck, signal.SIGCONT)
            assert renamed.status_code == 503, renamed.text
            assert renamed.json()["error"] == "actor_unavailable"
            assert "host process foundry.tasks is not answering" in renamed.json()["detail"]
            assert waited < 20
            # Once it answers again, so does the task.
            assert client.get(f"/v1/organizations/acme/tasks/{before}").status_code == 200
        # The server itself killed from outside (the kernel when out of memory, a mistaken `kill -9`)
        # used to end without a line: its supervisor says how it ended.
        (server,) = (int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split())
        os.kill(server, signal.SIGKILL)
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            stop_serve(proc)
    output = (tmp_path / "serve.log").read_text()
    assert status == 128 + signal.SIGKILL, output[-3000:]
    assert f"the server (pid {server}) was killed by SIGKILL" in output, output[-3000:]
    # Asked for JSON, the operator got JSON only through all of it: Ray's raylet lines about calls
    # cut short (printed as plain "(raylet) …" text) and Ray's colour codes in error texts included.
    assert [line for line in output.splitlines() if line and not line.startswith("{")] == []
    assert "\\u001b[" not in output
