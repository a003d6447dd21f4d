"""Webhook deliveries under load: applied in batches while a burst is still arriving, each exactly
once, a malformed one failing alone, and one organization broadcast per batch, not per delivery.

The burst is enqueued through the runtime as the HTTP tier enqueues it (``ingest_webhook`` under
``github-delivery:<id>``), all at once: faster than the instance records deliveries, so a backlog of
ingest commands waits in its mailbox, as under a real burst.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from typing import Any

import httpx

from foundry.webhooks.github import trim_payload
from tests.fakes.webhooks import example, owned_by
from tests.github.conftest import ACME_INSTALLATION, ACME_LOGIN, HELLO_WORLD_ID, GitHub, eventually
from tests.http.conftest import Server

TASK = f"pr-{HELLO_WORLD_ID}-2"  # PR #2 of Codertocat/Hello-World, the PR of every example
EDITS = 40
BACKLOG = 600
MALFORMED_EVERY = 50


def _body(event: str, payload: dict[str, Any], delivery: str) -> dict[str, Any]:
    payload = owned_by(payload, ACME_LOGIN)
    payload["installation"] = {"id": ACME_INSTALLATION}
    return {
        "deliveryId": delivery,
        "event": event,
        "action": payload.get("action"),
        "installationId": ACME_INSTALLATION,
        "receivedAt": 1,
        "payload": trim_payload(event, payload),
    }


def _title_edit(i: int, delivery: str) -> dict[str, Any]:
    payload = example("pull_request", "opened")
    payload["action"] = "edited"
    payload["pull_request"]["title"] = f"Burst {i}"
    payload["pull_request"]["updated_at"] = f"2026-03-01T10:{i // 60:02d}:{i % 60:02d}Z"
    return _body("pull_request", payload, delivery)


def _check_run(i: int, delivery: str) -> dict[str, Any]:
    payload = example("check_run", "completed", 1)
    payload["check_run"].update(head_sha=f"{i:040x}", pull_requests=[])
    if i % MALFORMED_EVERY == 0:
        del payload["check_run"]["name"]  # its handler needs it: recorded failed, alone
    return _body("check_run", payload, delivery)


async def test_a_burst_is_applied_while_it_is_still_being_recorded(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    """40 title edits of a pull request, then 600 CI deliveries right behind them: the task shows the
    last title while most of the burst still waits to be recorded (processing does not wait for the
    mailbox's backlog), every delivery is applied exactly once, and the organization broadcasts the
    edits in batches."""
    edits = [str(uuid.uuid4()) for _ in range(EDITS)]
    backlog = [str(uuid.uuid4()) for _ in range(BACKLOG)]
    bodies = [_title_edit(i, d) for i, d in enumerate(edits)]
    bodies += [_check_run(i, d) for i, d in enumerate(backlog)]

    async def enqueue(body: dict[str, Any]) -> None:
        await server.runtime.send(
            "github-data", "acme", "ingest_webhook", body, command_id=f"github-delivery:{body['deliveryId']}"
        )

    earlier = (await server.runtime.call("github-data", "acme", "status"))["deliveryCount"]
    async with github.recording() as events:
        burst = asyncio.gather(*(enqueue(b) for b in bodies))

        async def recorded_when_titled() -> int | None:
            if (await github.task(TASK) or {}).get("title") != f"Burst {EDITS - 1}":
                return None
            status = await server.runtime.call("github-data", "acme", "status")
            return int(status["deliveryCount"])

        recorded = await eventually(recorded_when_titled, timeout=60, what="the last title on the task")
        await burst
        # Recording is batched too (up to 100 deliveries a transaction), so a good part of the burst
        # may be recorded by then; what must not happen is processing waiting for all of it.
        assert recorded - earlier < EDITS + BACKLOG, (
            f"the edits were applied only once {recorded - earlier} of the burst's {EDITS + BACKLOG} "
            "deliveries were recorded: processing waited for the burst"
        )

        async def all_processed() -> dict[str, dict[str, Any]] | None:
            rows = await github.deliveries()
            mine = {d: rows[d] for d in [*edits, *backlog] if d in rows}
            done = len(mine) == EDITS + BACKLOG and all(r["status"] != "queued" for r in mine.values())
            return mine if done else None

        rows = await eventually(all_processed, timeout=60, what="every delivery of the burst processed")
    assert {r["appliedCount"] for r in rows.values()} == {1}
    malformed = {d for i, d in enumerate(backlog) if i % MALFORMED_EVERY == 0}
    for delivery, row in rows.items():
        if delivery in malformed:
            assert row["status"] == "failed", row
            assert "check_run.name" in row["reason"], row
        else:
            assert row["status"] == "applied", row
    assert (await github.task(TASK) or {})["title"] == f"Burst {EDITS - 1}"
    broadcasts = [
        e for e in events.named("taskSummariesUpdated") if TASK in {t["taskId"] for t in e.data["upserted"]}
    ]
    assert 1 <= len(broadcasts) <= EDITS // 2, f"{len(broadcasts)} broadcasts for {EDITS} edits of one task"


def _opened(number: int, delivery: str, title: str | None = None) -> dict[str, Any]:
    payload = example("pull_request", "opened")
    payload["number"] = number
    payload["pull_request"].update(number=number, title=title or f"Valid {number}")
    payload["pull_request"]["head"]["ref"] = f"branch-{number}"
    return _body("pull_request", payload, delivery)


async def test_a_delivery_the_organization_cannot_take_fails_alone_and_costs_no_other(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    """Deliveries are applied in batches with one organization event per batch: a value the
    organization refuses (a PR numbered -1) must fail that delivery alone, not the event of every
    delivery batched with it; text GitHub allows but Foundry will not show (control and direction
    override characters, an endless title) is cleaned rather than lost; a repository re-created
    under a name the mirror still holds replaces the old one; and the next full sync still works."""
    valid = {1000 + i: str(uuid.uuid4()) for i in range(60)}
    bodies = [_opened(n, d) for n, d in valid.items()]
    negative = str(uuid.uuid4())
    bodies.insert(20, _opened(-1, negative))
    hostile = str(uuid.uuid4())
    bodies.insert(40, _opened(2000, hostile, title="ctrl\u0000\u0007\u202etitle " + "x" * 1200))
    recreated = example("repository", "created")
    # A new repository under the name the mirror holds (deleted and re-created; the deletion's
    # delivery was lost).
    recreated["repository"].update(id=999_000_111, name="anvil", full_name="acme/anvil")
    reused = str(uuid.uuid4())
    bodies.insert(50, _body("repository", recreated, reused))

    await asyncio.gather(
        *(
            server.runtime.send(
                "github-data", "acme", "ingest_webhook", b, command_id=f"github-delivery:{b['deliveryId']}"
            )
            for b in bodies
        )
    )
    for delivery in [*valid.values(), negative, hostile, reused]:
        await github.recorded(delivery)
    rows = await github.deliveries()
    assert rows[negative]["status"] == "failed", rows[negative]
    assert "number" in rows[negative]["reason"], rows[negative]
    for delivery in [*valid.values(), hostile, reused]:
        assert rows[delivery]["status"] == "applied", rows[delivery]

    async def listed() -> dict[str, Any] | None:
        tasks = await github.tasks()
        wanted = [f"pr-{HELLO_WORLD_ID}-{n}" for n in valid]
        return tasks if all(t in tasks for t in wanted) else None

    tasks = await eventually(listed, timeout=30, what="every valid pull request listed")
    cleaned = tasks[f"pr-{HELLO_WORLD_ID}-2000"]["title"]
    assert cleaned.startswith("ctrltitle xxx"), cleaned[:40]
    assert len(cleaned) <= 1000
    assert cleaned.endswith("…")
    catalog = (await acme.get("/v1/organizations/acme")).json()["repos"]
    assert [r["id"] for r in catalog if r["fullName"] == "acme/anvil"] == ["999000111"], (
        rows[reused],
        catalog,
    )
    status = await github.sync()
    assert status["syncStatus"] != "error", status


async def test_a_mirrored_row_the_organization_cannot_take_does_not_fail_every_sync(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    """A pull request row an older version stored with a value the organization refuses: the next
    full syncs skip it (with a warning) instead of failing every time, for good."""
    await github.sync()
    mirrors = list((server.settings.data_dir / "github-data").rglob("acme.sqlite3"))
    assert len(mirrors) == 1, mirrors
    with sqlite3.connect(mirrors[0]) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(pull_requests)")]
        row = dict(zip(columns, db.execute("SELECT * FROM pull_requests LIMIT 1").fetchone(), strict=True))
        row.update(number=-1, title="stored by an older version", changed_generation=10**6)
        marks = ", ".join("?" for _ in columns)
        db.execute(f"INSERT INTO pull_requests ({', '.join(columns)}) VALUES ({marks})", list(row.values()))
    for _ in range(2):
        status = await github.sync()
        assert status["syncStatus"] == "synced", status
        organization = (await acme.get("/v1/organizations/acme")).json()
        assert organization["github"]["syncStatus"] == "synced", organization["github"]
    assert all("older version" not in t["title"] for t in (await github.tasks()).values())
