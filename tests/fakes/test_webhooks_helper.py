"""The webhook replay helper signs like GitHub and serves real payloads."""

from __future__ import annotations

import hashlib
import hmac
import uuid

import pytest

from tests.fakes import webhooks


def test_signature_matches_githubs_documented_test_vector() -> None:
    # https://docs.github.com/webhooks/using-webhooks/validating-webhook-deliveries#testing-the-webhook-payload-validation
    headers = webhooks.signed_headers("It's a Secret to Everybody", b"Hello, World!", "ping")

    assert headers["X-Hub-Signature-256"] == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


def test_headers_carry_everything_github_sends() -> None:
    body = webhooks.dumps(webhooks.example("ping"))

    headers = webhooks.signed_headers(b"s3cret", body, "ping", delivery_id="d-1")

    assert headers["X-GitHub-Event"] == "ping"
    assert headers["X-GitHub-Delivery"] == "d-1"
    assert headers["X-GitHub-Hook-ID"]
    assert headers["X-GitHub-Hook-Installation-Target-Type"] == "integration"
    assert headers["X-GitHub-Hook-Installation-Target-ID"]
    assert headers["User-Agent"].startswith("GitHub-Hookshot/")
    assert headers["Content-Type"] == "application/json"
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Hub-Signature-256"], expected)


def test_delivery_ids_are_fresh_uuids_by_default() -> None:
    first = webhooks.signed_headers("s", b"{}", "push")["X-GitHub-Delivery"]
    second = webhooks.signed_headers("s", b"{}", "push")["X-GitHub-Delivery"]

    assert first != second
    assert uuid.UUID(first)


def test_example_returns_a_real_payload_for_the_action() -> None:
    payload = webhooks.example("pull_request", "opened")

    assert payload["action"] == "opened"
    assert payload["pull_request"]["head"]["ref"]
    assert payload["repository"]["clone_url"].startswith("https://github.com/")


def test_example_is_a_deep_copy() -> None:
    payload = webhooks.example("installation", "created")
    payload["installation"]["id"] = -1

    assert webhooks.example("installation", "created")["installation"]["id"] != -1


def test_every_event_foundry_handles_has_examples() -> None:
    for event in (
        "installation",
        "installation_repositories",
        "pull_request",
        "push",
        "ping",
        "check_run",
        "check_suite",
        "status",
        "create",
        "delete",
        "pull_request_review",
    ):
        assert webhooks.example(event)


def test_unknown_action_or_index_names_what_exists() -> None:
    with pytest.raises(KeyError, match="available actions"):
        webhooks.example("pull_request", "teleported")
    with pytest.raises(KeyError, match="no webhook examples"):
        webhooks.example("not_an_event")
