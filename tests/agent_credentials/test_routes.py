"""Setting, listing and removing agent credentials over HTTP: admins only, per organization, values
never returned and never stored in plaintext, audited by name."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest

from actors.organization.agent_credentials import ALLOWED_NAMES
from tests.agent_credentials.conftest import add_globex_admin, credential_url, files_containing
from tests.http.conftest import Server

ACME_KEY = "sk-ant-acme-0123456789-secret-tail-WXYZ"
GLOBEX_KEY = "sk-ant-globex-9876543210-other-secret"


async def _audit(client: httpx.AsyncClient, kind: str, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for _ in range(200):
        response = await client.get("/v1/organizations/acme/audit-log", params={"kind": kind})
        assert response.status_code == 200, response.text
        events = response.json()
        if len(events) >= count:
            return events
        await asyncio.sleep(0.02)
    raise AssertionError(f"{count} {kind} audit events expected, got {events}")


async def test_an_admin_sets_lists_replaces_and_removes_a_credential_without_seeing_it(server: Server):
    async with server.signed_in("carol") as carol:
        assert (await carol.get(credential_url("acme"))).json() == []
        first = await carol.put(credential_url("acme", "ANTHROPIC_API_KEY"), json={"value": "x" * 40})
        assert first.status_code == 204, first.text
        assert first.content == b""
        replaced = await carol.put(credential_url("acme", "ANTHROPIC_API_KEY"), json={"value": ACME_KEY})
        assert replaced.status_code == 204, replaced.text
        short = await carol.put(credential_url("acme", "OPENAI_API_KEY"), json={"value": "short"})
        assert short.status_code == 204, short.text

        listed = await carol.get(credential_url("acme"))
        assert listed.status_code == 200
        entries = listed.json()
        assert [e["name"] for e in entries] == ["ANTHROPIC_API_KEY", "OPENAI_API_KEY"]
        assert set(entries[0]) == {"name", "setAt", "setBy", "last4"}
        assert entries[0]["setBy"] == "carol"
        assert entries[0]["last4"] == "WXYZ"
        assert isinstance(entries[0]["setAt"], int)
        # Four characters of a five-character value would say too much.
        assert entries[1]["last4"] is None
        assert ACME_KEY not in listed.text
        assert ACME_KEY not in (await carol.get("/v1/organizations/acme")).text

        # Nothing on disk holds the value in plaintext: not the organization's SQLite file (nor its
        # WAL), not the audit log's, not any other file of the data directory.
        assert files_containing(server.settings.data_dir, ACME_KEY) == []
        assert files_containing(server.settings.data_dir, "x" * 40) == []

        removed = await carol.delete(credential_url("acme", "ANTHROPIC_API_KEY"))
        assert removed.status_code == 204, removed.text
        again = await carol.delete(credential_url("acme", "ANTHROPIC_API_KEY"))
        assert again.status_code == 404
        assert again.json()["error"] == "not_found"
        assert [e["name"] for e in (await carol.get(credential_url("acme"))).json()] == ["OPENAI_API_KEY"]

        carol_id = (await carol.get("/v1/app")).json()["user"]["id"]
        set_events = await _audit(carol, "organization.agent_credential_set", 3)
        assert sorted(e["payload"]["name"] for e in set_events) == [
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_API_KEY",
            "OPENAI_API_KEY",
        ]
        assert all(e["payload"] == {"name": e["payload"]["name"]} for e in set_events)
        assert all(e["actorUserId"] == carol_id for e in set_events)
        removed_events = await _audit(carol, "organization.agent_credential_removed", 1)
        assert removed_events[0]["payload"] == {"name": "ANTHROPIC_API_KEY"}
        everything = await carol.get("/v1/organizations/acme/audit-log")
        assert ACME_KEY not in everything.text


async def test_only_admins_of_the_organization_reach_its_credentials(server: Server):
    add_globex_admin(server.github)
    put_body = {"value": GLOBEX_KEY}
    async with (
        server.signed_in("carol") as carol,
        server.signed_in("alice") as alice,
        server.signed_in("bob") as bob,
        server.signed_in("dave") as dave,
    ):
        assert (
            await carol.put(credential_url("acme", "ANTHROPIC_API_KEY"), json={"value": ACME_KEY})
        ).status_code == 204
        # dave administers globex: he manages globex's credentials and never sees or touches acme's.
        assert (
            await dave.put(credential_url("globex", "ANTHROPIC_API_KEY"), json=put_body)
        ).status_code == 204
        requests = [
            ("GET", credential_url("acme"), None),
            ("PUT", credential_url("acme", "ANTHROPIC_API_KEY"), put_body),
            ("DELETE", credential_url("acme", "ANTHROPIC_API_KEY"), None),
        ]
        for method, url, body in requests:
            # A member who is not an admin.
            refused = await alice.request(method, url, json=body)
            assert refused.status_code == 403, (method, refused.text)
            assert refused.json()["error"] == "forbidden"
            # Admins and members of another organization see no such organization.
            for outsider in (dave, bob):
                hidden = await outsider.request(method, url, json=body)
                assert hidden.status_code == 404, (method, hidden.text)
                assert hidden.json() == {"error": "not_found", "detail": "organization 'acme' not found"}
            async with server.client() as anonymous:
                assert (await anonymous.request(method, url, json=body)).status_code == 401
        # carol is only a member of globex.
        assert (await carol.get(credential_url("globex"))).status_code == 403
        # Each organization lists its own, unchanged by the refused attempts.
        acme = (await carol.get(credential_url("acme"))).json()
        globex = (await dave.get(credential_url("globex"))).json()
        assert [(e["name"], e["setBy"], e["last4"]) for e in acme] == [("ANTHROPIC_API_KEY", "carol", "WXYZ")]
        assert [(e["name"], e["setBy"], e["last4"]) for e in globex] == [
            ("ANTHROPIC_API_KEY", "dave", "cret")
        ]
        # A cross-site write is refused like every other write.
        forged = await carol.put(
            credential_url("acme", "OPENAI_API_KEY"),
            json=put_body,
            headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        )
        assert forged.status_code == 403
        assert [e["name"] for e in (await carol.get(credential_url("acme"))).json()] == ["ANTHROPIC_API_KEY"]


async def test_bad_names_and_values_are_422_naming_the_field(server: Server):
    async with server.signed_in("carol") as carol:
        for name in ("PATH", "LD_PRELOAD", "anthropic_api_key", "X" * 101):
            response = await carol.put(credential_url("acme", name), json={"value": ACME_KEY})
            assert response.status_code == 422, (name, response.text)
            body = response.json()
            assert body["error"] == "invalid_input"
            assert body["fields"] == ["name"], body
            if len(name) <= 100:
                # The answer says which names are allowed.
                assert all(allowed in body["detail"] for allowed in ALLOWED_NAMES), body
        unknown = await carol.delete(credential_url("acme", "PATH"))
        assert unknown.status_code == 422
        assert unknown.json()["fields"] == ["name"]
        secretish = "sk-live-value-that-must-not-echo"
        bad_values: list[Any] = [
            "",
            "x" * 4097,
            f"{secretish}\nINJECTED=1",
            f"{secretish}\r",
            f"{secretish}\x00",
            42,
            None,
        ]
        for value in bad_values:
            response = await carol.put(credential_url("acme", "ANTHROPIC_API_KEY"), json={"value": value})
            assert response.status_code == 422, (value, response.text)
            assert response.json()["fields"] == ["value"], response.text
            assert secretish not in response.text
        for body in ({}, {"value": ACME_KEY, "extra": 1}):
            response = await carol.put(credential_url("acme", "ANTHROPIC_API_KEY"), json=body)
            assert response.status_code == 422, response.text
        # The longest allowed value is fine; nothing invalid was stored.
        longest = await carol.put(credential_url("acme", "GEMINI_API_KEY"), json={"value": "k" * 4096})
        assert longest.status_code == 204
        assert [e["name"] for e in (await carol.get(credential_url("acme"))).json()] == ["GEMINI_API_KEY"]


async def test_values_sealed_under_another_secret_are_left_out_with_a_warning(
    server: Server, caplog: pytest.LogCaptureFixture
):
    async with server.signed_in("carol") as carol:
        assert (
            await carol.put(credential_url("acme", "ANTHROPIC_API_KEY"), json={"value": ACME_KEY})
        ).status_code == 204
        env = await server.runtime.call("organization", "acme", "agent_environment", {})
        assert env == {"ANTHROPIC_API_KEY": ACME_KEY}
        # The operator replaces the app secret (mock mode keeps it in the data directory).
        (server.settings.data_dir / "secret_key").write_text("a-different-app-secret-" + "z" * 40)
        with caplog.at_level(logging.WARNING):
            env = await server.runtime.call("organization", "acme", "agent_environment", {})
        assert env == {}
        assert "ANTHROPIC_API_KEY of acme cannot be decrypted" in caplog.text
        # The admin still sees it is set, and setting it again seals it under the new secret.
        assert [e["name"] for e in (await carol.get(credential_url("acme"))).json()] == ["ANTHROPIC_API_KEY"]
        assert (
            await carol.put(credential_url("acme", "ANTHROPIC_API_KEY"), json={"value": ACME_KEY})
        ).status_code == 204
        env = await server.runtime.call("organization", "acme", "agent_environment", {})
        assert env == {"ANTHROPIC_API_KEY": ACME_KEY}
