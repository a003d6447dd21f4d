"""Membership changes from GitHub reach every API process's membership cache at once."""

from __future__ import annotations

from typing import Any

from foundry.ids import user_id_for
from tests.github.conftest import GitHub, eventually
from tests.github.test_webhook_families import hook
from tests.http.auth_calls import ActorCalls
from tests.http.conftest import Server, second_process
from tests.http.test_auth_cache import ORG_PATH, client_of, cookie_header, within
from tests.http.test_realtime import frame, socket, subscribe


async def _role(server: Server, github_id: int) -> Any:
    result = await server.runtime.call(
        "organization", "acme", "member_role", {"userId": user_id_for(github_id)}
    )
    return result["role"]


async def test_a_member_removed_by_a_webhook_is_refused_by_every_process(
    server: Server, github: GitHub
) -> None:
    calls = ActorCalls(server.runtime)
    async with (
        server.signed_in("alice") as alice,
        second_process(server) as other,
        client_of(other, cookie_header(alice)) as b,
    ):
        await calls.prime(lambda: alice.get(ORG_PATH))
        await calls.prime(lambda: b.get(ORG_PATH))
        server.github.remove_member("acme", "alice")
        removed = hook("organization", "member_added")
        removed["action"] = "member_removed"
        removed["membership"]["user"].update(login="alice", id=5001)
        await github.send("organization", removed)

        async def gone() -> bool:
            return await _role(server, 5001) is None

        await eventually(gone, what="alice removed from acme's member list")
        for client in (alice, b):

            async def refused(c: Any = client) -> bool:
                return (await c.get(ORG_PATH)).status_code == 404

            await within(1.0, refused, f"{client.base_url} refusing the removed member")


async def test_an_admin_demoted_to_member_loses_admin_routes_in_every_process(
    server: Server, github: GitHub
) -> None:
    calls = ActorCalls(server.runtime)
    admin_only = f"{ORG_PATH}/billing"
    async with (
        server.signed_in("carol") as carol,
        second_process(server) as other,
        client_of(other, cookie_header(carol)) as b,
    ):
        for client in (carol, b):
            await calls.prime(lambda c=client: c.get(ORG_PATH))  # type: ignore[misc]
            assert (await client.get(admin_only)).status_code != 403
        server.github.add_member("acme", "carol", "member")
        await github.send("membership", hook("membership", "added"))

        async def demoted() -> bool:
            return await _role(server, 5003) == "member"

        await eventually(demoted, what="carol's role changed to member")
        for client in (carol, b):

            async def forbidden(c: Any = client) -> bool:
                return (await c.get(admin_only)).status_code == 403

            await within(1.0, forbidden, f"{client.base_url} refusing the demoted admin")
            assert (await client.get(ORG_PATH)).status_code == 200


async def test_a_member_removed_by_a_webhook_loses_the_live_topics_already_open(
    server: Server, github: GitHub
) -> None:
    """Access is checked at subscribe; a socket opened before the removal must not go on receiving
    the organization's events (nor be told `subscribed` again on it)."""
    async with (
        server.signed_in("alice") as alice,
        server.signed_in("carol") as carol,
        socket(server, alice.cookies["foundry_session"]) as ws,
    ):
        assert (await subscribe(ws, "organization:acme"))[-1]["event"] == "snapshot"
        server.github.remove_member("acme", "alice")
        removed = hook("organization", "member_added")
        removed["action"] = "member_removed"
        removed["membership"]["user"].update(login="alice", id=5001)
        await github.send("organization", removed)
        ended = await frame(ws, timeout=5.0)
        while ended.get("op") != "error":
            ended = await frame(ws, timeout=5.0)
        assert (ended["error"], ended["topic"]) == ("forbidden", "organization:acme")
        # An admin's later change reaches her no more, and subscribing again is refused.
        renamed = await carol.patch("/v1/organizations/acme/settings", json={"displayName": "Acme Secret"})
        assert renamed.status_code == 200, renamed.text
        again = await subscribe(ws, "organization:acme")
        assert [f.get("op") for f in again] == ["error"], again
        assert again[-1]["error"] == "forbidden"
