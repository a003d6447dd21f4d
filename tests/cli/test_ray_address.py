"""A configured Ray cluster address that does not answer stops `foundry serve` with a clear error, in
seconds, instead of a start-up that waits forever and ignores SIGTERM."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def not_ray() -> Iterator[int]:
    """A TCP server that accepts connections and never says anything: not a Ray cluster."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_serve_with_a_ray_address_nobody_answers_exits_naming_it(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    env = {
        **os.environ,
        "FOUNDRY_DATA_DIR": str(tmp_path / "data"),
        "FOUNDRY_PORT": str(_closed_port()),
        "FOUNDRY_RUNTIME__RAY_ADDRESS": address,
        # A joined process needs the deployment's GitHub App (mock mode's fake is the first process's).
        "FOUNDRY_GITHUB__APP_ID": "1",
        "FOUNDRY_GITHUB__PRIVATE_KEY": "not-checked-before-the-cluster-answers",
        "FOUNDRY_GITHUB__CLIENT_ID": "Iv1.test",
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "foundry", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    elapsed = time.monotonic() - started
    assert done.returncode != 0
    assert elapsed < 30, f"took {elapsed:.1f}s"
    output = done.stdout + done.stderr
    assert f"nothing answers at the Ray cluster address {address}" in output, output[-2000:]
    assert "Traceback" not in output  # a configuration mistake: one line, not a stack


def test_joining_something_that_is_not_ray_fails_by_the_deadline_and_the_process_exits(
    not_ray: int, tmp_path: Path
) -> None:
    # The join deadline is shortened here; the process must still exit although Ray's own wait for
    # the cluster never returns.
    script = textwrap.dedent(
        f"""
        import asyncio
        from foundry.runtime import ray_connect
        ray_connect.JOIN_TIMEOUT_S = 3
        asyncio.run(ray_connect.init_ray({{"address": "127.0.0.1:{not_ray}", "log_to_driver": False}}))
        """
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    elapsed = time.monotonic() - started
    assert done.returncode != 0
    assert elapsed < 20, f"took {elapsed:.1f}s"
    assert f"the Ray cluster at 127.0.0.1:{not_ray} (runtime.ray_address) did not let this process join" in (
        done.stderr
    ), done.stderr[-2000:]
