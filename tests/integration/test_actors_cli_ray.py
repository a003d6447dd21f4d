"""``foundry actors ls / dead / retry-dead`` as real processes against a running runtime on Ray."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import ray

from foundry.config import Settings
from foundry.runtime.keys import partition_dir_name, partition_of, shard_of
from foundry.runtime.ray_backend import RayRuntime
from tests.conftest import COUNTER_MODULE, make_settings
from tests.integration.conftest import REPO_ROOT

pytestmark = pytest.mark.ray


@pytest.fixture
async def quick_dead_runtime(ray_session: None, tmp_path: Path) -> AsyncIterator[RayRuntime]:
    """Hosts of their own (own namespace) whose outbox gives up after two attempts."""

    settings = make_settings(
        tmp_path / "data",
        runtime={
            "backend": "ray",
            "namespace": f"cli-{uuid.uuid4().hex[:8]}",
            "shards": {"counter": 2},
            "idle_seconds": 3600,
            "outbox_max_attempts": 2,
            "outbox_backoff_base_s": 0.05,
            "outbox_backoff_cap_s": 0.1,
        },
    )
    rt = RayRuntime(settings)
    await rt.start()
    yield rt
    await rt.stop_hosts()
    await rt.close()


def _foundry(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    import ray

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "FOUNDRY_DATA_DIR": str(settings.data_dir),
        "FOUNDRY_RUNTIME__NAMESPACE": settings.runtime.namespace,
        "FOUNDRY_RUNTIME__SHARDS": json.dumps(settings.runtime.shards),
        "FOUNDRY_RUNTIME__EXTRA_ROLES": json.dumps({"counter": COUNTER_MODULE}),
    }
    address = ray.get_runtime_context().gcs_address
    return subprocess.run(
        [sys.executable, "-m", "foundry", "actors", *args, "--address", address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_dead_letters_are_listed_and_retried_from_the_command_line(
    quick_dead_runtime: RayRuntime,
) -> None:
    rt = quick_dead_runtime
    settings = rt.settings
    target = "cli-target"
    broken = settings.data_dir / "counter" / partition_dir_name(partition_of(target)) / f"{target}.sqlite3"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"this is not a database" * 100)
    await rt.actor("counter", "cli-sender").send("send_many", {"sends": [{"to": target}]}, wait=True)
    deadline = time.monotonic() + 60
    while (await rt.dead_letters("counter", "cli-sender"))["count"] != 1:
        assert time.monotonic() < deadline, "the send never became a dead letter"
        await asyncio.sleep(0.05)

    host = f"foundry.counter.{shard_of('cli-sender', 2)}"
    ls = await asyncio.to_thread(_foundry, settings, "ls")
    assert ls.returncode == 0, ls.stderr
    listing = json.loads(ls.stdout)
    assert listing[host]["deadLetters"] == {"total": 1, "instances": {"cli-sender": 1}}
    assert "cli-sender" in listing[host]["awake"]
    # Where the host runs (its databases are on that node's disk), and how much work waits in it.
    assert listing[host]["node"]["id"] == ray.get_runtime_context().get_node_id()
    assert listing[host]["pid"] != os.getpid()
    assert listing[host]["queued"] == 0
    assert listing[host]["pending"] >= 0

    dead = await asyncio.to_thread(_foundry, settings, "dead", "--role", "counter", "--key", "cli-sender")
    assert dead.returncode == 0, dead.stderr
    letter = json.loads(dead.stdout)["items"][0]
    assert (letter["key"], letter["attempts"]) == (target, 2)

    broken.unlink()
    retry = await asyncio.to_thread(
        _foundry, settings, "retry-dead", "--role", "counter", "--key", "cli-sender"
    )
    assert retry.returncode == 0, retry.stderr
    assert json.loads(retry.stdout) == {"retried": 1}
    while (await rt.actor("counter", target).call("get"))["value"] != 1:
        assert time.monotonic() < deadline + 60, "the retried send never arrived"
        await asyncio.sleep(0.05)
    ls = await asyncio.to_thread(_foundry, settings, "ls")
    assert json.loads(ls.stdout)[host]["deadLetters"] == {"total": 0, "instances": {}}


async def test_listing_in_another_namespace_fails_naming_where_the_hosts_run(
    quick_dead_runtime: RayRuntime,
) -> None:
    # Asked without the deployment's namespace, a healthy cluster used to read "every host not
    # running", with no reason and exit status 0.
    settings = quick_dead_runtime.settings
    wrong = settings.model_copy(
        update={"runtime": settings.runtime.model_copy(update={"namespace": "not-the-deployments"})}
    )
    listed = await asyncio.to_thread(_foundry, wrong, "ls")
    assert listed.returncode == 1, listed.stdout
    assert (
        "no host process of this deployment answers in Ray namespace 'not-the-deployments'" in listed.stderr
    )
    assert settings.runtime.namespace in listed.stderr  # where they do run
    hosts = json.loads(listed.stdout)
    assert all(
        "in Ray namespace 'not-the-deployments'" in h["unavailable"]
        for h in hosts.values()
        if isinstance(h, dict)
    )
