"""The one list of what Foundry needs from its GitHub App, and the manifest built from it."""

from __future__ import annotations

import pytest

from actors.github_data.webhooks import HANDLERS
from foundry.github_app import (
    ALWAYS_DELIVERED_EVENTS,
    OPTIONAL_PERMISSIONS,
    REQUIRED_EVENTS,
    REQUIRED_PERMISSIONS,
    build_manifest,
    missing_permissions,
)
from foundry.webhooks.github import _EVENTS as TRIMMED_EVENTS


def test_required_events_are_exactly_the_events_the_webhook_handlers_handle() -> None:
    handled = set(HANDLERS)
    assert set(REQUIRED_EVENTS) == handled - ALWAYS_DELIVERED_EVENTS
    # Events GitHub sends every App cannot be subscribed to, so they are handled but never required.
    assert handled >= ALWAYS_DELIVERED_EVENTS
    assert not set(REQUIRED_EVENTS) & ALWAYS_DELIVERED_EVENTS
    assert len(REQUIRED_EVENTS) == len(set(REQUIRED_EVENTS))


def test_every_required_event_keeps_its_fields_at_intake() -> None:
    # The edge trims each payload to what the event's handler reads; an event without an entry there
    # would reach its handler without its fields.
    assert set(REQUIRED_EVENTS) <= set(TRIMMED_EVENTS)


def test_the_manifest_asks_for_exactly_the_required_permissions_and_events() -> None:
    manifest = build_manifest("https://foundry.example.com/")
    assert manifest["url"] == "https://foundry.example.com"
    assert manifest["hook_attributes"] == {
        "url": "https://foundry.example.com/v1/webhooks/github",
        "active": True,
    }
    assert manifest["callback_urls"] == ["https://foundry.example.com/v1/auth/callback/github"]
    assert manifest["redirect_url"].startswith("https://foundry.example.com/")
    assert manifest["public"] is False
    assert manifest["request_oauth_on_install"] is False
    assert manifest["default_permissions"] == {**REQUIRED_PERMISSIONS, **OPTIONAL_PERMISSIONS}
    assert manifest["default_events"] == REQUIRED_EVENTS
    assert manifest["name"] == "Foundry foundry.example.com"


@pytest.mark.parametrize("bad", ["", "foundry.example.com", "ftp://x", "https://"])
def test_the_manifest_needs_an_http_url(bad: str) -> None:
    with pytest.raises(ValueError, match="FOUNDRY_APP_URL"):
        build_manifest(bad)


def test_a_name_longer_than_github_allows_is_refused_and_the_default_is_cut() -> None:
    with pytest.raises(ValueError, match="34"):
        build_manifest("https://f.example.com", name="x" * 35)
    assert len(build_manifest("https://" + "a" * 60 + ".example.com")["name"]) <= 34


def test_write_is_not_met_by_read_and_admin_meets_everything() -> None:
    granted = {name: "read" for name in REQUIRED_PERMISSIONS}
    assert missing_permissions(granted) == {
        name: "write (has read)" for name, need in REQUIRED_PERMISSIONS.items() if need == "write"
    }
    assert missing_permissions({name: "admin" for name in REQUIRED_PERMISSIONS}) == {}
    assert missing_permissions({})["metadata"] == "read (has none)"
