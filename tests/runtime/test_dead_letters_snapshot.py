"""An organization's dead letters show in its snapshot, so its members can see work that is stuck."""

from __future__ import annotations

import sqlite3

from foundry.runtime.inprocess import InProcessRuntime


async def test_organization_snapshot_counts_and_lists_its_dead_letters(runtime: InProcessRuntime) -> None:
    org = runtime.actor("organization", "acme")
    assert (await org.call("member_role", {"userId": "nobody"}))["role"] is None  # wakes and migrates
    path = runtime.host("organization", 0).path_for("acme")
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO profile(id, organization_id, kind, github_login, github_account_id, display_name, "
            "installation_status, default_model, created_at, updated_at) "
            "VALUES (1, 'acme', 'organization', 'acme', 7, 'ACME', 'connected', 'opus', 1, 1)"
        )
    assert (await org.call("get"))["deadLetters"] == {"count": 0, "items": []}

    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO foundry_outbox(role, key, name, body, command_id, created_at, status, attempts, "
            "last_error) VALUES ('task', ?, 'initialize', '{}', ?, 5, ?, ?, ?)",
            [
                ("t1", "c1", "dead", 20, "actor_unavailable: task/t1 could not wake"),
                ("t2", "c2", "pending", 1, "actor_unavailable: host restarting"),
            ],
        )
    letters = (await org.call("get"))["deadLetters"]
    assert letters["count"] == 1
    assert letters["items"] == [
        {
            "id": letters["items"][0]["id"],
            "role": "task",
            "key": "t1",
            "name": "initialize",
            "commandId": "c1",
            "attempts": 20,
            "lastError": "actor_unavailable: task/t1 could not wake",
            "createdAt": 5,
        }
    ]
