"""GitHub webhook ingest: verify, trim, route, enqueue — and answer within milliseconds.

The request path does no GitHub call and no processing: it verifies ``X-Hub-Signature-256``
over the raw body (constant time), parses the JSON, keeps only the fields the handlers read (so the
command stays far below the mailbox's 1 MiB limit even for 25 MB deliveries), finds the owning
organization from the installation id (the app shell's index, cached in the process) and durably
enqueues ``ingest_webhook`` on that organization's github-data actor with command id
``github-delivery:<X-GitHub-Delivery>``. The mailbox's command-id dedupe is the delivery record: a
redelivery is acknowledged with the stored outcome and never applied twice. Only once that send
returned does the caller get 202.

Routing: a known installation → its organization. An ``installation`` event of an installation not
known yet (a brand-new install, or state that was wiped) → the organization derived from the
installation's account, which creates itself from it. Anything else without a known installation
(``ping`` of a repository hook, a stray delivery) → github-data key ``app``, where it is recorded too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from foundry import strict_json
from foundry.clock import Clock
from foundry.errors import InvalidInput, NotFound
from foundry.ids import APP_SHELL_ID, organization_id_for
from foundry.runtime.client import Runtime
from foundry.runtime.keys import validate_key
from foundry.webhooks.single_flight import SingleFlight

log = logging.getLogger(__name__)

#: GitHub caps webhook payloads at 25 MB; larger deliveries are refused (413) before being read whole.
MAX_WEBHOOK_BYTES = 25 * 1024 * 1024
#: Trimmed payloads above this are replaced by a marker, so the delivery is recorded as failed
#: instead of being refused by the 1 MiB command limit (nothing is lost silently).
MAX_TRIMMED_BYTES = 900 * 1024
MAX_TEXT_CHARS = 65_536  # GitHub's own limit for comment and PR bodies
_DELIVERY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
_EVENT_RE = re.compile(r"^[a-z_]{1,100}$")
_SIGNATURE_RE = re.compile(r"^sha256=([0-9a-fA-F]{64})$")


class WebhookRejected(Exception):
    """A delivery refused before anything was recorded; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(status, code, detail)
        self.status = status
        self.code = code
        self.detail = detail


# ------------------------------------------------------------------------------------------ trimming

Spec = dict[str, Any]  # field -> True (keep a scalar), a nested Spec, or [Spec] (a list of objects)

_USER: Spec = {"login": True, "id": True, "avatar_url": True, "type": True}
_REPO: Spec = {
    "id": True,
    "full_name": True,
    "name": True,
    "owner": {"login": True},
    "private": True,
    "default_branch": True,
    "archived": True,
    "clone_url": True,
    "html_url": True,
    "updated_at": True,
}
_PR: Spec = {
    "number": True,
    "id": True,
    "title": True,
    "state": True,
    "draft": True,
    "merged": True,
    "merged_at": True,
    "closed_at": True,
    "updated_at": True,
    "html_url": True,
    "user": _USER,
    "head": {"ref": True, "sha": True},
    "base": {"ref": True},
}
_COMMENT: Spec = {
    "id": True,
    "body": True,
    "path": True,
    "line": True,
    "html_url": True,
    "created_at": True,
    "updated_at": True,
    "user": _USER,
}
_PR_REFS: list[Spec] = [{"number": True, "head": {"ref": True, "sha": True}}]
_COMMON: Spec = {
    "action": True,
    "installation": {"id": True, "account": _USER, "target_type": True},
    "repository": _REPO,
    "organization": {"login": True, "id": True},
}
_EVENTS: dict[str, Spec] = {
    "ping": {"zen": True, "hook_id": True},
    "installation_repositories": {
        "repository_selection": True,
        "repositories_added": [{"id": True, "full_name": True}],
        "repositories_removed": [{"id": True, "full_name": True}],
    },
    "repository": {"changes": {"repository": {"name": {"from": True}}}},
    "member": {"member": _USER},
    "membership": {"member": _USER, "scope": True, "team": {"id": True, "slug": True}},
    "organization": {"membership": {"role": True, "state": True, "user": _USER}, "user": _USER},
    "pull_request": {"number": True, "pull_request": _PR},
    "pull_request_review": {
        "pull_request": _PR,
        "review": {
            "id": True,
            "body": True,
            "state": True,
            "html_url": True,
            "submitted_at": True,
            "user": _USER,
        },
    },
    "pull_request_review_comment": {"pull_request": _PR, "comment": _COMMENT},
    "issue_comment": {
        "issue": {"number": True, "pull_request": {"url": True, "html_url": True}},
        "comment": _COMMENT,
    },
    "check_suite": {
        "check_suite": {
            "id": True,
            "head_sha": True,
            "head_branch": True,
            "status": True,
            "conclusion": True,
            "app": {"id": True, "slug": True},
            "pull_requests": _PR_REFS,
        }
    },
    "check_run": {
        "check_run": {
            "id": True,
            "name": True,
            "head_sha": True,
            "status": True,
            "conclusion": True,
            "app": {"id": True, "slug": True},
            "pull_requests": _PR_REFS,
        }
    },
    "status": {"sha": True, "state": True, "context": True, "branches": [{"name": True}]},
    "push": {"ref": True, "before": True, "after": True, "created": True, "deleted": True, "forced": True},
    "create": {"ref": True, "ref_type": True, "master_branch": True},
    "delete": {"ref": True, "ref_type": True},
}
_MAX_LIST = 1000


def _project(value: Any, spec: Any) -> Any:
    if spec is True:
        if isinstance(value, str):
            return value[:MAX_TEXT_CHARS]
        return value if value is None or isinstance(value, bool | int | float) else None
    if isinstance(spec, list):
        if not isinstance(value, list):
            return None
        return [_project(item, spec[0]) for item in value[:_MAX_LIST] if isinstance(item, dict)]
    if not isinstance(value, dict):
        return None
    return {k: _project(value[k], sub) for k, sub in spec.items() if k in value}


def trim_payload(event: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Only the fields Foundry's handler for ``event`` reads (unknown events: the common ones).

    Never raises: a missing field stays missing and the handler records the delivery as failed
    with its name.
    """
    trimmed: dict[str, Any] = _project(payload, {**_COMMON, **_EVENTS.get(event, {})})
    if len(json.dumps(trimmed)) > MAX_TRIMMED_BYTES:
        return {"action": trimmed.get("action"), "_trimmed": "the delivery is too large to process"}
    return trimmed


# ------------------------------------------------------------------------------------------ verifying


def verify_signature(secret: bytes, body: bytes, header: str | None) -> None:
    """Check ``X-Hub-Signature-256`` (``sha256=<hex HMAC-SHA256(secret, body)>``) in constant time.

    Raises:
        WebhookRejected: 401 when missing or wrong (or no secret is configured), 400 when malformed.
    """
    if not secret:
        raise WebhookRejected(
            401, "unauthorized", "GitHub webhooks are disabled: FOUNDRY_GITHUB__WEBHOOK_SECRET is not set"
        )
    if not header:
        raise WebhookRejected(401, "unauthorized", "missing X-Hub-Signature-256 header")
    match = _SIGNATURE_RE.match(header.strip())
    if match is None:
        raise WebhookRejected(
            400, "bad_request", "malformed X-Hub-Signature-256 header; expected sha256=<hex>"
        )
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, match.group(1).lower()):
        raise WebhookRejected(401, "unauthorized", "X-Hub-Signature-256 does not match the body")


def parse_body(body: bytes, content_type: str) -> dict[str, Any]:
    """The delivery's JSON object (``application/json``, or the ``payload`` form field GitHub sends
    for hooks configured as ``application/x-www-form-urlencoded``).

    Raises:
        WebhookRejected: 400 for malformed or hostile JSON (see `foundry.strict_json`) or anything
            but a JSON object.
    """
    text: bytes | str = body
    if content_type.startswith("application/x-www-form-urlencoded"):
        fields = parse_qs(body.decode("utf-8", "replace"))
        if "payload" not in fields:
            raise WebhookRejected(400, "bad_request", "form-encoded delivery without a payload field")
        text = fields["payload"][0]
    try:
        # Strict: GitHub never sends NaN, out-of-range integers, lone surrogates or 64 levels of
        # nesting, and any of them would fail later, inside the actors, as a 500.
        payload = strict_json.loads(text)
    except strict_json.BadJson as exc:
        raise WebhookRejected(400, "bad_request", f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise WebhookRejected(400, "bad_request", "request body must be a JSON object")
    return payload


# ------------------------------------------------------------------------------------------ ingest


class GitHubWebhookIngest:
    """Verifies, routes and enqueues deliveries. One per process; holds the installation cache.

    Args:
        runtime: the actor runtime.
        secret: the webhook secret shared with the GitHub App.
        clock: stamps ``receivedAt``.
    """

    def __init__(self, runtime: Runtime, secret: bytes, clock: Clock) -> None:
        self._runtime = runtime
        self._secret = secret
        self._clock = clock
        self._owners: dict[int, str] = {}
        self._lookups: SingleFlight[str | None] = SingleFlight()

    async def ingest(self, body: bytes, headers: Mapping[str, str], client: str = "?") -> dict[str, Any]:
        """Accept one delivery; returns the 202 body.

        Raises:
            WebhookRejected: bad signature, headers or JSON (nothing was recorded).
            FoundryError: the actor runtime could not take the delivery (the caller answers 5xx, so
                GitHub shows it as failed and it can be redelivered).
        """
        delivery = headers.get("x-github-delivery")
        event = headers.get("x-github-event")
        try:
            verify_signature(self._secret, body, headers.get("x-hub-signature-256"))
            if not event or not _EVENT_RE.match(event):
                raise WebhookRejected(400, "bad_request", "missing or malformed X-GitHub-Event header")
            if not delivery or not _DELIVERY_RE.match(delivery):
                raise WebhookRejected(400, "bad_request", "missing or malformed X-GitHub-Delivery header")
            payload = parse_body(body, headers.get("content-type", "application/json"))
        except WebhookRejected as exc:
            log.warning(
                "github webhook refused (%s %s): %s [delivery=%s event=%s from=%s]",
                exc.status,
                exc.code,
                exc.detail,
                delivery,
                event,
                client,
            )
            raise
        action = payload.get("action") if isinstance(payload.get("action"), str) else None
        key, installation_id = await self._route(event, payload)
        result = await self._runtime.send(
            "github-data",
            key,
            "ingest_webhook",
            {
                "deliveryId": delivery,
                "event": event,
                "action": action[:100] if action else None,
                "installationId": installation_id,
                "receivedAt": self._clock.now_ms(),
                "payload": trim_payload(event, payload),
            },
            command_id=f"github-delivery:{delivery}",
        )
        return {"ok": True, "deliveryId": delivery, "duplicate": bool(result.get("duplicate"))}

    async def _route(self, event: str, payload: dict[str, Any]) -> tuple[str, int | None]:
        installation = payload.get("installation")
        if not isinstance(installation, dict):
            return APP_SHELL_ID, None
        raw_id = installation.get("id")
        if isinstance(raw_id, bool) or not isinstance(raw_id, int) or raw_id <= 0:
            return APP_SHELL_ID, None
        owner = self._owners.get(raw_id)
        if owner is None:
            owner = await self._lookups.run(raw_id, lambda: self._lookup(raw_id))
        if owner is None and event == "installation":
            owner = _account_organization(installation)
        return owner or APP_SHELL_ID, raw_id

    async def _lookup(self, installation_id: int) -> str | None:
        try:
            found = await self._runtime.call(
                "organization",
                APP_SHELL_ID,
                "organization_for_installation",
                {"installationId": installation_id},
            )
        except NotFound:
            log.debug("github webhook: installation %s is not registered (yet)", installation_id)
            return None
        owner = str(found["organizationId"])
        self._owners[installation_id] = owner  # an installation never moves to another account
        return owner


def _account_organization(installation: dict[str, Any]) -> str | None:
    account = installation.get("account")
    if not isinstance(account, dict) or not isinstance(account.get("login"), str):
        return None
    kind = "personal" if account.get("type") == "User" else "organization"
    try:
        return validate_key(organization_id_for(kind, account["login"]))
    except InvalidInput as exc:
        # Quoted short: the login comes from the request, and a log line must not be its size.
        log.warning(
            "github webhook: account %r gives no valid organization id: %s",
            account["login"][:100],
            str(exc)[:300],
        )
        return None


__all__ = [
    "MAX_WEBHOOK_BYTES",
    "GitHubWebhookIngest",
    "WebhookRejected",
    "parse_body",
    "trim_payload",
    "verify_signature",
]
