"""POST /v1/webhooks/github at the edge: signatures, headers, bodies, dedupe and routing."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.fakes.webhooks import dumps, example, owned_by, signature_256
from tests.github.conftest import ACME_INSTALLATION, ACME_LOGIN, HELLO_WORLD_ID, GitHub, eventually
from tests.http.conftest import Server


def comment_hook() -> dict[str, Any]:
    payload = owned_by(example("pull_request_review_comment", "created"), ACME_LOGIN)
    payload["installation"] = {"id": ACME_INSTALLATION}
    return payload


async def nothing_recorded(server: Server, github: GitHub) -> None:
    """Neither the organization's github-data nor the unrouted one holds a delivery, and no
    mailbox row was written for one."""
    assert await github.deliveries("acme") == {}
    assert await github.deliveries("app") == {}


async def test_a_redelivery_is_acknowledged_and_applied_once(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    delivery = str(uuid.uuid4())
    first = await github.deliver("pull_request_review_comment", comment_hook(), delivery_id=delivery)
    assert first.status_code == 202
    assert first.json() == {"ok": True, "deliveryId": delivery, "duplicate": False}
    await github.recorded(delivery)
    again = await github.deliver("pull_request_review_comment", comment_hook(), delivery_id=delivery)
    assert again.status_code == 202
    assert again.json()["duplicate"] is True
    recorded = await github.deliveries()
    assert recorded[delivery]["appliedCount"] == 1
    assert recorded[delivery]["status"] == "applied"
    items = await server.runtime.call(
        "github-data", "acme", "pr_items", {"repoId": HELLO_WORLD_ID, "number": 2}
    )
    assert len(items) == 1


async def test_wrong_secret_is_refused_with_a_logged_reason(
    server: Server, github: GitHub, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="foundry.webhooks.github"):
        response = await github.deliver(
            "pull_request_review_comment", comment_hook(), secret="not-the-secret"
        )
    assert response.status_code == 401
    assert response.json() == {
        "error": "unauthorized",
        "detail": "X-Hub-Signature-256 does not match the body",
    }
    assert "does not match" in caplog.text
    await nothing_recorded(server, github)


BAD_HEADERS: list[tuple[dict[str, Any], int, str]] = [
    ({"drop": ("X-Hub-Signature-256",)}, 401, "missing X-Hub-Signature-256 header"),
    ({"headers": {"X-Hub-Signature-256": "sha1=abc"}}, 400, "malformed X-Hub-Signature-256"),
    ({"drop": ("X-GitHub-Event",)}, 400, "X-GitHub-Event"),
    ({"drop": ("X-GitHub-Delivery",)}, 400, "X-GitHub-Delivery"),
    ({"headers": {"X-GitHub-Delivery": "../../etc/passwd"}}, 400, "X-GitHub-Delivery"),
]


async def test_missing_or_malformed_headers_are_refused(server: Server, github: GitHub) -> None:
    for change, status, detail in BAD_HEADERS:
        response = await github.deliver("pull_request_review_comment", comment_hook(), **change)
        assert response.status_code == status, change
        assert detail in response.json()["detail"], change
    await nothing_recorded(server, github)


async def test_a_body_that_is_not_a_json_object_is_400(server: Server, github: GitHub) -> None:
    for body in (b'{"action": "opened", ', b"[1, 2, 3]", b"\xff\xfe"):
        response = await github.deliver("pull_request", {}, body=body)
        assert response.status_code == 400, body
        assert response.json()["error"] == "bad_request"
    await nothing_recorded(server, github)


async def test_a_body_over_githubs_25_mb_cap_is_413(server: Server, github: GitHub) -> None:
    payload = comment_hook()
    payload["comment"]["body"] = "x" * (25 * 1024 * 1024)
    response = await github.deliver("pull_request_review_comment", payload)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    await nothing_recorded(server, github)


async def test_a_large_delivery_is_trimmed_and_applied(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    """A 5 MB delivery is far over the 1 MiB command limit; only the fields used travel on."""
    payload = comment_hook()
    payload["pull_request"]["body"] = "y" * (5 * 1024 * 1024)
    payload["comment"]["body"] = "z" * 200_000
    recorded = await github.send("pull_request_review_comment", payload)
    assert recorded["status"] == "applied"
    items = await server.runtime.call(
        "github-data", "acme", "pr_items", {"repoId": HELLO_WORLD_ID, "number": 2}
    )
    assert len(items[0]["body"]) == 65_536  # GitHub's own limit for a comment


async def test_a_delivery_missing_needed_fields_is_recorded_as_failed(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    payload = owned_by(example("pull_request", "opened"), ACME_LOGIN)
    payload["installation"] = {"id": ACME_INSTALLATION}
    del payload["pull_request"]["head"]
    delivery = str(uuid.uuid4())
    response = await github.deliver("pull_request", payload, delivery_id=delivery)
    assert response.status_code == 202
    recorded = await github.recorded(delivery)
    assert recorded["status"] == "failed"
    assert recorded["reason"] == "payload field pull_request.head is missing"
    # Failing is final: a redelivery is a duplicate, not a retry loop.
    again = await github.deliver("pull_request", payload, delivery_id=delivery)
    assert again.status_code == 202
    assert again.json()["duplicate"] is True
    assert (await github.deliveries())[delivery]["appliedCount"] == 1


async def test_an_unknown_installation_is_recorded_unrouted(server: Server, github: GitHub) -> None:
    payload = comment_hook()
    payload["installation"] = {"id": 424242}
    delivery = str(uuid.uuid4())
    response = await github.deliver("pull_request_review_comment", payload, delivery_id=delivery)
    assert response.status_code == 202
    recorded = await github.recorded(delivery, key="app")
    assert recorded["status"] == "ignored"
    assert recorded["reason"] == "installation 424242 is not known to this Foundry"
    ping = await github.deliver("ping", example("ping"))
    assert ping.status_code == 202
    await github.recorded(ping.json()["deliveryId"], key="app")


async def test_a_delivery_that_raced_the_installation_index_is_forwarded_once(
    server: Server, github: GitHub
) -> None:
    """Routed to the unrouted actor before acme's installation was registered, it is forwarded under
    the same command id once it is: applied once, in acme."""
    delivery = str(uuid.uuid4())
    from foundry.webhooks.github import trim_payload

    await server.runtime.actor("github-data", "app").send(
        "ingest_webhook",
        {
            "deliveryId": delivery,
            "event": "pull_request_review_comment",
            "action": "created",
            "installationId": ACME_INSTALLATION,
            "receivedAt": 1,
            "payload": trim_payload("pull_request_review_comment", comment_hook()),
        },
        command_id=f"github-delivery:{delivery}",
    )
    assert (await github.recorded(delivery, key="app"))["status"] == "ignored"  # not registered yet
    async with server.signed_in("alice"):
        redelivery = str(uuid.uuid4())
        await server.runtime.actor("github-data", "app").send(
            "ingest_webhook",
            {
                "deliveryId": redelivery,
                "event": "pull_request_review_comment",
                "action": "created",
                "installationId": ACME_INSTALLATION,
                "receivedAt": 2,
                "payload": trim_payload("pull_request_review_comment", comment_hook()),
            },
            command_id=f"github-delivery:{redelivery}",
        )
        assert (await github.recorded(redelivery, key="app"))["status"] == "forwarded"
        assert (await github.recorded(redelivery, key="acme"))["status"] == "applied"


async def test_form_encoded_deliveries_are_accepted(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    raw = urlencode({"payload": dumps(comment_hook()).decode()}).encode()
    delivery = str(uuid.uuid4())
    response = await github.deliver(
        "pull_request_review_comment",
        {},
        body=raw,
        delivery_id=delivery,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Hub-Signature-256": signature_256(github.secret, raw),
        },
    )
    assert response.status_code == 202, response.text
    assert (await github.recorded(delivery))["status"] == "applied"


async def test_acknowledgement_does_not_wait_for_processing(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    """202 comes back once the delivery is queued; the fake GitHub is made slow to show that no
    GitHub call happens in the request path (the sync it starts runs after the ack)."""
    payload = example("installation_repositories", "added")
    payload["installation"]["id"] = ACME_INSTALLATION
    payload["installation"]["account"].update(login="acme", id=7001, type="Organization")
    assert (await github.deliver("ping", example("ping"))).status_code == 202  # warm the connection
    server.github.latency = 0.5
    started = time.perf_counter()
    response = await github.deliver("installation_repositories", payload)
    elapsed = time.perf_counter() - started
    assert response.status_code == 202
    assert elapsed < 0.1, elapsed

    async def syncing_done() -> bool:
        status = await server.runtime.call("github-data", "acme", "status")
        return bool(status["syncStatus"] == "synced" and status["generation"] == 2)

    server.github.latency = 0.0
    await eventually(syncing_done, timeout=20, what="the resync the delivery started")


async def test_a_delivery_that_crashes_its_handler_is_isolated(
    server: Server, github: GitHub, acme: httpx.AsyncClient
) -> None:
    """A value no handler expects fails that delivery alone: what it had written is rolled back,
    the deliveries around it apply. (The HTTP edge already drops non-scalar values, so the malformed
    payload is handed to the mailbox directly, as a bug upstream of the handler would.)"""
    from foundry.webhooks.github import trim_payload

    broken = owned_by(example("pull_request", "opened"), ACME_LOGIN)
    broken["repository"].update(id=999_001, full_name="acme/ghost", name="ghost")
    trimmed = trim_payload("pull_request", broken)
    trimmed["pull_request"]["head"]["ref"] = ["not", "a", "string"]  # no handler expects a list
    first = str(uuid.uuid4())
    await server.runtime.actor("github-data", "acme").send(
        "ingest_webhook",
        {
            "deliveryId": first,
            "event": "pull_request",
            "action": "opened",
            "receivedAt": 1,
            "payload": trimmed,
        },
        command_id=f"github-delivery:{first}",
    )
    second = str(uuid.uuid4())
    assert (
        await github.deliver("pull_request_review_comment", comment_hook(), delivery_id=second)
    ).status_code == 202
    failed = await github.recorded(first)
    assert failed["status"] == "failed"
    assert failed["reason"].startswith("internal error while applying it")
    assert (await github.recorded(second))["status"] == "applied"
    repos = (await acme.get("/v1/organizations/acme")).json()["repos"]
    assert "999001" not in {r["id"] for r in repos}
    status = await server.runtime.call("github-data", "acme", "status")
    assert status["repositoryCount"] == 4  # acme's three and Hello-World (from the comment), no ghost
