"""A backup of a running Foundry taken while it writes, restored into a fresh data dir and served again.

The server is the real HTTP app on the in-process runtime; the backup and the restore are the real
``foundry`` command in its own process, as an operator runs them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from foundry.db.migrate import seed_new_database
from foundry.runtime.keys import partition_dir_name, partition_of
from foundry.runtime.role import load_role
from tests.tasks.conftest import create_task, running_server, task_detail

#: Actor files beside the live ones, so the copy takes long enough for writes to land during it.
FILLER = 150
WRITERS = 4
SETTINGS_URL = "/v1/organizations/acme/settings"
AUDIT_URL = "/v1/organizations/acme/audit-log"


async def foundry(*args: str, data_dir: Path) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "foundry",
        *args,
        env={**env, "FOUNDRY_DATA_DIR": str(data_dir)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def add_filler(data_dir: Path, scratch: Path) -> None:
    """Idle github-data actors (real schema, seeded as the runtime seeds new instances)."""
    location = load_role("github-data").migrations_location
    for i in range(FILLER):
        key = f"filler-{i}"
        path = data_dir / "github-data" / partition_dir_name(partition_of(key)) / f"{key}.sqlite3"
        path.parent.mkdir(parents=True, exist_ok=True)
        await seed_new_database(path, location, scratch)


async def settings_names(client: httpx.AsyncClient) -> list[str]:
    """Display names from the audit log's settings changes, oldest first."""
    response = await client.get(AUDIT_URL, params={"kind": "organization.settings_updated", "limit": 1000})
    assert response.status_code == 200, response.text
    return [e["payload"]["changed"]["display_name"] for e in reversed(response.json())]


async def display_name(client: httpx.AsyncClient) -> str:
    response = await client.get("/v1/organizations/acme")
    assert response.status_code == 200, response.text
    return str(response.json()["settings"]["displayName"])


async def test_backup_during_writes_restores_every_acknowledged_write(tmp_path: Path) -> None:
    backup_dir = tmp_path / "backup"
    acked: list[tuple[float, str]] = []
    async with running_server(tmp_path / "live") as live:
        await add_filler(live.settings.data_dir, tmp_path / "templates")
        async with live.signed_in("carol") as carol:
            stop = asyncio.Event()

            async def writer(n: int) -> None:
                i = 0
                while not stop.is_set():
                    name = f"Acme {n}-{i}"
                    response = await carol.patch(SETTINGS_URL, json={"displayName": name})
                    assert response.status_code == 200, response.text
                    acked.append((time.monotonic(), name))
                    i += 1

            writers = [asyncio.create_task(writer(n)) for n in range(WRITERS)]
            while len(acked) < 20:
                await asyncio.sleep(0.01)
            cookies = dict(carol.cookies)
            started = time.monotonic()
            before = [name for _, name in acked]
            code, out, err = await foundry("backup", str(backup_dir), data_dir=live.settings.data_dir)
            finished = time.monotonic()
            stop.set()
            await asyncio.gather(*writers)
    assert code == 0, err
    summary: dict[str, Any] = json.loads(out)
    assert summary["skipped"] == []
    assert summary["files"] > FILLER
    assert (
        f"backup: {summary['files'] - 1}/{summary['files'] - 1} files" in err
    )  # every database, + secret_key
    # The load really ran while the copy was taken.
    assert any(started < t < finished for t, _ in acked), "no write was acknowledged during the backup"

    restored = tmp_path / "restored"
    code, out, err = await foundry("restore", str(backup_dir), data_dir=restored / "data")
    assert code == 0, err
    assert json.loads(out)["files"] == summary["files"]

    async with running_server(restored) as server, server.client(cookies=cookies) as carol:
        # The session cookie issued before the backup still signs carol in.
        app = (await carol.get("/v1/app")).json()
        assert app["auth"] == {"status": "signed_in", "currentUserId": "gh-5003"}, app
        # Sends still in an outbox at the cut are delivered after the restore: poll until settled.
        deadline = time.monotonic() + 20
        while True:
            names, current = await settings_names(carol), await display_name(carol)
            if set(before) <= set(names) and current in names:
                break
            missing = sorted(set(before) - set(names))
            assert time.monotonic() < deadline, (
                f"acknowledged before the backup but lost: {missing}; display name {current!r}, "
                f"last audited {names[-1:]!r}"
            )
            await asyncio.sleep(0.1)
        # Each writer's changes were committed in order, so the audit log holds a gap-free prefix of
        # each writer's changes, up to the organization's state at least. Copying the files one
        # after another instead loses the entries delivered between the audit log's copy and the
        # organization's.
        assert len(names) == len(set(names))
        assert current in {name for _, name in acked}
        for n in range(WRITERS):
            indices = sorted(int(name.split("-")[1]) for name in names if name.startswith(f"Acme {n}-"))
            assert indices == list(range(len(indices))), f"writer {n}: audit entries lost in the backup"

        response = await carol.patch(SETTINGS_URL, json={"displayName": "Acme restored"})
        assert response.status_code == 200, response.text
        task = await create_task(carol, prompt="Check the restored workspace")
        assert (await task_detail(carol, task["taskId"]))["title"]


async def test_a_task_waiting_for_a_sandbox_in_the_backup_starts_after_the_restore(tmp_path: Path) -> None:
    """A backup has no sandboxes and no record of running jobs: a task that waited in the sandbox
    queue at the cut used to stay `queued` after a restore, with a stale place, until someone
    opened it. Nobody touches it here: it must start on its own."""
    backup_dir = tmp_path / "backup"
    async with running_server(tmp_path / "live", max_running=1) as live, live.signed_in("alice") as alice:
        first = await create_task(alice, prompt="A slow note that holds the only slot")
        deadline = time.monotonic() + 60
        while (await task_detail(alice, first["taskId"]))["sessions"][0]["status"] != "running":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        second = await create_task(alice, prompt="Waiting for a slot")
        while (await task_detail(alice, second["taskId"]))["status"] != "queued":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        cookies = dict(alice.cookies)
        code, _, err = await foundry("backup", str(backup_dir), data_dir=live.settings.data_dir)
        assert code == 0, err
    # Restored in place of the lost data directory (mock mode's clone URLs name its path).
    shutil.rmtree(tmp_path / "live" / "data")
    code, _, err = await foundry("restore", str(backup_dir), data_dir=tmp_path / "live" / "data")
    assert code == 0, err
    async with (
        running_server(tmp_path / "live", max_running=1) as server,
        server.client(cookies=cookies) as alice,
    ):
        deadline = time.monotonic() + 60
        while True:  # the organization's list only: reading the task itself would wake it
            org = (await alice.get("/v1/organizations/acme")).json()
            summary = next(t for t in org["taskSummaries"] if t["taskId"] == second["taskId"])
            if summary["status"] == "idle":
                break
            assert time.monotonic() < deadline, summary
            await asyncio.sleep(0.3)
