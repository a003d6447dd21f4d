"""Two `foundry serve` processes on one Ray, as behind a load balancer: the second joins the first
one's local cluster by address, and a user moves between them freely.

GitHub is the seeded fake, configured as a real GitHub App would be (mock mode's built-in fake is one
per process, and two processes must share one GitHub).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from foundry.drivers.github.fake import FakeGitHub, seed_mock
from foundry.drivers.sandbox.spawn import descendants
from foundry.mock import github_app_env, seed_mock_remotes
from tests.http.conftest import free_port

pytestmark = pytest.mark.e2e

ACME_ROCKET = "910001"


class Serve:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "foundry", "serve"],
            env={**env, "FOUNDRY_PORT": str(self.port)},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"not ready: {self.log.read_text()[-3000:]}")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def github_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    fake = seed_mock(FakeGitHub()).start()
    seed_mock_remotes(fake, tmp_path / "data" / "mock-remotes")
    yield github_app_env(fake, secrets.token_hex(20))
    fake.stop()


def sign_in(client: httpx.Client, login: str) -> None:
    """GitHub sign-in as a browser walks it: Foundry → the fake's consent → the callback."""
    start = client.get("/v1/auth/sign-in/github")
    assert start.status_code == 302, start.text
    consent = httpx.get(str(httpx.URL(start.headers["location"]).copy_add_param("login", login)))
    assert consent.status_code == 302, consent.text
    client.get(consent.headers["location"])
    assert client.get("/v1/auth/session").status_code == 200


def test_a_second_api_process_joins_the_first_ones_ray_and_serves_the_same_users(
    tmp_path: Path, github_env: dict[str, str]
) -> None:
    env = {
        **os.environ,
        **github_env,
        "FOUNDRY_DATA_DIR": str(tmp_path / "data"),
        "FOUNDRY_SECRET_KEY": secrets.token_urlsafe(48),
    }
    a = Serve(env, tmp_path / "a.log")
    b = c = None
    try:
        a.wait_ready()
        address = json.loads((tmp_path / "data" / "ray-address").read_text())["address"]
        b = Serve({**env, "FOUNDRY_RUNTIME__RAY_ADDRESS": address}, tmp_path / "b.log")
        # A process with another secret key would not verify the others' cookies: refused at start.
        c = Serve(
            {**env, "FOUNDRY_RUNTIME__RAY_ADDRESS": address, "FOUNDRY_SECRET_KEY": "another-" * 6},
            tmp_path / "c.log",
        )
        b.wait_ready()
        assert c.proc.wait(timeout=90) != 0
        assert "this process's secret key (FOUNDRY_SECRET_KEY) differs" in c.log.read_text()
        # Only the key: the other secrets' digests are keyed by it, so they could not be compared.
        assert "FOUNDRY_GITHUB__" not in c.log.read_text()
        # One line saying why, not the web framework's traceback of its start-up.
        assert "Foundry could not start: " in c.log.read_text()
        assert "Traceback" not in c.log.read_text()
        # Nor one with another data directory: hosts it (re)started would open empty databases.
        record = json.loads((tmp_path / "data" / "ray-address").read_text())
        other = {"FOUNDRY_DATA_DIR": str(tmp_path / "other"), "RAY_AUTH_MODE": record["authMode"]}
        d = Serve({**env, "FOUNDRY_RUNTIME__RAY_ADDRESS": address, **other}, tmp_path / "d.log")
        assert d.proc.wait(timeout=90) != 0
        assert "data directory (FOUNDRY_DATA_DIR) differs" in d.log.read_text()
        assert not list((tmp_path / "other").rglob("*.sqlite3"))
        # Nor one in another Ray namespace (a second set of hosts on the same files), nor one with
        # another GitHub App (it rewrites the hosts' secrets: a restarted host's GitHub calls fail).
        joiners = {
            "namespace": Serve(
                {**env, "FOUNDRY_RUNTIME__RAY_ADDRESS": address, "FOUNDRY_RUNTIME__NAMESPACE": "other"},
                tmp_path / "e.log",
            ),
            "secret FOUNDRY_GITHUB__CLIENT_SECRET differs": Serve(
                {
                    **env,
                    "FOUNDRY_RUNTIME__RAY_ADDRESS": address,
                    "FOUNDRY_GITHUB__CLIENT_SECRET": "another-secret",
                },
                tmp_path / "f.log",
            ),
            # Every secret the hosts read from the file, not only the App's.
            "secret FOUNDRY_METRICS_TOKEN differs": Serve(
                {**env, "FOUNDRY_RUNTIME__RAY_ADDRESS": address, "FOUNDRY_METRICS_TOKEN": "m" * 32},
                tmp_path / "g.log",
            ),
        }
        host_secrets = (tmp_path / "data" / "host-secrets.json").read_bytes()
        for expected, joiner in joiners.items():
            assert joiner.proc.wait(timeout=90) != 0, expected
            assert expected in joiner.log.read_text(), joiner.log.read_text()[-2000:]
        # A deployment whose API processes all joined a cluster started with `ray start` has no
        # record of the namespace in the data directory: the hosts' own hold on their files refuses.
        (tmp_path / "data" / "ray-address").rename(tmp_path / "ray-address.kept")
        try:
            unrecorded = Serve(
                {**env, "FOUNDRY_RUNTIME__RAY_ADDRESS": address, "FOUNDRY_RUNTIME__NAMESPACE": "other2"}
                | {"RAY_AUTH_MODE": record["authMode"]},
                tmp_path / "h.log",
            )
            assert unrecorded.proc.wait(timeout=90) != 0
            refusal = unrecorded.log.read_text()
            assert "is already served by the host processes of Ray namespace" in refusal, refusal
        finally:
            (tmp_path / "ray-address.kept").rename(tmp_path / "data" / "ray-address")
        # None of them rewrote the secrets the hosts read when they (re)start.
        assert (tmp_path / "data" / "host-secrets.json").read_bytes() == host_secrets

        with (
            httpx.Client(base_url=a.url, timeout=30) as via_a,
            httpx.Client(base_url=b.url, timeout=30) as via_b,
        ):
            sign_in(via_a, "alice")
            via_b.cookies = via_a.cookies  # signed in through A, signed in on B
            assert via_b.get("/v1/auth/session").json() == via_a.get("/v1/auth/session").json()
            deadline = time.monotonic() + 60
            while (
                created := via_b.post(
                    "/v1/organizations/acme/tasks", json={"repoId": ACME_ROCKET, "prompt": "hello"}
                )
            ).status_code == 404:  # until the organization's first sync
                assert time.monotonic() < deadline, created.text
                time.sleep(0.3)
            assert created.status_code == 201, created.text
            path = f"/v1/organizations/acme/tasks/{created.json()['taskId']}"

            cookie = "; ".join(f"{k}={v}" for k, v in via_a.cookies.items())
            with connect(
                b.url.replace("http", "ws", 1) + "/v1/realtime", additional_headers={"Cookie": cookie}
            ) as ws:
                ws.send(json.dumps({"op": "subscribe", "topic": f"task:acme:{created.json()['taskId']}"}))
                # Written through A, seen live on B's websocket and read through B.
                assert via_a.patch(path, json={"title": "Renamed through A"}).status_code == 200
                deadline = time.monotonic() + 10
                while "Renamed through A" not in ws.recv(timeout=max(0.1, deadline - time.monotonic())):
                    pass
            assert via_b.get(path).json()["title"] == "Renamed through A"
            # Read-your-writes across processes: each rename through A is in the very next read
            # through B, although B's snapshot cache hears of it only one event delivery later (the
            # client carries the seq its write committed).
            for n in range(20):
                title = f"Rename {n} through A"
                assert via_a.patch(path, json={"title": title}).status_code == 200
                via_b.cookies = via_a.cookies
                assert via_b.get(path).json()["title"] == title, n

            # B leaves (a rolling restart): it joined the cluster, so the hosts stay and A serves on.
            # (Uvicorn ends with the signal that stopped it, once its shutdown is complete.)
            assert b.stop() in (0, -signal.SIGTERM)
            left = b.log.read_text() + a.log.read_text()
            assert "Application shutdown complete" in b.log.read_text()
            assert "host process closed" not in left  # the hosts (and their sandboxes) kept running
            assert "stopped its sandboxes" not in left
            assert via_a.patch(path, json={"title": "After B left"}).status_code == 200
            assert via_a.get(path).json()["title"] == "After B left"
            assert httpx.get(f"{a.url}/readyz", timeout=10).status_code == 200
    finally:
        for server in (c, b, a):
            if server is not None:
                server.stop()


def test_a_joined_process_whose_cluster_head_is_gone_says_so_and_stops(
    tmp_path: Path, github_env: dict[str, str]
) -> None:
    """The head's control store (GCS) stops: a joined process used to report ready for the minute
    until Ray ended it without a word of Foundry's. It turns unready naming the cluster, then stops
    with a failure status and the reason, for its service manager to start it again."""
    env = {
        **os.environ,
        **github_env,
        "FOUNDRY_DATA_DIR": str(tmp_path / "data"),
        "FOUNDRY_SECRET_KEY": secrets.token_urlsafe(48),
    }
    a = Serve(env, tmp_path / "a.log")
    b = None
    try:
        a.wait_ready()
        address = json.loads((tmp_path / "data" / "ray-address").read_text())["address"]
        b = Serve({**env, "FOUNDRY_RUNTIME__RAY_ADDRESS": address}, tmp_path / "b.log")
        b.wait_ready()
        daemons = [
            p for p in descendants(a.proc.pid) if Path(f"/proc/{p}/comm").read_text().strip() == "gcs_server"
        ]
        (pid,) = daemons
        os.kill(pid, signal.SIGTERM)
        killed_at = time.monotonic()
        unready = None
        deadline = time.monotonic() + 20
        while unready is None and time.monotonic() < deadline:
            try:
                answer = httpx.get(f"{b.url}/readyz", timeout=10)
                if answer.status_code == 503:
                    unready = answer.json()
            except httpx.TransportError:
                break
            time.sleep(0.5)
        assert unready is not None, b.log.read_text()[-3000:]
        assert address in unready["checks"]["runtime"]["detail"]
        status = b.proc.wait(timeout=90)
        # About 20 s, as documented: Ray's own exit, a minute after the head went away, is too late.
        exited_after = time.monotonic() - killed_at
        output = b.log.read_text()
        assert status == 1, output[-3000:]
        assert exited_after < 40, output[-3000:]
        assert f"the Ray cluster at {address} has not answered" in output
    finally:
        for server in (b, a):
            if server is not None:
                server.stop()
