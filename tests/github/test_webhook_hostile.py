"""Signed deliveries that are hostile or misdirected: a clear 400 (never a 500 that also drops the
connection), and a repository of another account never joins this organization's catalog."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from tests.fakes.webhooks import example, owned_by
from tests.github.conftest import ACME_INSTALLATION, ACME_LOGIN, GitHub, eventually
from tests.http.conftest import Server

GLOBEX_LOGIN = "globex"  # another organization of the same Foundry, with its own installation

HOSTILE_BODIES: dict[str, bytes] = {
    "deep_arrays": b'{"action":"opened","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "deep_objects": b'{"action":"opened","x":' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001,
    "nan": b'{"action":"opened","installation":{"id":NaN}}',
    "huge_installation_id": b'{"action":"opened","installation":{"id":' + str(2**64).encode() + b"}}",
    "int64_overflow": b'{"action":"opened","installation":{"id":' + str(2**63).encode() + b"}}",
    "lone_surrogate": b'{"action":"opened","repository":{"full_name":"\\ud800"}}',
    "float_overflow": b'{"action":"opened","number":1e999}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
async def test_a_signed_hostile_body_is_400_and_the_connection_survives(
    server: Server, github: GitHub, name: str
) -> None:
    response = await github.deliver("pull_request", {}, body=HOSTILE_BODIES[name])
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "bad_request"
    assert body["detail"].startswith("request body is not valid JSON"), body
    # The same pooled client (and connection) takes the next delivery.
    ping = await github.deliver("ping", example("ping"))
    assert ping.status_code == 202
    assert await github.deliveries("acme") == {}


def _repository_of(login: str, repo_id: int, name: str) -> dict[str, Any]:
    payload = example("repository", "created")
    payload["installation"] = {"id": ACME_INSTALLATION}
    payload["repository"].update(id=repo_id, name=name, full_name=f"{login}/{name}")
    return owned_by(payload, login)


async def test_a_repository_of_another_account_is_ignored(
    server: Server, github: GitHub, acme: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """acme's installation delivers a repository owned by globex: recorded as ignored with the
    reason, logged, and neither the repository nor its pull request reaches acme."""

    async def catalog() -> dict[str, Any]:
        return {r["id"]: r for r in (await acme.get("/v1/organizations/acme")).json()["repos"]}

    with caplog.at_level(logging.WARNING, logger="actors.github_data.webhooks"):
        foreign = await github.send("repository", _repository_of(GLOBEX_LOGIN, 555_001, "secret-plans"))
        pull = example("pull_request", "opened")
        pull["installation"] = {"id": ACME_INSTALLATION}
        pull["repository"].update(id=555_001, name="secret-plans", full_name="globex/secret-plans")
        foreign_pull = await github.send("pull_request", owned_by(pull, GLOBEX_LOGIN))
    for outcome in (foreign, foreign_pull):
        assert outcome["status"] == "ignored", outcome
        assert outcome["reason"] == (
            "repository globex/secret-plans belongs to 'globex', not to this installation's account 'acme'"
        )
    assert "belongs to 'globex'" in caplog.text
    # The same delivery for acme's own account is applied (the check is not "ignore everything").
    own = await github.send("repository", _repository_of(ACME_LOGIN, 555_002, "open-plans"))
    assert own["status"] == "applied"

    async def own_listed() -> bool:
        return "555002" in await catalog()

    await eventually(own_listed, what="acme's own new repository in its catalog")
    listed = await catalog()
    assert "555001" not in listed
    tasks = await github.tasks("acme")
    assert not [t for t in tasks.values() if t["repoId"] == "555001"]


async def test_an_endless_account_login_is_refused_without_flooding_the_log(
    server: Server, github: GitHub, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever a sender puts in a field, the log line that names it stays a line."""
    created = example("installation", "created")
    created["installation"]["account"]["login"] = "x" * 5000
    with caplog.at_level(logging.INFO):
        response = await github.deliver("installation", created)
    assert response.status_code < 500, response.text
    assert len(response.text) < 2000
    assert max(len(r.getMessage()) for r in caplog.records) < 2000
